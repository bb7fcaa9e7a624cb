import networkx as nx
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given
from hypothesis import strategies as st
from qgfd_pyg.reference import dense_transition
from torch_sparse import SparseTensor

from qgfd_pyg import from_networkx, from_scipy, graph_transition, knn_transition


@st.composite
def random_graphs(draw):
    n = draw(st.integers(1, 12))
    e = draw(st.integers(0, 40))
    src = draw(st.lists(st.integers(0, n - 1), min_size=e, max_size=e))
    dst = draw(st.lists(st.integers(0, n - 1), min_size=e, max_size=e))
    weights = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0]), min_size=e, max_size=e))
    return (n, torch.tensor([src, dst], dtype=torch.long).view(2, e),
            torch.tensor(weights, dtype=torch.float).view(e))


def assert_stochastic(P, n):
    assert P.sparse_sizes() == (n, n)
    dense = P.to_dense()
    assert (dense >= 0).all()
    torch.testing.assert_close(dense.sum(1), torch.ones(n), atol=1e-6, rtol=0)


@given(random_graphs(), st.booleans(), st.booleans())
def test_graph_transition_is_row_stochastic_and_matches_dense(graph, loops, weighted):
    n, edge_index, weight = graph
    weight = weight if weighted else None
    P = graph_transition(edge_index, n, weight, add_self_loops=loops)
    assert_stochastic(P, n)
    expected = dense_transition(edge_index, n, weight, add_self_loops=loops)
    torch.testing.assert_close(P.to_dense().double(), expected, atol=1e-6, rtol=0)


def test_dangling_and_isolated_nodes_get_self_loops():
    edge_index = torch.tensor([[0, 1], [1, 2]])  # 2 has no out-edge, 3 is isolated
    P = graph_transition(edge_index, num_nodes=4, add_self_loops=False).to_dense()
    assert P[2, 2] == 1 and P[3, 3] == 1
    assert P[0, 1] == 1 and P[1, 2] == 1
    zero_weight = graph_transition(edge_index, 4, torch.tensor([0.0, 2.0]), add_self_loops=False)
    assert zero_weight.to_dense()[0, 0] == 1  # only zero-weight out-edges: dangling too


def test_edgeless_graph_is_identity():
    P = graph_transition(torch.empty(2, 0, dtype=torch.long), num_nodes=5)
    torch.testing.assert_close(P.to_dense(), torch.eye(5))


def test_edge_index_sparse_tensor_and_torch_sparse_agree():
    edge_index = torch.tensor([[0, 0, 1, 2, 2], [1, 2, 2, 0, 0]])  # duplicate edge 2 -> 0
    weight = torch.tensor([1.0, 2.0, 1.0, 0.5, 0.5])
    P = graph_transition(edge_index, 3, weight).to_dense()
    adj = SparseTensor.from_edge_index(edge_index, weight, sparse_sizes=(3, 3))
    torch.testing.assert_close(graph_transition(adj).to_dense(), P)
    coo = torch.sparse_coo_tensor(edge_index, weight, (3, 3))
    torch.testing.assert_close(graph_transition(coo).to_dense(), P)
    torch.testing.assert_close(graph_transition(coo.to_sparse_csr()).to_dense(), P)
    assert P[2, 0] == pytest.approx(1.0 / 2.0)  # duplicates add up: (0.5 + 0.5) / (1 + 1)


def test_graph_transition_is_differentiable_in_edge_weight():
    edge_index = torch.tensor([[0, 0, 1], [1, 2, 2]])
    weight = torch.tensor([1.0, 2.0, 1.0], requires_grad=True)
    P = graph_transition(edge_index, 3, weight)
    P.storage.value()[0].backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(edge_index=torch.tensor([[0, 5], [1, 0]]), num_nodes=3), "outside"),
    (dict(edge_index=torch.tensor([[0, -1], [1, 0]]), num_nodes=3), "outside"),
    (dict(edge_index=torch.tensor([0, 1, 2])), "shape"),
    (dict(edge_index=torch.tensor([[0.0, 1.0], [1.0, 0.0]])), "integers"),
    (dict(edge_index=torch.tensor([[0, 1], [1, 0]]), edge_weight=torch.tensor([1.0, -1.0])),
     "negative"),
    (dict(edge_index=torch.tensor([[0, 1], [1, 0]]), edge_weight=torch.tensor([1.0, float("nan")])),
     "NaN"),
    (dict(edge_index=torch.tensor([[0, 1], [1, 0]]), edge_weight=torch.tensor([1.0, float("inf")])),
     "infinite"),
    (dict(edge_index=torch.tensor([[0, 1], [1, 0]]), edge_weight=torch.tensor([1.0])), "shape"),
    (dict(edge_index=SparseTensor.from_edge_index(torch.tensor([[0], [1]]), sparse_sizes=(2, 3))),
     "square"),
])
def test_graph_transition_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        graph_transition(**kwargs)


def brute_force_knn(keys, k, metric="dot", temperature=1.0, causal=False, mask=None):
    n, d = keys.shape
    if metric == "dot":
        sim = keys @ keys.T / d**0.5
    else:
        unit = torch.nn.functional.normalize(keys, dim=-1)
        sim = unit @ unit.T
    sim = sim / temperature
    if mask is not None:
        sim[:, mask] = float("-inf")
    if causal:
        sim = sim.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    P = torch.zeros(n, n)
    for i in range(n):
        top, idx = sim[i].topk(min(k, n))
        keep = top > float("-inf")
        if not keep.any():
            P[i, i] = 1.0
            continue
        P[i, idx[keep]] = torch.softmax(top[keep], 0)
    return P


@pytest.mark.parametrize("metric", ["dot", "cosine"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_knn_transition_matches_brute_force(metric, causal, masked):
    keys = torch.randn(17, 5)
    mask = torch.rand(17) < 0.3 if masked else None
    P = knn_transition(keys, 4, metric=metric, temperature=0.7, causal=causal, mask=mask,
                       chunk_size=5)
    expected = brute_force_knn(keys, 4, metric, 0.7, causal, mask)
    assert_stochastic(P, 17)
    torch.testing.assert_close(P.to_dense(), expected, atol=1e-5, rtol=0)
    nnz_per_row = (P.to_dense() > 0).sum(1)
    assert (nnz_per_row <= 4).all()
    if causal:
        assert (P.to_dense().triu(1) == 0).all()
    if masked:
        assert (P.to_dense()[:, mask][~mask] == 0).all()  # unmasked rows never select masked keys


def test_knn_transition_chunking_does_not_change_the_result():
    keys = torch.randn(30, 8)
    full = knn_transition(keys, 5, chunk_size=1000).to_dense()
    torch.testing.assert_close(knn_transition(keys, 5, chunk_size=7).to_dense(), full)


def test_knn_transition_batched_is_block_diagonal():
    keys = torch.randn(3, 6, 4)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[1, 4:] = True
    P = knn_transition(keys, 3, mask=mask).to_dense()
    assert P.shape == (18, 18)
    for b in range(3):
        block = P[b * 6:(b + 1) * 6, b * 6:(b + 1) * 6]
        torch.testing.assert_close(block, knn_transition(keys[b], 3, mask=mask[b]).to_dense())
        torch.testing.assert_close(P[b * 6:(b + 1) * 6].sum(1), torch.ones(6))


def test_knn_transition_small_n_and_fully_masked_rows():
    keys = torch.randn(3, 2)
    P = knn_transition(keys, 10)  # k > N keeps every key
    assert (P.to_dense() > 0).all()
    mask = torch.tensor([True, True, True])
    torch.testing.assert_close(knn_transition(keys, 2, mask=mask).to_dense(), torch.eye(3))


def test_knn_transition_is_differentiable_in_keys():
    keys = torch.randn(10, 4, requires_grad=True)
    P = knn_transition(keys, 3)
    target = torch.randn(10, 10)
    (P.to_dense() * target).sum().backward()
    assert keys.grad is not None and keys.grad.abs().sum() > 0
    detached = knn_transition(keys.detach(), 3)
    assert not detached.storage.value().requires_grad


@pytest.mark.parametrize("kwargs, match", [
    (dict(keys=torch.randn(4, 3), k=0), "k must"),
    (dict(keys=torch.randn(4, 3), k=2, metric="l2"), "metric"),
    (dict(keys=torch.randn(4, 3), k=2, temperature=0.0), "temperature"),
    (dict(keys=torch.randn(4), k=2), "keys must"),
    (dict(keys=torch.tensor([[1.0, float("nan")]]), k=1), "NaN"),
    (dict(keys=torch.randn(4, 3), k=2, mask=torch.zeros(5, dtype=torch.bool)), "mask"),
    (dict(keys=torch.randn(4, 3), k=2, mask=torch.zeros(4)), "boolean"),
])
def test_knn_transition_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        knn_transition(**kwargs)


def test_from_networkx_directed_weighted_with_nodelist():
    G = nx.DiGraph()
    G.add_edge("a", "b", weight=1.0)
    G.add_edge("a", "c", weight=3.0)
    G.add_edge("b", "c")  # no weight attribute: 1
    G.add_node("d")  # isolated
    P, nodes = from_networkx(G, nodelist=["d", "c", "b", "a"])
    assert nodes == ["d", "c", "b", "a"]
    dense = P.to_dense()
    assert_stochastic(P, 4)
    assert dense[3, 2] == pytest.approx(0.25) and dense[3, 1] == pytest.approx(0.75)
    assert dense[2, 1] == 1.0
    assert dense[1, 1] == 1.0 and dense[0, 0] == 1.0  # dangling c, isolated d
    unweighted, _ = from_networkx(G, weight=None, nodelist=["d", "c", "b", "a"])
    assert unweighted.to_dense()[3, 2] == pytest.approx(0.5)


def test_from_networkx_undirected_and_multigraph():
    G = nx.path_graph(4)
    P, nodes = from_networkx(G)
    assert nodes == [0, 1, 2, 3]
    expected = dense_transition(torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]]), 4,
                                add_self_loops=False)
    torch.testing.assert_close(P.to_dense().double(), expected)
    M = nx.MultiDiGraph([(0, 1), (0, 1), (0, 2)])
    P, _ = from_networkx(M)
    assert P.to_dense()[0, 1] == pytest.approx(2 / 3)
    with_loops, _ = from_networkx(G, add_self_loops=True)
    assert with_loops.to_dense()[0, 0] == pytest.approx(0.5)


@pytest.mark.parametrize("kind", [nx.Graph, nx.DiGraph, nx.MultiGraph, nx.MultiDiGraph])
def test_from_networkx_matches_networkx_adjacency(kind):
    """Against NetworkX's own dense adjacency (self-loops, parallel edges, isolated nodes),
    row-normalised by hand with a self-loop on empty rows."""
    rng = torch.Generator().manual_seed(len(kind.__name__))
    G = kind()
    G.add_nodes_from(range(7))
    for _ in range(14):
        u, v = torch.randint(0, 6, (2,), generator=rng).tolist()  # node 6 stays isolated
        G.add_edge(u, v, w=float(torch.rand(1, generator=rng)) + 0.5)
    G.add_edge(2, 2, w=2.0)
    A = torch.tensor(nx.to_numpy_array(G, nodelist=list(range(7)), weight="w"))
    expected = torch.where((A.sum(1) == 0).unsqueeze(1), torch.eye(7, dtype=A.dtype), A)
    expected = expected / expected.sum(1, keepdim=True)
    P, _ = from_networkx(G, weight="w")
    torch.testing.assert_close(P.to_dense().double(), expected, rtol=1e-5, atol=1e-6)


def test_from_networkx_rejects_bad_input():
    G = nx.Graph([(0, 1)])
    with pytest.raises(ValueError, match="not in the graph"):
        from_networkx(G, nodelist=[0, 7])
    with pytest.raises(ValueError, match="duplicate"):
        from_networkx(G, nodelist=[0, 0])
    with pytest.raises(ValueError, match="no nodes"):
        from_networkx(nx.Graph())
    with pytest.raises(ValueError, match="networkx graph"):
        from_networkx([(0, 1)])
    G.add_edge(1, 2, weight=-1.0)
    with pytest.raises(ValueError, match="negative"):
        from_networkx(G)
    G.add_edge(1, 2, weight="heavy")
    with pytest.raises(ValueError, match="real number"):
        from_networkx(G)


def test_from_scipy():
    A = sp.csr_array([[0, 2, 2], [0, 0, 0], [1, 0, 0]], dtype=float)
    P = from_scipy(A).to_dense()
    torch.testing.assert_close(P, torch.tensor([[0, 0.5, 0.5], [0, 1, 0], [1, 0, 0]]))
    with pytest.raises(ValueError, match="square"):
        from_scipy(sp.csr_array((2, 3)))
