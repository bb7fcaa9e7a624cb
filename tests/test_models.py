"""The QGFD network (qgfd_pyg.QGFD): shapes, its switches, trained hop weights, and one block
and its output layer against a dense computation written out here."""
import math

import pytest
import torch
import torch.nn.functional as F

from qgfd_pyg import QGFD, QGFDConv

# 6 nodes; node 5 has no incoming edge (it attends to itself only), 0 -> 1 is one-way
EDGES = torch.tensor([[0, 1, 2, 1, 3, 4, 2, 0],
                      [1, 2, 1, 3, 1, 3, 4, 4]])
N = 6


def randomise(model):
    """Every parameter random (LayerNorm's weight and bias included, hop weights too)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)


def dense_conv(conv: QGFDConv, x: torch.Tensor, concat: bool) -> torch.Tensor:
    """QGFDConv with transition="attention" and hop weights theta, densely: per head,
    p0 = masked softmax(q k^T / sqrt(C)) over in-neighbours and the node itself, P = p0,
    Z = sum_k theta_k P^k V, out = p0 Z."""
    H, C = conv.heads, conv.out_channels
    mask = torch.eye(N, dtype=torch.bool)
    mask[EDGES[1], EDGES[0]] = True  # row i: the sources j of edges j -> i
    q, k, v = (x @ lin.weight.t() for lin in (conv.lin_query, conv.lin_key, conv.lin_value))
    theta = conv.hop_weights
    heads = []
    for h in range(H):
        cols = slice(h * C, (h + 1) * C)
        score = (q[:, cols] @ k[:, cols].t()) / math.sqrt(C)
        p0 = torch.softmax(score.masked_fill(~mask, float("-inf")), dim=1)
        z, walk = torch.zeros_like(v[:, cols]), v[:, cols]
        for t in range(theta.numel()):
            z = z + theta[t] * walk
            walk = p0 @ walk
        heads.append(p0 @ z)
    out = torch.cat(heads, dim=1) if concat else torch.stack(heads).mean(0)
    return out + conv.bias


def test_one_block_and_output_layer_match_a_dense_computation():
    model = QGFD(5, 4, num_layers=2, out_channels=3, heads=2, dropout=0.0, attn_dropout=0.0,
                 steps=3, transition="attention").double()
    randomise(model)
    model.eval()
    x = torch.randn(N, 5, dtype=torch.float64)

    def ln(norm, h):
        return F.layer_norm(h, (h.size(1),), norm.weight, norm.bias, norm.eps)

    h0 = x @ model.lin_in.weight.t() + model.lin_in.bias
    h1 = h0 + dense_conv(model.convs[0], ln(model.conv_norms[0], h0), concat=True)
    lin1, lin2 = model.ffs[0][0], model.ffs[0][3]
    ff = F.gelu(ln(model.ff_norms[0], h1) @ lin1.weight.t() + lin1.bias) @ lin2.weight.t()
    h2 = h1 + ff + lin2.bias
    top = F.gelu(ln(model.out_norm, h2))
    expected = dense_conv(model.conv_out, top, concat=False) + top @ model.lin_skip.weight.t()
    out = model(x, EDGES)
    assert out.shape == (N, 3)
    torch.testing.assert_close(out, expected)


def test_switches_change_the_block_as_documented():
    x = torch.randn(N, 5, dtype=torch.float64)
    plain = QGFD(5, 4, num_layers=1, heads=2, dropout=0.0, attn_dropout=0.0, steps=2,
                 norm=None, residual=False, feed_forward=False).double()
    randomise(plain)
    plain.eval()
    # one block, no norm, residual or feed-forward: the convolution of the input layer
    h0 = x @ plain.lin_in.weight.t() + plain.lin_in.bias
    torch.testing.assert_close(plain(x, EDGES), dense_conv(plain.convs[0], h0, concat=True))
    residual = QGFD(5, 4, num_layers=1, heads=2, dropout=0.0, attn_dropout=0.0, steps=2,
                    norm=None, residual=True, feed_forward=False).double()
    residual.load_state_dict(plain.state_dict())
    residual.eval()
    torch.testing.assert_close(residual(x, EDGES),
                               h0 + dense_conv(plain.convs[0], h0, concat=True))
    batch = QGFD(5, 4, num_layers=1, norm="batch_norm")
    assert isinstance(batch.conv_norms[0], torch.nn.BatchNorm1d)
    assert plain.ffs is None and isinstance(plain.out_norm, torch.nn.Identity)


@pytest.mark.parametrize("layers,out,heads", [(1, None, 1), (2, 7, 4), (3, 2, 2), (1, 3, 4)])
def test_shapes_and_sparse_input(layers, out, heads):
    torch.manual_seed(0)
    model = QGFD(5, 8, num_layers=layers, out_channels=out, heads=heads)
    x = torch.rand(N, 5)
    y = model(x, EDGES)
    assert y.shape == (N, out or 8)
    model.eval()
    torch.testing.assert_close(model(x.to_sparse_csr(), EDGES), model(x, EDGES))
    assert model.hop_weights().shape == (layers, 11)
    assert QGFD(5, 8, 1, learn_hop_weights=False).hop_weights() is None


def test_hop_weights_start_at_pagerank_and_are_trained():
    torch.manual_seed(0)
    model = QGFD(5, 8, num_layers=2, out_channels=3, heads=2, steps=4, alpha=0.8)
    start = model.hop_weights().detach().clone()
    ppr = torch.tensor([0.2 * 0.8 ** k for k in range(4)] + [0.8 ** 4])
    torch.testing.assert_close(start, ppr.expand(2, 5))
    x, y = torch.rand(N, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(5):
        optimizer.zero_grad()
        F.cross_entropy(model(x, EDGES), y).backward()
        assert all(conv.hop_weights.grad.abs().sum() > 0
                   for conv in [*model.convs, model.conv_out])
        optimizer.step()
    assert (model.hop_weights() - start).abs().min() > 1e-3  # every weight moved


def test_attention_transition_stays_a_random_walk_under_dropout():
    """Training-time dropout on the seed attention would make P's rows sum to random values
    (their product over T steps then blows up); the kept edges are renormalised."""
    torch.manual_seed(0)
    conv = QGFDConv(4, 3, heads=2, transition="attention", dropout=0.6)
    p0 = torch.rand(20, 2)
    dst = torch.tensor([0] * 5 + [1] * 5 + [2] * 10)
    dropped = F.dropout(p0, 0.6, True)
    weights = conv._transition_weights(dropped, dst, 3).view(2, 20).t()
    rows = torch.zeros(3, 2).index_add_(0, dst, weights)
    kept = torch.zeros(3, 2).index_add_(0, dst, (dropped > 0).float()) > 0
    torch.testing.assert_close(rows[kept], torch.ones(int(kept.sum())))
    conv.eval()
    torch.testing.assert_close(conv._transition_weights(p0, dst, 3), p0.t().reshape(-1))


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="multiple of heads"):
        QGFD(5, 6, 1, heads=4)
    with pytest.raises(ValueError, match="num_layers"):
        QGFD(5, 8, 0)
    with pytest.raises(ValueError, match="norm"):
        QGFD(5, 8, 1, norm="group")
    with pytest.raises(ValueError, match="dropout"):
        QGFD(5, 8, 1, dropout=1.0)
    with pytest.raises(ValueError, match="in_channels=5"):
        QGFD(5, 8, 1)(torch.rand(N, 4), EDGES)


def test_redrawn_transition_dropout_matches_a_dense_computation():
    """redraw_dropout: the seed keeps the first dropout draw, step t walks over the t-th draw
    (renormalised); replayed here from the same random state."""
    conv = QGFDConv(5, 3, heads=2, transition="attention", dropout=0.5, steps=3,
                    learn_hop_weights=True, redraw_dropout=True).double()
    randomise(conv)
    x = torch.randn(N, 5, dtype=torch.float64)
    conv.eval()
    _, (index, p0) = conv(x, EDGES, return_attention_weights=True)
    conv.train()
    torch.manual_seed(3)
    out = conv(x, EDGES)
    torch.manual_seed(3)
    draws = [F.dropout(p0, 0.5, True) for _ in range(3)]
    src, dst = index
    v = x @ conv.lin_value.weight.t()
    heads = []
    for h in range(2):
        def dense(w, h=h):
            m = torch.zeros(N, N, dtype=torch.float64)
            m[dst, src] = w[:, h]
            return m
        seed = dense(draws[0])
        steps = [dense(d) / dense(d).sum(1, keepdim=True).clamp_min(1e-12) for d in draws]
        z, walk = torch.zeros(N, 3, dtype=torch.float64), torch.eye(N, dtype=torch.float64)
        for t in range(4):
            z = z + conv.hop_weights[t] * walk @ v[:, 3 * h:3 * h + 3]
            if t < 3:
                walk = walk @ steps[t]
        heads.append(seed @ z)
    torch.testing.assert_close(out, torch.cat(heads, 1) + conv.bias)
    with pytest.raises(ValueError, match="redraw_dropout"):
        QGFDConv(5, 3, redraw_dropout=True, tol=1e-3)
