"""Compiled sparse products: the CSR product ``P Z``, the whole fixed-``P`` diffusion in one
routine, and a tiled transpose."""
import numba

from .jit import inline, parallel

__all__ = ["csr_spmm", "csr_diffuse", "transpose"]


@inline
def _row_product(rowptr, col, value, x, out, i):
    """out[i] += sum_k value[k] x[col[k]] over row i's entries, four neighbour rows per
    pass: independent loads keep more of the random gathers in flight (about 1.3x faster
    than one at a time here)."""
    d = out.shape[1]
    k, end = rowptr[i], rowptr[i + 1]
    while k + 4 <= end:
        c0, c1, c2, c3 = col[k], col[k + 1], col[k + 2], col[k + 3]
        w0, w1, w2, w3 = value[k], value[k + 1], value[k + 2], value[k + 3]
        for j in range(d):
            out[i, j] += w0 * x[c0, j] + w1 * x[c1, j] + w2 * x[c2, j] + w3 * x[c3, j]
        k += 4
    while k < end:
        w, c = value[k], col[k]
        for j in range(d):
            out[i, j] += w * x[c, j]
        k += 1


@parallel
def csr_spmm(rowptr, col, value, x, out):
    """out[i] = sum_k value[k] x[col[k]] over row i's entries."""
    for i in numba.prange(out.shape[0]):
        # accumulated in the output row: a scratch array per row costs an allocation
        # each (about a third of the product at 2 * 10^5 nodes)
        for j in range(out.shape[1]):
            out[i, j] = 0
        _row_product(rowptr, col, value, x, out, i)


@parallel
def csr_diffuse(rowptr, col, value, x0, theta, last, steps, a, b, acc):
    """acc = sum_{t < steps} theta[t] P^t x0 + last P^steps x0: every step one pass over
    the rows that multiplies (into a or b, in turn) and adds the step's share of the
    previous iterate to acc in the same pass."""
    d = x0.shape[1]
    src = x0
    for t in range(steps):
        dst = a if t % 2 == 0 else b
        w = theta[t]
        for i in numba.prange(x0.shape[0]):
            for j in range(d):  # element loops: a slice expression would allocate
                dst[i, j] = 0
                acc[i, j] = w * src[i, j] if t == 0 else acc[i, j] + w * src[i, j]
            _row_product(rowptr, col, value, src, dst, i)
        src = dst
    for i in numba.prange(x0.shape[0]):
        for j in range(d):
            acc[i, j] += last * src[i, j]


@parallel
def transpose(x, out):
    """``out = x.T`` in tiles of 8 along the long side, the inner loop along it (so that
    one of the two arrays is read or written 8 contiguous elements at a time, and the
    other's 8 rows stay in cache): about 2x torch's strided copy for a [40,943, 1,024]
    float32 array, either way."""
    n, m = x.shape
    if n >= m:
        for tile in numba.prange((n + 7) // 8):
            lo, hi = tile * 8, min(n, tile * 8 + 8)
            for j in range(m):
                for i in range(lo, hi):
                    out[j, i] = x[i, j]
    else:
        for tile in numba.prange((m + 7) // 8):
            lo, hi = tile * 8, min(m, tile * 8 + 8)
            for i in range(n):
                for j in range(lo, hi):
                    out[j, i] = x[i, j]
