"""QGFDConv where GATConv goes: GATConv's argument order (constructor and forward), edge
features in the seed (``edge_dim``, ``fill_value``), ``negative_slope`` and ``residual``;
expected values from a loop over nodes and their incoming edges."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import GATConv

from qgfd_pyg import QGFD, QGFDConv

torch.manual_seed(0)
N, F_IN, D = 6, 5, 3
EDGES = torch.tensor([[0, 1, 2, 3, 4, 5, 1, 2, 0, 0],
                      [1, 2, 3, 4, 5, 0, 0, 0, 3, 3]])  # (0, 3) twice; node 0 has 3 in-edges


def brute_seed(conv, x, edge_index, edge_attr, fill="mean"):
    """p0[(j, i)] per head from a loop: each target i over its distinct sources and itself;
    an edge's features are the mean over its copies, a self-loop's the fill of i's in-edges."""
    H, C = conv.heads, conv.out_channels
    value = (x @ conv.lin_value.weight.t()).view(-1, H, C)
    edge = None if conv.lin_edge is None else conv.lin_edge.weight
    p0 = {}
    for i in range(x.size(0)):
        into = [e for e in range(edge_index.size(1)) if int(edge_index[1, e]) == i]
        sources = sorted({int(edge_index[0, e]) for e in into} | {i})
        scores = []
        for j in sources:
            copies = [e for e in into if int(edge_index[0, e]) == j]
            if copies:
                attr = edge_attr[copies].mean(0)
            elif fill == "mean":
                attr = edge_attr[into].mean(0) if into else torch.zeros(edge_attr.size(1))
            elif fill == "max":
                attr = edge_attr[into].max(0).values
            else:
                attr = torch.full((edge_attr.size(1),), float(fill))
            e = (attr @ edge.t()).view(H, C)
            if conv.attention == "dot":
                q = (x[i] @ conv.lin_query.weight.t()).view(H, C)
                k = (x[j] @ conv.lin_key.weight.t()).view(H, C)
                scores.append((q * (k + e)).sum(-1) / math.sqrt(C))
            else:
                s = ((value[i] * conv.att_dst[0]).sum(-1) + (value[j] * conv.att_src[0]).sum(-1)
                     + (e * conv.att_edge[0]).sum(-1))
                scores.append(F.leaky_relu(s, conv.negative_slope))
        weights = torch.softmax(torch.stack(scores), dim=0)
        for j, w in zip(sources, weights, strict=True):
            p0[(j, i)] = w
    return p0


def brute_out(conv, x, p0):
    """alpha = 0: out_i = sum_j p0_ij v_j (heads concatenated) + residual + bias."""
    H, C = conv.heads, conv.out_channels
    value = (x @ conv.lin_value.weight.t()).view(-1, H, C)
    out = torch.zeros(x.size(0), H, C)
    for (j, i), w in p0.items():
        out[i] += w.view(H, 1) * value[j]
    out = out.flatten(1)
    if conv.res is not None:
        out = out + x @ conv.res.weight.t()
    return out + conv.bias


def as_dict(index, p0):
    return {(int(j), int(i)): p0[e] for e, (j, i) in enumerate(index.t())}


def test_gatconv_forward_order_positional():
    """GATConv's forward(x, edge_index, edge_attr, size, return_attention_weights)."""
    x = torch.randn(N, F_IN)
    conv = QGFDConv(F_IN, 4, heads=2)
    plain = conv(x, EDGES)
    out = conv(x, EDGES, None, (N, N))  # valid GATConv code: a tensor, not a tuple
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, plain)
    out, (index, p0) = conv(x, EDGES, None, None, True)
    torch.testing.assert_close(out, plain)
    assert p0.shape == (index.size(1), 2)
    with pytest.raises(ValueError, match="size"):
        conv(x, EDGES, None, (N, N + 1))


def test_gatconv_constructor_order_positional():
    """GATConv(in, out, heads, concat, negative_slope, dropout, add_self_loops, edge_dim,
    fill_value, bias, residual): the same positional call builds the same options."""
    args = (F_IN, 4, 2, False, 0.3, 0.25, False, D, 1.5, False, True)
    gat = GATConv(*args)
    conv = QGFDConv(*args, attention="additive")
    for name in ("heads", "concat", "negative_slope", "dropout", "add_self_loops", "edge_dim",
                 "fill_value"):
        assert getattr(conv, name) == getattr(gat, name), name
    assert conv.bias is None and gat.bias is None
    assert conv.res is not None and conv.res.weight.shape == gat.res.weight.shape
    assert conv.lin_edge.weight.shape == gat.lin_edge.weight.shape
    with pytest.raises(TypeError):  # QGFD's own options are keywords, never GATConv's slots
        QGFDConv(F_IN, 4, 2, True, 0.2, 0.0, True, None, "mean", True, False, 0.5)


@pytest.mark.parametrize("fill", ["mean", "max", 0.5])
def test_edge_attr_in_dot_seed(fill):
    x, edge_attr = torch.randn(N, F_IN), torch.randn(EDGES.size(1), D)
    conv = QGFDConv(F_IN, 3, heads=2, edge_dim=D, fill_value=fill, alpha=0.0, steps=0)
    torch.nn.init.normal_(conv.bias)
    out, (index, p0) = conv(x, EDGES, edge_attr, return_attention_weights=True)
    expected = brute_seed(conv, x, EDGES, edge_attr, fill)
    got = as_dict(index, p0)
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, brute_out(conv, x, expected), atol=1e-5, rtol=1e-5)
    # by keyword too, and the features matter
    torch.testing.assert_close(conv(x, EDGES, edge_attr=edge_attr), out)
    assert not torch.allclose(conv(x, EDGES, edge_attr=2 * edge_attr), out, atol=1e-4)


def test_edge_attr_in_additive_seed_with_negative_slope():
    x, edge_attr = torch.randn(N, F_IN), torch.randn(EDGES.size(1), D)
    conv = QGFDConv(F_IN, 3, heads=2, negative_slope=0.05, edge_dim=D, attention="additive")
    _, (index, p0) = conv(x, EDGES, edge_attr, return_attention_weights=True)
    expected, got = brute_seed(conv, x, EDGES, edge_attr), as_dict(index, p0)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-5)


def test_residual_as_gatconv():
    x = torch.randn(N, F_IN)
    conv = QGFDConv(F_IN, 3, heads=2, residual=True, alpha=0.0, steps=0)
    torch.nn.init.normal_(conv.bias)
    out, (index, p0) = conv(x, EDGES, return_attention_weights=True)
    torch.testing.assert_close(out, brute_out(conv, x, as_dict(index, p0)), atol=1e-5,
                               rtol=1e-5)
    averaged = QGFDConv(F_IN, 3, heads=2, concat=False, residual=True)
    assert averaged.res.weight.shape == (3, F_IN) and averaged(x, EDGES).shape == (N, 3)
    conv.res.weight.grad = None
    conv(x, EDGES).sum().backward()
    assert conv.res.weight.grad is not None and conv.res.weight.grad.abs().sum() > 0


def test_bipartite_edge_attr_and_residual():
    x_src, x_dst = torch.randn(4, 5), torch.randn(3, 2)
    edges = torch.tensor([[0, 1, 2, 3, 0], [0, 0, 1, 2, 2]])
    edge_attr = torch.randn(5, D)
    conv = QGFDConv((5, 2), 3, heads=2, add_self_loops=False, edge_dim=D, residual=True,
                    alpha=0.0, steps=0)
    out, (_, p0) = conv((x_src, x_dst), edges, edge_attr, return_attention_weights=True)
    H, C = 2, 3
    q = (x_dst @ conv.lin_query.weight.t()).view(-1, H, C)
    k = (x_src @ conv.lin_key.weight.t()).view(-1, H, C)
    v = (x_src @ conv.lin_value.weight.t()).view(-1, H, C)
    e = (edge_attr @ conv.lin_edge.weight.t()).view(-1, H, C)
    expected = torch.zeros(3, H, C)
    for i in range(3):
        into = [m for m in range(5) if int(edges[1, m]) == i]
        w = torch.softmax(torch.stack([(q[i] * (k[edges[0, m]] + e[m])).sum(-1) / math.sqrt(C)
                                       for m in into]), 0)
        for m, wm in zip(into, w, strict=True):
            torch.testing.assert_close(p0[m], wm)
            expected[i] += wm.view(H, 1) * v[edges[0, m]]
    expected = expected.flatten(1) + x_dst @ conv.res.weight.t() + conv.bias
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_one_dimensional_edge_attr_is_the_transition_weight():
    """Without edge_dim the third argument is APPNP's / GCNConv's edge weight."""
    x, weight = torch.randn(N, F_IN), torch.rand(EDGES.size(1)) + 0.1
    conv = QGFDConv(F_IN, 4, heads=2)
    torch.testing.assert_close(conv(x, EDGES, weight), conv(x, EDGES, edge_weight=weight))
    assert not torch.allclose(conv(x, EDGES, weight), conv(x, EDGES), atol=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda c, x: c(x, EDGES, torch.randn(EDGES.size(1), D)), "edge_dim=3"),
    (lambda c, x: c(x, EDGES, torch.rand(EDGES.size(1)), edge_weight=torch.rand(EDGES.size(1))),
     "pass one of them"),
])
def test_edge_attr_without_edge_dim_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call(QGFDConv(F_IN, 4), torch.randn(N, F_IN))


def test_bad_edge_options_are_refused():
    x = torch.randn(N, F_IN)
    conv = QGFDConv(F_IN, 4, edge_dim=D)
    with pytest.raises(ValueError, match=r"edge_attr must have shape \[10, 3\]"):
        conv(x, EDGES, torch.randn(EDGES.size(1), D + 1))
    with pytest.raises(ValueError, match=r"edge_attr must have shape"):
        conv(x, EDGES, torch.randn(EDGES.size(1) - 1, D))
    adj = torch.sparse_coo_tensor(EDGES.flip(0), torch.ones(EDGES.size(1)), (N, N))
    with pytest.raises(ValueError, match="not a sparse adj_t"):
        conv(x, adj, torch.randn(EDGES.size(1), D))
    with pytest.raises(ValueError, match="negative_slope"):
        QGFDConv(F_IN, 4, negative_slope=0.1)  # the dot-product seed has no LeakyReLU
    with pytest.raises(ValueError, match="fill_value"):
        QGFDConv(F_IN, 4, edge_dim=D, fill_value="median")


def test_network_passes_edge_features_in_basic_gnn_order():
    """QGFD(..., edge_dim=) as PyG's GAT(..., edge_dim=): forward(x, edge_index, edge_weight,
    edge_attr, batch)."""
    x, edge_attr = torch.randn(N, F_IN), torch.randn(EDGES.size(1), D)
    model = QGFD(F_IN, 8, num_layers=2, out_channels=3, heads=2, edge_dim=D)
    model.eval()
    out = model(x, EDGES, None, edge_attr)
    torch.testing.assert_close(model(x, EDGES, edge_attr=edge_attr), out)
    assert not torch.allclose(model(x, EDGES, None, edge_attr * 3), out, atol=1e-5)
    out.sum().backward()
    assert all(conv.lin_edge.weight.grad is not None
               for conv in list(model.convs) + [model.conv_out])
