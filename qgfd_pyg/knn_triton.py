r"""Exact k-nearest keys in one fused Triton kernel: tiles of :math:`\mathbf{K}\mathbf{K}^\top`
stay on chip and only a running top-k per row leaves it, as flash attention keeps a running
softmax instead of the score matrix.

Each program takes ``BLOCK_M`` rows of one key set and walks the key tiles of ``BLOCK_N``
columns (causal rows stop at the diagonal). Per tile it takes the row's best ``k`` scores one
at a time (max, argmax) and lets each replace the worst of the ``k`` kept so far when it is
larger, so memory traffic is the keys and the ``[N, k]`` result, never ``[N, N]``. Imported
lazily (Triton is optional): :func:`qgfd_pyg.knn_transition` decides when to call
:func:`topk_similar` (CUDA keys when Triton is installed; on the CPU only under Triton's
interpreter, ``TRITON_INTERPRET=1``, how the tests run it).
"""
import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _knn_kernel(Q, K, MASK, OUT_V, OUT_I, N, D,
                stride_qb, stride_qn, stride_kb, stride_kn, stride_mb, stride_ob, stride_on,
                TOP: tl.constexpr, SLOTS: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                HAS_MASK: tl.constexpr, PRECISION: tl.constexpr):
    pid, b = tl.program_id(0), tl.program_id(1)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q = tl.load(Q + b * stride_qb + rows[:, None] * stride_qn + dims[None, :],
                mask=(rows[:, None] < N) & (dims[None, :] < D), other=0.0)
    slots = tl.arange(0, SLOTS)
    # slots past TOP hold +inf: never the worst, never replaced, never stored
    best_v = tl.where(slots[None, :] < TOP, float("-inf"), float("inf")) \
        + tl.zeros([BLOCK_M, SLOTS], dtype=tl.float32)
    best_i = tl.zeros([BLOCK_M, SLOTS], dtype=tl.int32)
    lanes = tl.arange(0, BLOCK_N)
    stop = N
    if CAUSAL:
        stop = tl.minimum(N, (pid + 1) * BLOCK_M)
    for start in range(0, stop, BLOCK_N):
        cols = start + lanes
        kt = tl.load(K + b * stride_kb + cols[None, :] * stride_kn + dims[:, None],
                     mask=(cols[None, :] < N) & (dims[:, None] < D), other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION)
        valid = (cols[None, :] < N) & (rows[:, None] < N)
        if CAUSAL:
            valid = valid & (cols[None, :] <= rows[:, None])
        if HAS_MASK:
            blocked = tl.load(MASK + b * stride_mb + cols, mask=cols < N, other=1)
            valid = valid & (blocked[None, :] == 0)
        s = tl.where(valid, s, float("-inf"))
        for _ in tl.static_range(TOP):  # the tile's best TOP, one at a time
            top = tl.max(s, axis=1)
            at = tl.argmax(s, axis=1)
            worst = tl.min(best_v, axis=1)
            slot = tl.argmin(best_v, axis=1)
            swap = (slots[None, :] == slot[:, None]) & (top > worst)[:, None]
            best_v = tl.where(swap, top[:, None], best_v)
            best_i = tl.where(swap, (start + at)[:, None], best_i)
            s = tl.where(lanes[None, :] == at[:, None], float("-inf"), s)
    out = b * stride_ob + rows[:, None] * stride_on + slots[None, :]
    keep = (rows[:, None] < N) & (slots[None, :] < TOP)
    tl.store(OUT_V + out, best_v, mask=keep)
    tl.store(OUT_I + out, best_i, mask=keep)


def topk_similar(feats: Tensor, other: Tensor, k: int, causal: bool = False,
                 mask: Tensor = None) -> tuple:
    """For each row ``i`` of ``feats`` ``[B, N, d]``, the ``k`` largest ``feats[b, i] .
    other[b, j]`` over ``j`` (``j <= i`` if ``causal``; never where ``mask[b, j]``), as
    ``(values, indices)`` ``[B, N, k]`` in no particular order; ``-inf`` where fewer than
    ``k`` keys are selectable. float32 throughout; the product is exact float32 unless torch
    allows TF32 for matmuls (``torch.backends.cuda.matmul.allow_tf32``), as for the torch path."""
    B, N, d = feats.shape
    feats, other = feats.float().contiguous(), other.float().contiguous()
    values = feats.new_empty(B, N, k)
    index = torch.empty(B, N, k, dtype=torch.int32, device=feats.device)
    if mask is None:
        blocked, stride_mb = feats.new_zeros(1, dtype=torch.int8), 0
    else:
        blocked = mask.to(torch.int8).expand(B, N).contiguous()
        stride_mb = blocked.stride(0)
    interpreted = feats.device.type != "cuda"
    block = 32 if interpreted else 64
    tf32 = feats.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    grid = (triton.cdiv(N, block), B)
    _knn_kernel[grid](feats, other, blocked, values, index, N, d,
                      feats.stride(0), feats.stride(1), other.stride(0), other.stride(1),
                      stride_mb, values.stride(0), values.stride(1),
                      TOP=k, SLOTS=triton.next_power_of_2(k), BLOCK_M=block, BLOCK_N=block,
                      BLOCK_D=max(16, triton.next_power_of_2(d)), CAUSAL=causal,
                      HAS_MASK=mask is not None, PRECISION="tf32" if tf32 else "ieee")
    return values, index.long()
