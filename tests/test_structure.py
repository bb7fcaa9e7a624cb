import pytest
import torch
from torch_geometric.utils import add_self_loops, coalesce, remove_self_loops, softmax

from torch_geometric.typing import WITH_TORCH_SPARSE, SparseTensor

from qgfd_pyg import _numba
from qgfd_pyg.edge_ops import EdgeLayout, edge_softmax
from qgfd_pyg.reference import dense_transition
from qgfd_pyg.spmm import sparse_matrix
from qgfd_pyg.structure import graph_structure, unique_entries

IMPLEMENTATIONS = ["numba", "torch"]


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request, monkeypatch):
    """Runs a test with the compiled routines and with the torch code alone."""
    if request.param == "numba" and _numba.routines() is None:
        pytest.skip("numba is not installed")
    if request.param == "torch":
        monkeypatch.setitem(_numba._state, "routines", None)
    return request.param


def messy_graph(n, e, seed):
    """Directed edges with duplicates, self-loops (some repeated), zero weights, an isolated
    node (n - 1) and a node with only zero-weight in-edges (n - 2: a dangling row of P)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n - 2, (e,), generator=g)
    dst = torch.randint(0, n - 2, (e,), generator=g)
    loops = torch.randint(0, n - 2, (3,), generator=g)
    src = torch.cat([src, src[:5], loops, loops[:1], torch.tensor([0, 1])])
    dst = torch.cat([dst, dst[:5], loops, loops[:1], torch.tensor([n - 2, n - 2])])
    weight = torch.rand(src.numel(), generator=g) + 0.1
    weight[::7] = 0.0
    weight[-2:] = 0.0
    return torch.stack([src, dst]), weight


def sym_dense(edge_index, n, weight, loops):
    """D^-1/2 A D^-1/2 written out: A[i, j] = summed weight of (i, j), unit self-loops where
    asked for and missing, and on rows without out-weight."""
    A = torch.zeros(n, n, dtype=torch.float64)
    A.index_put_((edge_index[0], edge_index[1]), weight.double(), accumulate=True)
    has_loop = torch.zeros(n, dtype=torch.bool)
    has_loop[edge_index[0, edge_index[0] == edge_index[1]]] = True
    for i in range(n):
        if loops and not has_loop[i]:
            A[i, i] += 1.0
    for i in range(n):
        if A[i].sum() == 0:
            A[i, i] += 1.0
    d = A.sum(1)
    return A / (d[:, None] * d[None, :]).sqrt()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("loops", [True, False])
@pytest.mark.parametrize("normalization", ["rw", "sym"])
def test_structure_equals_the_separate_builds(implementation, seed, loops, normalization):
    n = 14
    edge_index, weight = messy_graph(n, 60, seed)
    edge_index = edge_index[:, torch.randperm(edge_index.size(1))]  # any order
    structure = graph_structure(edge_index[0], edge_index[1], n, weight, loops, normalization)
    # attention edges as QGFDConv built them before: PyG's self-loop utilities + coalesce
    expected = edge_index
    if loops:
        expected = add_self_loops(remove_self_loops(expected)[0], num_nodes=n)[0]
    expected = coalesce(expected.flip(0), num_nodes=n).flip(0)
    assert torch.equal(structure.edge_index, expected)
    # P over the reversed edges, densely
    flow = edge_index.flip(0)
    dense = dense_transition(flow, n, weight, loops) if normalization == "rw" \
        else sym_dense(flow, n, weight, loops)
    P = structure.transition
    torch.testing.assert_close(P.to_dense().double(), dense, atol=1e-6, rtol=0)
    # the grouping by target and by source: stable, and the node's own edges
    src, dst = structure.edge_index
    for by, index, other in (("dst", dst, src), ("src", src, dst)):
        ptr, perm, others = structure.layout.groups(by)
        for i in range(n):
            mine = perm[ptr[i]:ptr[i + 1]]
            assert torch.equal(mine, (index == i).nonzero().view(-1)), (by, i)
            assert torch.equal(others[ptr[i]:ptr[i + 1]], other[mine])
    # P's transposed order, where it was handed over, sorts its entries by column, then row
    if WITH_TORCH_SPARSE and isinstance(P, SparseTensor) and P.storage.has_csr2csc():
        row, col, _ = P.coo()
        assert torch.equal(P.storage.csr2csc(), torch.argsort(col * n + row, stable=True))


@pytest.mark.parametrize("self_loops", [True, False])
def test_unique_entries_against_a_dictionary(implementation, self_loops):
    n = 9
    g = torch.Generator().manual_seed(3)
    row, col = torch.randint(0, n, (2, 50), generator=g)
    # a hub: row 0 holds 100 more pairs (past the insertion sort's segment length)
    row = torch.cat([row, torch.zeros(100, dtype=torch.long)])
    col = torch.cat([col, torch.randint(0, n, (100,), generator=g)])
    weight = torch.rand(150, generator=g, dtype=torch.float64)
    sums, given = {}, set()
    for r, c, w in zip(row.tolist(), col.tolist(), weight.tolist(), strict=True):
        sums[(r, c)] = sums.get((r, c), 0.0) + w
        given.add((r, c))
    if self_loops:
        for i in range(n):
            sums.setdefault((i, i), 0.0)
    keys = sorted(sums)
    out = unique_entries(row, col, n, weight, self_loops)
    assert list(zip(out.row.tolist(), out.col.tolist(), strict=True)) == keys
    torch.testing.assert_close(out.weight, torch.tensor([sums[k] for k in keys],
                                                        dtype=torch.float64))
    assert out.given.tolist() == [k in given for k in keys]
    counts = [sum(1 for k in keys if k[0] == i) for i in range(n)]
    assert out.rowptr.tolist() == [sum(counts[:i]) for i in range(n + 1)]


def test_sorted_input_and_learnt_weights_take_the_same_route(implementation):
    n = 12
    edge_index, weight = messy_graph(n, 40, 7)
    reference = graph_structure(edge_index[0], edge_index[1], n, weight, True, "rw")
    # already unique and sorted by target (what a SparseTensor adj_t gives): no sort needed
    src, dst = reference.edge_index
    again = graph_structure(src, dst, n, None, True, "rw")
    assert torch.equal(again.edge_index, reference.edge_index)
    # weights that need gradients keep them (torch route) and give the same P
    learnt = weight.clone().requires_grad_()
    P = graph_structure(edge_index[0], edge_index[1], n, learnt, True, "rw").transition
    value = P.storage.value() if isinstance(P, SparseTensor) else P.values()
    assert value.requires_grad
    torch.testing.assert_close(P.to_dense(), reference.transition.to_dense())
    value.sum().backward()
    assert learnt.grad is not None and bool(learnt.grad.abs().sum() > 0)


def test_sparse_matrix_keeps_the_offsets_and_order_it_is_given():
    row = torch.tensor([0, 0, 1, 2, 2])
    col = torch.tensor([1, 2, 0, 0, 2])
    value = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    dense = torch.zeros(3, 3).index_put_((row, col), value)
    csr2csc = torch.argsort(col * 3 + row, stable=True)
    P = sparse_matrix(row, col, value, 3, is_sorted=True, rowptr=torch.tensor([0, 2, 3, 5]),
                      csr2csc=csr2csc)
    torch.testing.assert_close(P.to_dense(), dense)
    if isinstance(P, SparseTensor):
        torch.testing.assert_close(P.t().to_dense(), dense.t())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_edge_softmax_matches_pyg_in_value_and_gradient(implementation, dtype):
    n, H = 8, 3
    g = torch.Generator().manual_seed(0)
    dst = torch.randint(0, n - 2, (40,), generator=g).sort().values  # nodes 6, 7: no edges
    src = torch.randint(0, n, (40,), generator=g)
    layout = EdgeLayout(src, dst, n)
    score = (5 * torch.randn(40, H, generator=g, dtype=dtype)).requires_grad_()
    out = edge_softmax(score, dst, n, layout)
    expected = softmax(score, dst, num_nodes=n)
    torch.testing.assert_close(out, expected)
    big = 200 * score.detach()  # scores in the thousands: exp overflows unless shifted
    torch.testing.assert_close(edge_softmax(big, dst, n, layout), softmax(big, dst, num_nodes=n))
    grad = torch.randn(40, H, generator=g, dtype=dtype)
    mine, = torch.autograd.grad(out, score, grad, retain_graph=True)
    theirs, = torch.autograd.grad(expected, score, grad)
    torch.testing.assert_close(mine, theirs)
    if dtype == torch.float64:  # also differentiable twice (the backward is torch code then)
        twice, = torch.autograd.grad(out, score, grad, create_graph=True)
        torch.testing.assert_close(twice, theirs)
        assert torch.autograd.gradgradcheck(lambda s: edge_softmax(s, dst, n, layout),
                                            (score,))
