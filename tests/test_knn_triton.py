import importlib.util

import pytest
import torch

from qgfd_pyg import knn_transition

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU runs Triton's interpreter


def brute_force_topk(feats, other, k, causal, mask):
    """Every similarity, the k best per row, written out with Python loops."""
    B, N, _ = feats.shape
    best = []
    for b in range(B):
        rows = []
        for i in range(N):
            scored = [(float(feats[b, i] @ other[b, j]), j) for j in range(N)
                      if not (causal and j > i) and not (mask is not None and mask[b, j])]
            rows.append(sorted(scored, reverse=True)[:k])
        best.append(rows)
    return best


@pytest.mark.parametrize("B, N, d, k, causal, masked", [
    (2, 45, 8, 5, False, False),   # ragged last tile, d padded to 16
    (3, 70, 20, 8, True, False),   # causal: rows stop at the diagonal, early rows < k keys
    (2, 40, 16, 3, False, True),   # padded keys never selected
    (1, 6, 4, 6, True, True),      # k = N: every selectable key, rows with none
])
def test_kernel_finds_the_k_largest_similarities(B, N, d, k, causal, masked):
    from qgfd_pyg.knn_triton import topk_similar
    g = torch.Generator().manual_seed(N)
    feats, other = torch.randn(B, N, d, generator=g), torch.randn(B, N, d, generator=g)
    mask = torch.rand(B, N, generator=g) < 0.3 if masked else None
    values, index = topk_similar(feats.to(DEVICE), other.to(DEVICE), k, causal,
                                 None if mask is None else mask.to(DEVICE))
    values, index = values.cpu(), index.cpu()
    expected = brute_force_topk(feats, other, k, causal, mask)
    for b in range(B):
        for i in range(N):
            found = sorted(((float(v), int(j)) for v, j in zip(values[b, i], index[b, i],
                                                                 strict=True)
                            if v > float("-inf")), reverse=True)
            assert [j for _, j in found] == [j for _, j in expected[b][i]], (b, i)
            torch.testing.assert_close(torch.tensor([v for v, _ in found]),
                                       torch.tensor([v for v, _ in expected[b][i]]),
                                       atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("metric", ["dot", "cosine"])
@pytest.mark.parametrize("causal, masked", [(False, False), (True, False), (False, True)])
def test_triton_transition_equals_the_chunked_one_in_value_and_gradient(metric, causal, masked):
    B, N, d, k = 2, 37, 12, 4
    keys = torch.randn(B, N, d, device=DEVICE)
    mask = (torch.rand(B, N, device=DEVICE) < 0.25) if masked else None
    if masked:
        mask[0] = True  # a key set with nothing selectable: self-loops
    grads = []
    dense = []
    for backend in ("torch", "triton"):
        k_in = keys.clone().requires_grad_()
        P = knn_transition(k_in, k, metric=metric, causal=causal, mask=mask, chunk_size=10,
                           backend=backend)
        M = P.to_dense()
        (M * torch.arange(M.numel(), device=DEVICE).view_as(M).sin()).sum().backward()
        dense.append(M.detach())
        grads.append(k_in.grad)
    torch.testing.assert_close(dense[1], dense[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-5)


def test_backend_choice_and_fallback(monkeypatch):
    keys = torch.randn(10, 4)
    with pytest.raises(ValueError, match="backend"):
        knn_transition(keys, 3, backend="cuda")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="TRITON_INTERPRET"):
            knn_transition(keys, 3, backend="triton")
    # "auto" runs the kernel for float32 CUDA keys only
    from qgfd_pyg import knn_triton
    calls = []
    real_kernel = knn_triton.topk_similar
    monkeypatch.setattr(knn_triton, "topk_similar",
                        lambda *a, **kw: calls.append(a[0].device.type) or real_kernel(*a, **kw))
    knn_transition(keys, 3)
    knn_transition(keys.double().to(DEVICE), 3)
    assert calls == []
    if DEVICE == "cuda":
        knn_transition(keys.to(DEVICE), 3)
        assert calls == ["cuda"]
    # a machine without Triton: "auto" takes the chunks, "triton" says what is missing
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "triton" else real(name, *a))
    expected = knn_transition(keys, 3, backend="torch").to_dense()
    torch.testing.assert_close(knn_transition(keys, 3).to_dense(), expected)
    with pytest.raises(ValueError, match="triton package"):
        knn_transition(keys, 3, backend="triton")
