import itertools
import math

import pytest
import torch

from qgfd_pyg import QGFDAttention, knn_transition
from qgfd_pyg.reference import dense_transition, pform, steps_until
from autograd_memory import saved_bytes


def reference(layer, query, key, value, key_padding_mask=None, attn_mask=None, is_causal=False,
              adjacency=None, alpha=None, detach_transition=False):
    """Dense p-form: p0 with every mask, P per (batch, head) built densely, p_T V W_O. With
    ``layer.tol`` the step count is where a dense Z iteration over all blocks stops."""
    alpha = layer.alpha if alpha is None else alpha
    B, Lq, _ = query.shape
    Lk, H, d = key.size(1), layer.num_heads, layer.head_dim
    q = layer.q_proj(query).view(B, Lq, H, d).transpose(1, 2).double()
    k = layer.k_proj(key).view(B, Lk, H, d).transpose(1, 2)
    v = layer.v_proj(value).view(B, Lk, H, d).transpose(1, 2).double()
    seeds, transitions = [], []
    for b, h in itertools.product(range(B), range(H)):
        scores = q[b, h] @ k[b, h].double().T / math.sqrt(d)
        blocked = torch.zeros(Lq, Lk, dtype=torch.bool)
        if attn_mask is not None:
            m = attn_mask if attn_mask.dim() == 2 else attn_mask[b * H + h]
            if m.dtype == torch.bool:
                blocked |= m
            else:
                scores = scores + m.double()
        if key_padding_mask is not None:
            blocked |= key_padding_mask[b][None, :]
        if is_causal:
            blocked |= torch.ones(Lq, Lk, dtype=torch.bool).triu(1)
        p0 = torch.softmax(scores.masked_fill(blocked, float("-inf")), -1).nan_to_num(0.0)
        pad = key_padding_mask[b] if key_padding_mask is not None else None
        if adjacency is None:
            keys = k[b, h].detach() if detach_transition else k[b, h]
            P = knn_transition(keys, layer.k, layer.metric, layer.temperature,
                               causal=is_causal, mask=pad).to_dense().double()
        else:
            A = (adjacency if adjacency.dim() == 2 else adjacency[b]).float()
            A = A.tril() if is_causal else A
            A = A.masked_fill(pad[None, :], 0.0) if pad is not None else A
            edge_index = A.nonzero().T
            P = dense_transition(edge_index, Lk, A[edge_index[0], edge_index[1]])
        seeds.append(p0)
        transitions.append(P)
    steps = layer.steps
    if layer.tol is not None and alpha > 0:
        steps = steps_until(v.reshape(B * H, Lk, d), torch.stack(transitions).detach(), alpha,
                            layer.steps, layer.tol)
    pT = torch.stack([pform(p0, P, alpha, steps) for p0, P in zip(seeds, transitions, strict=True)])
    weights = pT.view(B, H, Lq, Lk)
    outs = weights @ v
    out = outs.transpose(1, 2).reshape(B, Lq, H * d)
    out = out @ layer.out_proj.weight.double().T + layer.out_proj.bias.double()
    return out, weights


MASKS = ["none", "padding", "bool", "float", "causal", "padding+causal", "bool+padding",
         "float+causal"]


def make_masks(kind, B, H, L):
    padding = attn = None
    causal = "causal" in kind
    if "padding" in kind:
        padding = torch.zeros(B, L, dtype=torch.bool)
        padding[0, -3:] = True
        padding[1, :2] = True
    if "bool" in kind:
        attn = torch.rand(L, L) < 0.2
    if "float" in kind:
        attn = torch.randn(B * H, L, L) * 0.5
    return padding, attn, causal


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("alpha, steps", [(0.0, 3), (0.6, 2), (0.9, 5)])
def test_z_form_equals_p_form_for_every_mask(kind, alpha, steps, device):
    B, L, E, H = 2, 11, 12, 3
    layer = QGFDAttention(E, H, alpha=alpha, steps=steps, k=4)
    x = torch.randn(B, L, E)
    padding, attn, causal = make_masks(kind, B, H, L)
    expected, expected_weights = reference(layer, x, x, x, padding, attn, causal)
    padding, attn = (None if m is None else m.to(device) for m in (padding, attn))
    x = x.to(device)
    out, weights = layer.to(device)(x, x, x, key_padding_mask=padding, attn_mask=attn,
                                    is_causal=causal, need_weights=True,
                                    average_attn_weights=False)
    torch.testing.assert_close(out.cpu().double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(weights.cpu().double(), expected_weights, atol=1e-5, rtol=0)


def test_weights_are_distributions_and_averaged_over_heads():
    layer = QGFDAttention(8, 2, alpha=0.8, steps=3, k=3)
    x = torch.randn(2, 9, 8)
    out, weights = layer(x, x, x, need_weights=True)
    assert weights.shape == (2, 9, 9)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 9))
    assert layer(x, x, x, need_weights=False)[1] is None


@pytest.mark.parametrize("adjacency_kind", ["2d", "3d", "sparse"])
@pytest.mark.parametrize("causal", [False, True])
def test_adjacency_transition(adjacency_kind, causal):
    B, L, E, H = 2, 8, 8, 2
    A = (torch.rand(B, L, L) < 0.3).float()
    adjacency = {"2d": A[0], "3d": A, "sparse": A[0].to_sparse()}[adjacency_kind]
    layer = QGFDAttention(E, H, alpha=0.7, steps=3)
    x = torch.randn(B, L, E)
    padding = torch.zeros(B, L, dtype=torch.bool)
    padding[1, -2:] = True
    out, _ = layer(x, x, x, key_padding_mask=padding, is_causal=causal, adjacency=adjacency)
    dense = adjacency.to_dense() if adjacency_kind == "sparse" else adjacency
    expected, _ = reference(layer, x, x, x, padding, None, causal, adjacency=dense)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_adjacency", [False, True])
def test_causal_outputs_never_see_later_tokens(use_adjacency):
    B, L, E = 2, 16, 16
    layer = QGFDAttention(E, 4, alpha=0.9, steps=6, k=5)
    adjacency = torch.ones(L, L) if use_adjacency else None  # a dense graph would leak most
    x = torch.randn(B, L, E)
    out, _ = layer(x, x, x, is_causal=True, adjacency=adjacency)
    for j in (0, 5, 11):
        changed = x.clone()
        changed[:, j + 1:] = torch.randn(B, L - j - 1, E) * 3
        out2, _ = layer(changed, changed, changed, is_causal=True, adjacency=adjacency)
        torch.testing.assert_close(out2[:, :j + 1], out[:, :j + 1], atol=1e-5, rtol=0)
        assert not torch.allclose(out2[:, j + 1:], out[:, j + 1:])


def test_padded_keys_get_no_mass_and_do_not_matter():
    layer = QGFDAttention(8, 2, alpha=0.85, steps=4, k=3)
    x = torch.randn(2, 10, 8)
    padding = torch.zeros(2, 10, dtype=torch.bool)
    padding[:, 7:] = True
    out, weights = layer(x, x, x, key_padding_mask=padding, need_weights=True)
    assert (weights[..., 7:] == 0).all()
    y = x.clone()
    y[:, 7:] = 100.0  # whatever sits in the padding
    torch.testing.assert_close(layer(y, y, y, key_padding_mask=padding)[0][:, :7], out[:, :7])


def test_cross_attention_with_other_lengths_and_dims():
    layer = QGFDAttention(12, 3, alpha=0.7, steps=3, k=4, kdim=5, vdim=7)
    q, k, v = torch.randn(2, 4, 12), torch.randn(2, 9, 5), torch.randn(2, 9, 7)
    out, weights = layer(q, k, v, need_weights=True)
    assert out.shape == (2, 4, 12) and weights.shape == (2, 4, 9)
    expected, _ = reference(layer, q, k, v)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("masks", ["none", "padding", "bool", "causal"])
def test_alpha_zero_matches_multihead_attention(batch_first, masks):
    E, H, B, L = 16, 4, 3, 7
    mha = torch.nn.MultiheadAttention(E, H, batch_first=batch_first).eval()
    layer = QGFDAttention.from_multihead(mha, alpha=0.0).eval()
    x = torch.randn(B, L, E) if batch_first else torch.randn(L, B, E)
    padding, attn, causal = make_masks(masks, B, H, L)
    if causal:
        attn = torch.nn.Transformer.generate_square_subsequent_mask(L, dtype=torch.bool)
    # torch's defaults (need_weights=True, averaged over heads) on both sides
    expected, w_expected = mha(x, x, x, key_padding_mask=padding, attn_mask=attn,
                               is_causal=causal)
    out, w = layer(x, x, x, key_padding_mask=padding, attn_mask=attn, is_causal=causal)
    assert w is not None and w.shape == w_expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, w_expected, atol=1e-5, rtol=1e-5)
    # and positionally, in torch's argument order
    out, w = layer(x, x, x, padding, True, attn, True, causal)
    torch.testing.assert_close(w, w_expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("metric, temperature", [("cosine", 1.0), ("dot", 0.3),
                                                 ("cosine", 2.5)])
def test_metric_and_temperature_reach_the_transition(metric, temperature):
    B, L, E, H = 2, 10, 12, 3
    layer = QGFDAttention(E, H, alpha=0.8, steps=3, k=4, metric=metric, temperature=temperature)
    x = torch.randn(B, L, E)
    out, weights = layer(x, x, x, is_causal=True, average_attn_weights=False)
    expected, expected_weights = reference(layer, x, x, x, is_causal=True)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(weights.double(), expected_weights, atol=1e-5, rtol=0)


def test_tol_stops_the_diffusion_where_the_dense_iteration_does():
    B, L, E, H = 2, 12, 8, 2
    x = torch.randn(B, L, E)
    full = QGFDAttention(E, H, alpha=0.95, steps=40, k=3)
    layer = QGFDAttention(E, H, alpha=0.95, steps=40, k=3, tol=1e-2)
    layer.load_state_dict(full.state_dict())
    out, weights = layer(x, x, x, average_attn_weights=False)
    expected, expected_weights = reference(layer, x, x, x)  # stops as the dense Z loop does
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(weights.double(), expected_weights, atol=1e-5, rtol=0)
    assert (out - full(x, x, x)[0]).abs().max() > 1e-3  # it did stop early


def test_from_multihead_with_separate_kv_dims():
    mha = torch.nn.MultiheadAttention(8, 2, kdim=5, vdim=6, batch_first=True).eval()
    layer = QGFDAttention.from_multihead(mha, alpha=0.0).eval()
    q, k, v = torch.randn(2, 3, 8), torch.randn(2, 4, 5), torch.randn(2, 4, 6)
    torch.testing.assert_close(layer(q, k, v)[0], mha(q, k, v)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="MultiheadAttention"):
        QGFDAttention.from_multihead(torch.nn.Linear(2, 2))


def test_fully_masked_queries_give_zeros_not_nan():
    layer = QGFDAttention(8, 2, alpha=0.5, steps=2, k=2)
    x = torch.randn(1, 5, 8)
    attn = torch.zeros(5, 5, dtype=torch.bool)
    attn[2] = True  # query 2 may attend to nothing
    out, weights = layer(x, x, x, attn_mask=attn, need_weights=True)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    torch.testing.assert_close(out[0, 2], layer.out_proj.bias)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_give_finite_outputs(dtype):
    layer = QGFDAttention(16, 2, alpha=0.85, steps=4, k=4).to(dtype)
    x = torch.randn(2, 12, 16, dtype=dtype)
    padding = torch.zeros(2, 12, dtype=torch.bool)
    padding[0, -4:] = True
    out, weights = layer(x, x, x, key_padding_mask=padding, is_causal=True, need_weights=True)
    assert out.dtype == dtype and torch.isfinite(out).all() and torch.isfinite(weights).all()


def test_gradients_reach_every_parameter_and_unbatched_input():
    layer = QGFDAttention(8, 2, alpha=0.8, steps=3, k=3)
    x = torch.randn(2, 6, 8, requires_grad=True)
    layer(x, x, x)[0].pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    assert x.grad.abs().sum() > 0
    single = torch.randn(6, 8)
    torch.testing.assert_close(layer(single, single, single)[0],
                               layer(single[None], single[None], single[None])[0][0])


@pytest.mark.parametrize("detach", [False, True])
def test_detach_transition_gradients_match_the_reference(detach):
    """With detach_transition the key projection learns through the seed only: its gradient
    equals the dense reference's with P built from detached keys (and differs from the
    gradient through P)."""
    layer = QGFDAttention(8, 2, alpha=0.9, steps=4, k=3, detach_transition=detach)
    x = torch.randn(2, 7, 8)
    w = torch.randn(2, 7, 8)
    (grad,) = torch.autograd.grad((layer(x, x, x)[0] * w).sum(), layer.k_proj.weight)
    grads = {}
    for through_P in (True, False):
        out, _ = reference(layer, x, x, x, detach_transition=not through_P)
        (grads[through_P],) = torch.autograd.grad((out * w.double()).sum(), layer.k_proj.weight)
    torch.testing.assert_close(grad, grads[not detach].float(), atol=1e-5, rtol=1e-4)
    assert (grads[True] - grads[False]).abs().max() > 1e-3


def test_alpha_warmup_ramps_over_training_calls():
    layer = QGFDAttention(8, 2, alpha=0.8, steps=2, k=3, alpha_warmup_steps=4)
    x = torch.randn(1, 5, 8)
    assert layer.current_alpha() == 0.0
    layer.train()
    for ramped in (0.0, 0.2, 0.4, 0.6, 0.8, 0.8):  # alpha * min(1, calls / 4)
        out, _ = layer(x, x, x)  # each training call diffuses with the ramped alpha
        expected, _ = reference(layer, x, x, x, alpha=ramped)
        torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    layer.eval()
    for _ in range(2):  # evaluation does not advance it
        expected, _ = reference(layer, x, x, x, alpha=0.8)
        torch.testing.assert_close(layer(x, x, x)[0].double(), expected, atol=1e-5, rtol=0)
    assert int(layer.state_dict()["num_updates"]) == 6


@pytest.mark.parametrize("make, match", [
    (lambda: QGFDAttention(10, 3), "divisible"),
    (lambda: QGFDAttention(8, 2, alpha=2.0), "alpha"),
    (lambda: QGFDAttention(8, 2, k=0), "k must"),
    (lambda: QGFDAttention(8, 2, metric="l1"), "metric"),
    (lambda: QGFDAttention(8, 2, dropout=1.5), "dropout"),
])
def test_bad_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("kwargs, match", [
    ({"query": torch.randn(2, 5, 9)}, "feature sizes"),
    ({"key": torch.randn(3, 5, 8), "value": torch.randn(3, 5, 8)}, "batch"),
    ({"value": torch.randn(2, 4, 8)}, "lengths"),
    ({"query": torch.randn(2, 5, 8, 1)}, "query, key and value"),
    ({"key_padding_mask": torch.zeros(2, 4, dtype=torch.bool)}, "key_padding_mask"),
    ({"attn_mask": torch.zeros(3, 3, dtype=torch.bool)}, "attn_mask"),
    ({"adjacency": torch.ones(4, 4)}, "adjacency"),
    ({"query": torch.ones(2, 5, 8, dtype=torch.long)}, "feature sizes|floating"),
])
def test_bad_forward_input(kwargs, match):
    layer = QGFDAttention(8, 2, alpha=0.5, steps=2, k=2)
    args = {"query": torch.randn(2, 5, 8), "key": torch.randn(2, 5, 8),
            "value": torch.randn(2, 5, 8)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        layer(**args)


def test_checkpoint_changes_memory_not_results():
    x = torch.randn(2, 9, 16)
    B, L, H, d, steps = 2, 9, 2, 8, 5
    one_copy = B * H * L * d * 4  # the per-head values, float32
    results = {}
    for checkpoint in (False, True):
        torch.manual_seed(0)
        layer = QGFDAttention(16, H, k=3, steps=steps, checkpoint=checkpoint)
        kept, (out, _) = saved_bytes(lambda layer=layer: layer(x, x, x, is_causal=True,
                                                                need_weights=False))
        out.pow(2).sum().backward()
        results[checkpoint] = (kept, [out.detach()] + [p.grad.clone()
                                                       for p in layer.parameters()])
    # without checkpointing autograd keeps at least one copy of the values per step;
    # with it, those copies are gone
    assert results[False][0] - results[True][0] >= (steps - 1) * one_copy
    for a, b in zip(results[False][1], results[True][1], strict=True):
        torch.testing.assert_close(a, b)
