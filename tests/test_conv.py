import copy

import pytest
import torch
from autograd_memory import saved_bytes
from torch_geometric.utils import add_self_loops, remove_self_loops, to_undirected
from torch_geometric.typing import WITH_TORCH_SPARSE, SparseTensor

from qgfd_pyg import QGFDConv, graph_transition, knn_transition
from qgfd_pyg.reference import dense_transition, pform, pform_conv, steps_until


def attention_index(edge_index, n):
    edge_index, _ = remove_self_loops(edge_index)
    return add_self_loops(edge_index, num_nodes=n)[0]


def random_graph(n=12, e=30):
    return torch.randint(0, n, (2, e))


@pytest.mark.parametrize("alpha, steps", [(0.0, 3), (0.5, 1), (0.85, 6), (1.0, 4)])
@pytest.mark.parametrize("concat", [True, False])
def test_graph_conv_equals_p_form(alpha, steps, concat, device):
    n = 12
    edge_index = random_graph(n)  # directed, with duplicates and self-loops at random
    weight = torch.rand(edge_index.size(1)) + 0.1
    x = torch.randn(n, 5)
    conv = QGFDConv(5, 4, heads=3, concat=concat, alpha=alpha, steps=steps)
    with torch.no_grad():
        conv.bias.normal_()
    # P follows messages backwards: row j spreads over the sources of the edges into j.
    P = dense_transition(edge_index.flip(0), n, weight, add_self_loops=True)
    expected = pform_conv(conv, x, attention_index(edge_index, n), [P] * 3)
    out = conv.to(device)(x.to(device), edge_index.to(device), weight.to(device))
    torch.testing.assert_close(out.cpu().double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("alpha, steps", [(0.5, 2), (0.9, 5)])
def test_knn_conv_equals_p_form(alpha, steps, device):
    n = 15
    edge_index = random_graph(n, 40)
    x = torch.randn(n, 6)
    conv = QGFDConv(6, 4, heads=2, alpha=alpha, steps=steps, transition="knn", k=3)
    keys = conv.lin_key(x).view(n, 2, 4)
    P = [knn_transition(keys[:, h], 3, backend="torch").to_dense() for h in range(2)]
    expected = pform_conv(conv, x, attention_index(edge_index, n), P)
    out = conv.to(device)(x.to(device), edge_index.to(device))
    torch.testing.assert_close(out.cpu().double(), expected, atol=1e-5, rtol=0)


def test_alpha_zero_is_plain_neighbour_attention():
    n = 10
    edge_index = random_graph(n)
    x = torch.randn(n, 4)
    conv = QGFDConv(4, 3, heads=2, alpha=0.0, steps=5)
    out, (attn_index, p0) = conv(x, edge_index, return_attention_weights=True)
    value = conv.lin_value(x).view(n, 2, 3)
    expected = torch.zeros(n, 2, 3).index_add_(0, attn_index[1],
                                               p0.unsqueeze(-1) * value[attn_index[0]])
    torch.testing.assert_close(out, expected.reshape(n, 6) + conv.bias)
    # The seed attention sums to one over each node's incoming edges (self-loop included).
    sums = torch.zeros(n, 2).index_add_(0, attn_index[1], p0)
    torch.testing.assert_close(sums, torch.ones(n, 2))


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_receptive_field_is_steps_plus_one_hops(steps):
    n = 10
    line = torch.arange(n - 1)
    edge_index = to_undirected(torch.stack([line, line + 1]))  # path 0 - 1 - ... - 9
    conv = QGFDConv(3, 4, alpha=0.7, steps=steps)
    x = torch.randn(n, 3)
    base = conv(x, edge_index)[0]
    for distance in range(1, n):
        x2 = x.clone()
        x2[distance] += 1.0
        changed = not torch.allclose(conv(x2, edge_index)[0], base, atol=1e-7)
        assert changed == (distance <= steps + 1), (distance, steps)


def test_permutation_equivariance():
    n = 14
    edge_index = random_graph(n, 40)
    weight = torch.rand(edge_index.size(1))
    x = torch.randn(n, 5)
    for transition in ("graph", "knn"):
        conv = QGFDConv(5, 3, heads=2, transition=transition, k=4)
        perm = torch.randperm(n)
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(n)
        out = conv(x, edge_index, weight)
        out_perm = conv(x[perm], inverse[edge_index], weight)
        torch.testing.assert_close(out_perm, out[perm], atol=1e-5, rtol=0)


@pytest.mark.skipif(not WITH_TORCH_SPARSE, reason="needs torch-sparse")
def test_sparse_inputs_agree_with_edge_index():
    n = 12
    edge_index = torch.unique(random_graph(n), dim=1)  # SparseTensor coalesces duplicates
    weight = torch.rand(edge_index.size(1)) + 0.1
    x = torch.randn(n, 5)
    conv = QGFDConv(5, 4, heads=2)
    out, (_, p0) = conv(x, edge_index, weight, return_attention_weights=True)
    adj_t = SparseTensor(row=edge_index[1], col=edge_index[0], value=weight, sparse_sizes=(n, n))
    out_adj, adj_attn = conv(x, adj_t, return_attention_weights=True)  # GATConv's form
    torch.testing.assert_close(out_adj, out, atol=1e-6, rtol=0)
    assert isinstance(adj_attn, SparseTensor)
    torch.testing.assert_close(adj_attn.sum(1), torch.ones(n, 2))
    torch.testing.assert_close(adj_attn.storage.value(), p0, atol=1e-6, rtol=0)
    torch_sparse_adj = adj_t.to_torch_sparse_coo_tensor()
    torch.testing.assert_close(conv(x, torch_sparse_adj), out, atol=1e-6, rtol=0)
    _, (coo, p0_coo) = conv(x, torch_sparse_adj, return_attention_weights=True)
    assert coo.is_sparse and coo.shape == (n, n, 2)
    torch.testing.assert_close(p0_coo, p0, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="adj_t has size"):
        conv(x, SparseTensor.eye(n + 1))


def test_gradients_reach_every_parameter():
    n = 12
    for transition in ("graph", "knn"):
        conv = QGFDConv(5, 4, heads=2, transition=transition, k=3, dropout=0.2)
        conv(torch.randn(n, 5), random_graph(n)).pow(2).sum().backward()
        for name, param in conv.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, (transition, name)


def test_edgeless_graph_and_isolated_nodes():
    x = torch.randn(5, 3)
    conv = QGFDConv(3, 2, heads=2)
    out = conv(x, torch.empty(2, 0, dtype=torch.long))
    expected = conv.lin_value(x) + conv.bias  # only self-attention, P = I
    torch.testing.assert_close(out, expected)
    out = conv(x, torch.tensor([[0], [1]]))
    assert torch.isfinite(out).all()
    no_loops = QGFDConv(3, 2, add_self_loops=False)
    assert torch.isfinite(no_loops(x, torch.tensor([[0], [1]]))).all()


def test_cached_reuses_structure_and_reset_clears_it():
    n = 10
    edge_index = random_graph(n)
    x = torch.randn(n, 3)
    conv = QGFDConv(3, 2, cached=True)
    out = conv(x, edge_index)
    assert conv._cached is not None
    torch.testing.assert_close(conv(x, edge_index[:, :3]), out)  # graph is not re-read
    conv.reset_parameters()
    assert conv._cached is None


def test_lazy_in_channels_repr_and_deepcopy():
    conv = QGFDConv(-1, 4, heads=2, alpha=0.5, steps=3)
    out = conv(torch.randn(6, 7), random_graph(6, 10))
    assert out.shape == (6, 8)
    assert repr(conv) == "QGFDConv(-1, 4, heads=2, alpha=0.5, steps=3, transition='graph')"
    copied = copy.deepcopy(conv)
    torch.testing.assert_close(copied(torch.ones(6, 7), random_graph(6, 10)).shape, out.shape)


def test_dropout_only_in_training():
    n = 10
    conv = QGFDConv(3, 2, dropout=0.5)
    x, edge_index = torch.randn(n, 3), random_graph(n)
    conv.eval()
    torch.testing.assert_close(conv(x, edge_index), conv(x, edge_index))
    conv.train()
    assert not torch.allclose(conv(x, edge_index), conv(x, edge_index))


@pytest.mark.parametrize("make, match", [
    (lambda: QGFDConv(3, 2, alpha=1.2), "alpha"),
    (lambda: QGFDConv(3, 2, steps=-1), "steps"),
    (lambda: QGFDConv(3, 2, k=0), "k must"),
    (lambda: QGFDConv(3, 2, heads=0), "heads"),
    (lambda: QGFDConv(3, 2, transition="full"), "transition"),
    (lambda: QGFDConv(3, 2, dropout=1.0), "dropout"),
    (lambda: QGFDConv(0, 2), "in_channels"),
])
def test_bad_hyper_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("x, edge_index, edge_weight, match", [
    (torch.randn(4, 5), torch.tensor([[0], [1]]), None, "features"),
    (torch.randn(4), torch.tensor([[0], [1]]), None, "feature matrix"),
    (torch.randn(4, 3), torch.tensor([[0], [4]]), None, "outside"),
    (torch.randn(4, 3), torch.tensor([[0], [1]]), torch.tensor([-1.0]), "negative"),
    (torch.randn(4, 3), torch.tensor([[0], [1]]), torch.tensor([float("nan")]), "NaN"),
    (torch.randn(4, 3), torch.tensor([[0], [1]]), torch.tensor([1.0, 2.0]), "shape"),
    (torch.randn(4, 3), torch.eye(5).to_sparse(), None, "adj_t"),
])
def test_bad_forward_input(x, edge_index, edge_weight, match):
    with pytest.raises(ValueError, match=match):
        QGFDConv(3, 2)(x, edge_index, edge_weight)


def test_additive_attention_equals_p_form_and_is_gat_like():
    n = 12
    edge_index = random_graph(n)
    x = torch.randn(n, 5)
    conv = QGFDConv(5, 4, heads=2, alpha=0.8, steps=3, attention="additive")
    assert conv.lin_query is None and "attention='additive'" in repr(conv)
    out, (attn_index, p0) = conv(x, edge_index, return_attention_weights=True)
    value = conv.lin_value(x).view(n, 2, 4).double()
    score = torch.nn.functional.leaky_relu(
        (value * conv.att_dst.double()).sum(-1)[:, None, :]
        + (value * conv.att_src.double()).sum(-1)[None, :, :], 0.2)  # [i, j, h]
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[attn_index[1], attn_index[0]] = True
    seed = torch.softmax(score.masked_fill(~allowed[..., None], float("-inf")), dim=1)
    P = dense_transition(edge_index.flip(0), n).double()
    expected = torch.stack([pform(seed[..., h], P, 0.8, 3) @ value[:, h] for h in range(2)], 1)
    torch.testing.assert_close(out.double(), expected.reshape(n, 8) + conv.bias.double(),
                               atol=1e-5, rtol=0)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in conv.parameters())
    with pytest.raises(ValueError, match="attention"):
        QGFDConv(5, 4, attention="cosine")


def test_checkpoint_changes_memory_not_results():
    n, H, C, steps = 30, 2, 4, 5
    x, edge_index = torch.randn(n, 6), random_graph(n, 90)
    one_copy = n * H * C * 4  # the values, float32
    results = {}
    for checkpoint in (False, True):
        torch.manual_seed(0)
        conv = QGFDConv(6, C, heads=H, transition="knn", k=4, steps=steps, checkpoint=checkpoint)
        kept, out = saved_bytes(lambda conv=conv: conv(x, edge_index))
        out.pow(2).sum().backward()
        results[checkpoint] = (kept, [out.detach()] + [p.grad.clone() for p in conv.parameters()])
    # autograd keeps a copy of the values per step through a differentiable kNN P; with
    # checkpoint=True it keeps none of them
    assert results[False][0] - results[True][0] >= (steps - 1) * one_copy
    for a, b in zip(results[False][1], results[True][1], strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("transition", ["graph", "knn"])
def test_tol_stops_the_diffusion_where_the_dense_iteration_does(transition):
    n, H, C = 16, 2, 3
    edge_index = random_graph(n, 50)
    x = torch.randn(n, 5)
    full = QGFDConv(5, C, heads=H, alpha=0.95, steps=60, transition=transition, k=3)
    conv = QGFDConv(5, C, heads=H, alpha=0.95, steps=60, transition=transition, k=3, tol=1e-2)
    conv.load_state_dict(full.state_dict())
    out = conv(x, edge_index)
    values = conv.lin_value(x).view(n, H, C).transpose(0, 1).detach()
    if transition == "graph":
        P = [dense_transition(edge_index.flip(0), n)] * H
    else:
        keys = conv.lin_key(x).view(n, H, C)
        P = [knn_transition(keys[:, h], 3).to_dense() for h in range(H)]
    steps = steps_until(values, torch.stack(P).detach(), 0.95, 60, 1e-2)
    assert steps < 60
    expected = pform_conv(conv, x, attention_index(edge_index, n), P, steps=steps)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    assert (out - full(x, edge_index)).abs().max() > 1e-3


def test_same_results_without_numba(monkeypatch):
    from qgfd_pyg import _numba

    if _numba.routines() is None:
        pytest.skip("numba is not installed: the torch implementations are what every test runs")
    x, edge_index = torch.randn(40, 6), random_graph(40, 150)
    results = []
    for disabled in (False, True):
        if disabled:  # as on a machine without numba: torch implementations throughout
            monkeypatch.setitem(_numba._state, "routines", None)
        torch.manual_seed(0)
        conv = QGFDConv(6, 4, heads=2, steps=4, cached=True)
        out = conv(x, edge_index)
        out.pow(2).sum().backward()
        results.append([out.detach()] + [p.grad.clone() for p in conv.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("alpha, steps", [(0.5, 2), (0.9, 6)])
@pytest.mark.parametrize("concat", [True, False])
def test_attention_transition_equals_p_form_in_value_and_gradient(alpha, steps, concat, device):
    """transition="attention": P is each head's own p0 (MAGNA's attention diffusion); the
    Z-form against the dense p_t iteration, outputs and the gradients through P."""
    n = 10
    edge_index = random_graph(n, 28)
    x = torch.randn(n, 5)
    conv = QGFDConv(5, 3, heads=2, concat=concat, alpha=alpha, steps=steps,
                    transition="attention")
    with torch.no_grad():
        conv.bias.normal_()
    weights = torch.randn(n, 6 if concat else 3, dtype=torch.float64)
    expected = pform_conv(conv, x, attention_index(edge_index, n), "attention")
    params = [conv.lin_query.weight, conv.lin_key.weight, conv.lin_value.weight]
    want = torch.autograd.grad((expected * weights).sum(), params)
    conv, x, edge_index = conv.to(device), x.to(device), edge_index.to(device)
    out = conv(x, edge_index)
    torch.testing.assert_close(out.cpu().double(), expected, atol=1e-5, rtol=0)
    params = [conv.lin_query.weight, conv.lin_key.weight, conv.lin_value.weight]
    got = torch.autograd.grad((out.double() * weights.to(device)).sum(), params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.cpu().double(), w.double(), atol=1e-5, rtol=1e-4)
    # its p_T is a distribution: the output of constant values is that constant
    with torch.no_grad():
        conv.lin_value.weight.zero_()
        conv.bias.zero_()
    assert conv(x, edge_index).abs().max() == 0


def test_symmetric_transition_equals_p_form(device):
    n = 9
    edge_index = to_undirected(random_graph(n, 20), num_nodes=n)
    edge_index, _ = remove_self_loops(edge_index)
    x = torch.randn(n, 4)
    conv = QGFDConv(4, 3, heads=2, alpha=0.8, steps=5, transition="sym")
    out = conv.to(device)(x.to(device), edge_index.to(device)).cpu()
    conv = conv.cpu()
    A = torch.eye(n, dtype=torch.float64)  # by hand: self loops, then D^-1/2 A D^-1/2
    for s, t in edge_index.t().tolist():
        A[t, s] += 1.0
    d = A.sum(1)
    P = A / (d.view(-1, 1) * d.view(1, -1)).sqrt()
    expected = pform_conv(conv, x, attention_index(edge_index, n), [P, P])
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="normalization"):
        graph_transition(edge_index, n, normalization="both")


@pytest.mark.parametrize("transition", ["graph", "knn", "attention"])
@pytest.mark.parametrize("n", [0, 1, 4])
def test_no_nodes_one_node_and_no_edges(transition, n):
    """The obvious shapes: no nodes give no rows; without edges every node attends to itself
    only, so the output is its own value (plus bias) whatever the diffusion."""
    conv = QGFDConv(3, 2, heads=2, transition=transition, k=2)
    x = torch.randn(n, 3)
    out, (index, p0) = conv(x, torch.zeros(2, 0, dtype=torch.long),
                            return_attention_weights=True)
    assert out.shape == (n, 4) and p0.shape == (n, 2) and index.shape == (2, n)
    if n and transition != "knn":  # kNN joins the nodes' keys even without edges
        torch.testing.assert_close(out, conv.lin_value(x) + conv.bias)


@pytest.mark.parametrize("option, match", [(dict(flow="target_to_source"), "flow"),
                                           (dict(aggr="mean"), "aggr")])
def test_message_passing_options_it_does_not_honour_are_errors(option, match):
    with pytest.raises(ValueError, match=match):
        QGFDConv(3, 2, **option)
    QGFDConv(3, 2, aggr="add", flow="source_to_target")  # the ones it does are accepted


def test_explain_edge_mask_scales_seed_attention_and_transition():
    """PyG's explain machinery (set_masks) on QGFDConv: the mask of edge j -> i multiplies
    p0_ij and the edge's weight in P; self loops keep 1. Against the dense p-form."""
    from torch_geometric.explain.algorithm.utils import clear_masks, set_masks

    n = 8
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 1, 3, 3],
                               [1, 2, 3, 4, 5, 6, 7, 0, 1, 3]])  # (3, 3): an input loop
    mask = torch.tensor([0.9, 0.0, 0.5, 1.0, 0.2, 0.7, 0.3, 0.6, 0.4, 0.05])
    x = torch.randn(n, 4, dtype=torch.float64)
    conv = QGFDConv(4, 3, alpha=0.7, steps=3).double()
    plain = conv(x, edge_index)
    set_masks(conv, mask.double(), edge_index, apply_sigmoid=False)
    out = conv(x, edge_index)
    clear_masks(conv)
    torch.testing.assert_close(conv(x, edge_index), plain)  # masks cleared: as before

    q, k, v = conv.lin_query(x), conv.lin_key(x), conv.lin_value(x)
    allowed = torch.eye(n, dtype=torch.bool)
    allowed[edge_index[1], edge_index[0]] = True
    p0 = torch.softmax((q @ k.T / 3 ** 0.5).masked_fill(~allowed, float("-inf")), dim=1)
    M = torch.ones(n, n, dtype=torch.float64)
    loops = edge_index[0] == edge_index[1]
    M[edge_index[1, ~loops], edge_index[0, ~loops]] = mask[~loops].double()
    weights = torch.where(loops, 1.0, mask).double()
    P = dense_transition(edge_index.flip(0), n, weights, add_self_loops=True)
    expected = pform(p0 * M, P, 0.7, 3) @ v + conv.bias
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, plain)
    set_masks(conv, mask[:-1].double(), edge_index[:, :-1], apply_sigmoid=False)
    with pytest.raises(ValueError, match="edge mask has shape"):
        conv(x, edge_index)
    with pytest.raises(ValueError, match="edge_index input"):
        conv(x, torch.sparse_coo_tensor(edge_index.flip(0), torch.ones(edge_index.size(1)),
                                        (n, n)))


def test_gnn_explainer_masks_only_edges_the_node_can_reach():
    """GNNExplainer on a path: node 0 reads p0 over the edges into 0 and, with steps = 1,
    Z of nodes 0 and 1, i.e. the rows of P over the edges into 0 and 1; every other edge
    (into nodes 2..8, 1 -> 2 included) gets mask 0, these three a positive mask."""
    from torch_geometric.explain import Explainer, GNNExplainer

    torch.manual_seed(0)
    n = 9
    edge_index = to_undirected(torch.stack([torch.arange(n - 1), torch.arange(1, n)]))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = QGFDConv(3, 2, alpha=0.8, steps=1)

        def forward(self, x, edge_index):
            return self.conv(x, edge_index).log_softmax(-1)

    explainer = Explainer(Net(), GNNExplainer(epochs=30), explanation_type="model",
                          edge_mask_type="object", node_mask_type=None,
                          model_config=dict(mode="multiclass_classification",
                                            task_level="node", return_type="log_probs"))
    explanation = explainer(torch.randn(n, 3), edge_index, index=0)
    far = edge_index[1] > 1  # edges into nodes 2..8
    assert explanation.edge_mask.shape == (edge_index.size(1),)
    assert (explanation.edge_mask[far] == 0).all()
    assert (explanation.edge_mask[~far] > 0).all()


def test_attention_explainer_reads_the_seed_attention_of_each_input_edge():
    from torch_geometric.explain import AttentionExplainer, Explainer

    n = 6
    edge_index = torch.tensor([[0, 2, 1, 3, 4, 1], [1, 1, 2, 2, 5, 0]])
    conv = QGFDConv(3, 2, heads=2, alpha=0.5, steps=2)
    explainer = Explainer(conv, AttentionExplainer(reduce="max"), explanation_type="model",
                          edge_mask_type="object",
                          model_config=dict(mode="regression", task_level="node",
                                            return_type="raw"))
    x = torch.randn(n, 3)
    explanation = explainer(x, edge_index)
    _, (index, p0) = conv(x, edge_index, return_attention_weights=True)
    by_edge = {tuple(e): a.max() for e, a in zip(index.t().tolist(), p0, strict=True)}
    expected = torch.stack([by_edge[tuple(e)] for e in edge_index.t().tolist()])
    torch.testing.assert_close(explanation.edge_mask, expected)


@pytest.mark.parametrize("numba", [True, False])
@pytest.mark.parametrize("transition", ["graph", "attention", "knn"])
def test_torch_compile_gives_the_eager_output_and_gradients(transition, numba, monkeypatch):
    """torch.compile (dynamo + AOT autograd; the custom kernels and torch_sparse calls run as
    graph breaks) of a model with QGFDConv, forward and backward; with the numba routines and
    with the torch paths that CUDA and machines without numba take (torch 2.11 lost the
    gradients of an in-place forward there)."""
    from qgfd_pyg import _numba

    if not numba:
        monkeypatch.setitem(_numba._state, "routines", None)
    elif _numba.routines() is None:
        pytest.skip("numba is not installed")
    torch._dynamo.reset()
    torch.manual_seed(0)
    n = 20
    edge_index = random_graph(n, 60)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(6, 8)
            self.conv = QGFDConv(8, 4, heads=2, transition=transition, k=3, alpha=0.8,
                                 steps=3)

        def forward(self, x, edge_index):
            return self.conv(self.lin(x).relu(), edge_index)

    model = Net()
    x = torch.randn(n, 6)
    eager = model(x, edge_index)
    grads = torch.autograd.grad(eager.square().sum(), list(model.parameters()))
    compiled = torch.compile(model, backend="aot_eager")
    out = compiled(x, edge_index)
    torch.testing.assert_close(out, eager)
    for got, want in zip(torch.autograd.grad(out.square().sum(), list(model.parameters())),
                         grads, strict=True):
        torch.testing.assert_close(got, want)


FIRST_CALL_COMPILED = """
import torch
from qgfd_pyg import QGFD
torch.manual_seed(0)
x, edge_index = torch.randn(20, 6), torch.randint(0, 20, (2, 60))
model = QGFD(6, 8, num_layers=2, out_channels=3, heads=2, steps=3, dropout=0.0,
             attn_dropout=0.0)
out = torch.compile(model, backend="aot_eager")(x, edge_index)  # before any eager call
grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
eager = model(x, edge_index)
torch.testing.assert_close(out, eager)
for got, want in zip(grads, torch.autograd.grad(eager.square().sum(),
                                                list(model.parameters())), strict=True):
    torch.testing.assert_close(got, want)
print("same as eager")
"""


@pytest.mark.slow
def test_torch_compile_as_the_first_call_of_a_fresh_process():
    """Users compile before any eager call: dynamo must not trace into numba's compilation of
    the CPU routines (it crashed there); the compiled network equals the eager one."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FIRST_CALL_COMPILED], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "same as eager" in done.stdout


def test_knn_transition_stays_inside_each_graph_of_a_batch():
    """With batch=, each graph's nodes diffuse over a kNN of their own keys: the output on
    a Batch equals each graph run alone, and a graph-classification model pools over it."""
    from torch_geometric.data import Batch, Data
    from torch_geometric.nn import global_mean_pool

    torch.manual_seed(0)
    graphs = [Data(x=torch.randn(n, 5), edge_index=random_graph(n, 2 * n)) for n in (4, 7, 5)]
    conv = QGFDConv(5, 3, heads=2, alpha=0.8, steps=3, transition="knn", k=3)
    data = Batch.from_data_list(graphs)
    out = conv(data.x, data.edge_index, batch=data.batch)
    alone = torch.cat([conv(g.x, g.edge_index) for g in graphs])
    torch.testing.assert_close(out, alone)
    assert not torch.allclose(conv(data.x, data.edge_index), alone)  # without batch: mixed
    pooled = global_mean_pool(out, data.batch)
    pooled.sum().backward()
    assert pooled.shape == (3, 6) and conv.lin_key.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="sorted"):
        conv(data.x, data.edge_index, batch=data.batch.flip(0))


@pytest.mark.parametrize("transition", ["graph", "sym", "attention", "knn"])
@pytest.mark.parametrize("mode", ["bfloat16", "float16", "autocast"])
def test_half_precision_modules_and_autocast(transition, mode):
    """A .bfloat16() / .half() layer and CPU autocast run (the diffusion in float32), with
    finite outputs and gradients close to float32 (bf16 kNN may pick other neighbours)."""
    torch.manual_seed(0)
    n = 30
    edge_index = random_graph(n, 90)
    x = torch.randn(n, 8)
    conv = QGFDConv(8, 4, heads=2, transition=transition, k=4)
    reference = conv(x, edge_index)
    if mode == "autocast":
        layer, inputs = conv, x
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(inputs, edge_index)
    else:
        dtype = getattr(torch, mode)
        layer, inputs = copy.deepcopy(conv).to(dtype), x.to(dtype)
        out = layer(inputs, edge_index)
        assert out.dtype == dtype
    out.float().square().sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    atol = 5e-3 if mode == "float16" else (0.2 if transition == "knn" else 0.05)
    torch.testing.assert_close(out.float(), reference, atol=atol, rtol=0)


def test_bipartite_input_equals_the_dense_computation():
    """x = (x_src, x_dst): targets query their sources; the source values diffuse over the
    source -> target -> source walk (built by hand here; a source without edges keeps its
    mass)."""
    torch.manual_seed(0)
    n_src, n_dst = 6, 4
    edge_index = torch.tensor([[0, 1, 1, 2, 3, 4, 0], [0, 0, 1, 1, 2, 2, 3]])  # source 5: none
    weight = torch.tensor([1.0, 2.0, 1.0, 0.5, 1.0, 3.0, 1.0])
    x_src, x_dst = torch.randn(n_src, 5), torch.randn(n_dst, 3)
    conv = QGFDConv((5, 3), 2, heads=2, alpha=0.6, steps=3, add_self_loops=False)
    with torch.no_grad():
        conv.bias.normal_()
    out = conv((x_src, x_dst), edge_index, weight)
    A = torch.zeros(n_src, n_dst, dtype=torch.float64)
    A[edge_index[0], edge_index[1]] = weight.double()
    walk = (A / A.sum(1, keepdim=True).clamp_min(1e-30)) @ (A.T / A.sum(0).view(-1, 1))
    walk[5, 5] = 1.0  # dangling source: a self loop
    q = conv.lin_query(x_dst).view(n_dst, 2, 2).double()
    k = conv.lin_key(x_src).view(n_src, 2, 2).double()
    v = conv.lin_value(x_src).view(n_src, 2, 2).double()
    allowed = A.T > 0
    outs = []
    for h in range(2):
        p0 = torch.softmax((q[:, h] @ k[:, h].T / 2 ** 0.5).masked_fill(~allowed, -1e30), 1)
        outs.append(pform(p0, walk, 0.6, 3) @ v[:, h])
    expected = torch.stack(outs, 1).reshape(n_dst, 4) + conv.bias.double()
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="add_self_loops=False"):
        QGFDConv((5, 3), 2)((x_src, x_dst), edge_index)
    same = torch.randn(n_src, 5)  # one x on both sides (needs equal sizes: (5, 5) here)
    both = QGFDConv((5, 5), 2, add_self_loops=False)
    torch.testing.assert_close(both(same, edge_index), both((same, same), edge_index))
    with pytest.raises(ValueError, match="outside"):
        conv((x_src, x_dst), torch.tensor([[0], [4]]))


def test_to_hetero_builds_a_heterogeneous_model_with_lazy_sizes():
    from torch_geometric.data import HeteroData
    from torch_geometric.nn import to_hetero

    torch.manual_seed(0)
    data = HeteroData()
    data["paper"].x, data["author"].x = torch.randn(7, 6), torch.randn(4, 3)
    writes = torch.tensor([[0, 1, 2, 3, 3], [0, 1, 2, 4, 6]])
    data["author", "writes", "paper"].edge_index = writes
    data["paper", "rev_writes", "author"].edge_index = writes.flip(0)
    data["paper", "cites", "paper"].edge_index = torch.tensor([[0, 1, 2, 5], [1, 2, 3, 6]])

    class GNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = QGFDConv((-1, -1), 8, add_self_loops=False, alpha=0.5, steps=2)
            self.conv2 = QGFDConv((-1, -1), 4, add_self_loops=False, alpha=0.5, steps=2)

        def forward(self, x, edge_index):
            return self.conv2(self.conv1(x, edge_index).relu(), edge_index)

    model = to_hetero(GNN(), data.metadata(), aggr="sum")
    out = model(data.x_dict, data.edge_index_dict)
    assert out["paper"].shape == (7, 4) and out["author"].shape == (4, 4)
    sum(o.sum() for o in out.values()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_value_checks_run_on_cpu_in_eager_mode_and_elsewhere_on_request(monkeypatch):
    """Edge values are read (a device sync on GPUs, a graph break when compiling) only on CPU
    tensors in eager mode, or under torch_geometric.debug(); shapes and dtypes always."""
    import torch_geometric

    from qgfd_pyg.checks import check_edge_index, check_edge_weight, check_values

    outside = torch.tensor([[0, 5], [1, 2]])
    with pytest.raises(ValueError, match="outside"):
        check_edge_index(outside, 3)
    with pytest.raises(ValueError, match="negative"):
        check_edge_weight(torch.tensor([1.0, -1.0]), 2)
    meta = torch.empty(2, 4, dtype=torch.long, device="meta")  # no values to read
    assert not check_values(meta)
    check_edge_index(meta, 3)
    check_edge_weight(torch.empty(4, device="meta"), 4)
    with pytest.raises(ValueError, match="shape"):
        check_edge_index(torch.empty(3, 4, dtype=torch.long, device="meta"), 3)
    with torch_geometric.debug():
        assert check_values(meta)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not check_values(outside)
    check_edge_index(outside, 3)  # while compiling: not read
    with torch_geometric.debug():
        with pytest.raises(ValueError, match="outside"):
            check_edge_index(outside, 3)


def test_gatconv_conventions_size_and_bipartite_sparse_input():
    """PyG's GATConv calls: size=, (x_src, x_dst) with edge_index or a sparse adj_t (torch
    CSR / CSC / COO, SparseTensor), and the forms GATConv has no meaning for QGFD in."""
    from torch_geometric.utils import to_torch_csc_tensor

    torch.manual_seed(0)
    x1, x2 = torch.randn(4, 8), torch.randn(2, 16)
    edge_index = torch.tensor([[0, 1, 2, 3, 0], [0, 0, 1, 1, 1]])  # 4 sources -> 2 targets
    conv = QGFDConv((8, 16), 3, heads=2, add_self_loops=False, alpha=0.7, steps=3)
    out = conv((x1, x2), edge_index)
    assert out.shape == (2, 6)
    torch.testing.assert_close(conv((x1, x2), edge_index, size=(4, 2)), out)
    adj = to_torch_csc_tensor(edge_index, size=(4, 2))
    for adj_t in (adj.t(), adj.t().to_sparse_csc(), adj.t().to_sparse_coo()):
        torch.testing.assert_close(conv((x1, x2), adj_t), out)
    _, (index, p0) = conv((x1, x2), edge_index, return_attention_weights=True)
    assert torch.equal(index, edge_index) and p0.shape == (5, 2)
    if WITH_TORCH_SPARSE:
        sparse = SparseTensor.from_edge_index(edge_index, sparse_sizes=(4, 2)).t()
        out_sparse, adj_attn = conv((x1, x2), sparse, return_attention_weights=True)
        torch.testing.assert_close(out_sparse, out)
        assert isinstance(adj_attn, SparseTensor) and adj_attn.sparse_sizes() == (2, 4)
        torch.testing.assert_close(adj_attn.to_dense().sum(1), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"x=\(x_src, None\)"):
        conv((x1, None), edge_index, size=(4, 2))
    with pytest.raises(ValueError, match="size=\\(4, 3\\)"):
        conv((x1, x2), edge_index, size=(4, 3))
    with pytest.raises(ValueError, match="batch"):
        conv((x1, x2), edge_index, batch=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="adj_t has size"):
        conv((x1, x2), to_torch_csc_tensor(edge_index, size=(4, 3)).t())
    square = QGFDConv(8, 3, heads=2)
    edges = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
    torch.testing.assert_close(square(x1, edges, size=(4, 4)), square(x1, edges))
    with pytest.raises(ValueError, match="size"):
        square(x1, edges, size=(4, 2))
