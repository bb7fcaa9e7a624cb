"""Compiled edge routines: per-edge dot products, sums over the edges grouped by target or
source, and the edge softmax with its backward (QGFDConv's seed)."""
import numba
import numpy as np

from .jit import parallel

__all__ = ["edge_dot", "segment_aggregate", "segment_softmax", "segment_softmax_backward"]


@parallel
def edge_dot(dst, src, a, b, out):
    """out[e, h] = <a[dst[e], h], b[src[e], h]> for a, b of shape [N, H, C]."""
    H, C = a.shape[1], a.shape[2]
    for e in numba.prange(dst.shape[0]):
        i, j = dst[e], src[e]
        for h in range(H):
            s = 0.0
            for c in range(C):
                s += a[i, h, c] * b[j, h, c]
            out[e, h] = s


@parallel
def segment_aggregate(ptr, perm, other, w, z, out):
    """out[i, h] = sum_p w[perm[p], h] z[other[p], h] over p in ptr[i]:ptr[i + 1] (the
    edges whose target, or source, is i; ``other`` is their other end, in that order)."""
    H, C = z.shape[1], z.shape[2]
    for i in numba.prange(out.shape[0]):
        for h in range(H):  # accumulated in place: no scratch array per node
            for c in range(C):
                out[i, h, c] = 0
        for p in range(ptr[i], ptr[i + 1]):
            e = perm[p]
            j = other[p]
            for h in range(H):
                we = w[e, h]
                for c in range(C):
                    out[i, h, c] += we * z[j, h, c]


@parallel
def segment_softmax(ptr, score, out):
    """out[e, h] = softmax of score[., h] over the edges ptr[i]:ptr[i + 1] (edges sorted
    by target)."""
    H = score.shape[1]
    for i in numba.prange(ptr.shape[0] - 1):
        a, b = ptr[i], ptr[i + 1]
        if a == b:
            continue
        for h in range(H):
            top = score[a, h]
            for p in range(a + 1, b):
                top = max(top, score[p, h])
            total = top - top  # zero of the scores' dtype
            for p in range(a, b):
                e = np.exp(score[p, h] - top)
                out[p, h] = e
                total += e
            inv = 1 / (total + 1e-16)
            for p in range(a, b):
                out[p, h] *= inv


@parallel
def segment_softmax_backward(ptr, prob, grad, out):
    """out = prob * (grad - sum over the segment of prob * grad)."""
    H = prob.shape[1]
    for i in numba.prange(ptr.shape[0] - 1):
        a, b = ptr[i], ptr[i + 1]
        for h in range(H):
            dot = prob[a, h] - prob[a, h]
            for p in range(a, b):
                dot += prob[p, h] * grad[p, h]
            for p in range(a, b):
                out[p, h] = prob[p, h] * (grad[p, h] - dot)
