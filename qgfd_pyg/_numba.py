"""CPU routines compiled with numba (optional: ``pip install qgfd-pyg[fast]``).

:func:`routines` returns them, or ``None`` when numba is not installed; callers then use their
torch implementations. Every routine is parallel over output rows (or edges), so no two threads
write the same memory, and runs on as many threads as torch is set to use.
"""
from types import SimpleNamespace
from typing import Optional

import torch

_state = {}


def routines() -> Optional[SimpleNamespace]:
    """The compiled routines (``None`` without numba). Each runs outside ``torch.compile``'s
    tracing (a graph break): dynamo must not trace into numba's own compilation, which a
    model compiled before any eager call would otherwise hit on its first call."""
    if "routines" not in _state:
        _state["routines"] = _eager(_compile())
    return _state["routines"]


@torch.compiler.disable
def _eager(compiled: Optional[SimpleNamespace]) -> Optional[SimpleNamespace]:
    if compiled is None:
        return None
    return SimpleNamespace(**{name: torch.compiler.disable(value) if callable(value) else value
                              for name, value in vars(compiled).items()})


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the compiled routines can take these tensors (CPU, float32/float64, no autograd)."""
    return routines() is not None and all(
        t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
        and not t.requires_grad for t in tensors)


def set_threads() -> None:
    k = routines()
    k.set_num_threads(max(1, min(torch.get_num_threads(), k.max_threads)))


def _compile() -> Optional[SimpleNamespace]:
    try:
        import numba
        import numpy as np
    except ImportError:
        return None
    jit = numba.njit(parallel=True, fastmath=True, nogil=True, cache=True)

    @numba.njit(nogil=True, fastmath=True, cache=True, inline="always")
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

    @jit
    def csr_spmm(rowptr, col, value, x, out):
        """out[i] = sum_k value[k] x[col[k]] over row i's entries."""
        for i in numba.prange(out.shape[0]):
            # accumulated in the output row: a scratch array per row costs an allocation
            # each (about a third of the product at 2 * 10^5 nodes)
            for j in range(out.shape[1]):
                out[i, j] = 0
            _row_product(rowptr, col, value, x, out, i)

    @jit
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

    @jit
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

    @jit
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

    @jit
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

    @jit
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

    @jit
    def transition_values(rowptr, col, weight, given, add_self_loops, sym, value, keep):
        """Entries and values of a graph transition over unique row-sorted entries that hold
        (i, i) for every node: unit self-loops where asked for and not given, and on rows
        without positive out-weight; rows normalised by their out-weight (``sym``:
        symmetrically). See qgfd_pyg.structure.transition_entries."""
        n = rowptr.shape[0] - 1
        out_weight = np.zeros(n, dtype=value.dtype)
        for i in numba.prange(n):
            total = 0.0
            for p in range(rowptr[i], rowptr[i + 1]):
                w = weight[p]
                if col[p] == i and add_self_loops and not given[p]:
                    w = 1.0
                value[p] = w
                keep[p] = given[p] or (col[p] == i and add_self_loops)
                total += w
            if total == 0:  # dangling: a unit self-loop keeps the mass
                for p in range(rowptr[i], rowptr[i + 1]):
                    if col[p] == i:
                        value[p] += 1.0
                        keep[p] = True
                total = 1.0
            out_weight[i] = total
        for i in numba.prange(n):
            for p in range(rowptr[i], rowptr[i + 1]):
                if sym:
                    value[p] /= np.sqrt(out_weight[i] * out_weight[col[p]])
                else:
                    value[p] /= out_weight[i]

    @numba.njit(nogil=True, cache=True)
    def group_by(index, other, n):
        """Counting sort of the positions of index by their value: (ptr, perm, others) with
        perm[ptr[i]:ptr[i + 1]] the positions of i in index, in order, and others the
        values of other there. Serial, O(len(index))."""
        ptr = np.zeros(n + 1, dtype=np.int64)
        for e in range(index.shape[0]):
            ptr[index[e] + 1] += 1
        for i in range(n):
            ptr[i + 1] += ptr[i]
        fill = ptr[:-1].copy()
        perm = np.empty(index.shape[0], dtype=np.int64)
        others = np.empty(index.shape[0], dtype=other.dtype)
        for e in range(index.shape[0]):
            p = fill[index[e]]
            perm[p] = e
            others[p] = other[e]
            fill[index[e]] += 1
        return ptr, perm, others

    @numba.njit(nogil=True, cache=True)
    def _sort_segment(key, perm, start, stop):
        """Sorts key[start:stop] and moves perm[start:stop] along (insertion sort for short
        segments: rows are short; a merge sort for long ones)."""
        if stop - start > 64:
            order = np.argsort(key[start:stop], kind="mergesort")
            key[start:stop] = key[start:stop][order]
            perm[start:stop] = perm[start:stop][order]
            return
        for a in range(start + 1, stop):
            k, p = key[a], perm[a]
            b = a - 1
            while b >= start and key[b] > k:
                key[b + 1] = key[b]
                perm[b + 1] = perm[b]
                b -= 1
            key[b + 1] = k
            perm[b + 1] = p

    @jit
    def unique_pairs(row, col, weight, n, loops):
        """The unique (row, col) pairs sorted by row, then column, with summed weights,
        whether the input had each, and the row offsets; loops adds (i, i) for every node
        (weight 0 unless given). A counting sort by row that places each column next to its
        edge id, then each row's columns sorted in place (contiguous, in parallel)."""
        m = row.shape[0]
        total = m + (n if loops else 0)
        ptr = np.zeros(n + 1, dtype=np.int64)
        for e in range(m):
            ptr[row[e] + 1] += 1
        if loops:
            for i in range(n):
                ptr[i + 1] += 1
        for i in range(n):
            ptr[i + 1] += ptr[i]
        fill = ptr[:-1].copy()
        perm = np.empty(total, dtype=np.int64)  # the edge id at each sorted position
        key = np.empty(total, dtype=np.int64)  # its column
        for e in range(m):
            p = fill[row[e]]
            perm[p] = e
            key[p] = col[e]
            fill[row[e]] += 1
        if loops:
            for i in range(n):
                perm[fill[i]] = m + i
                key[fill[i]] = i
                fill[i] += 1
        counts = np.zeros(n + 1, dtype=np.int64)
        for i in numba.prange(n):
            _sort_segment(key, perm, ptr[i], ptr[i + 1])
            c = 0
            for a in range(ptr[i], ptr[i + 1]):
                if a == ptr[i] or key[a] != key[a - 1]:
                    c += 1
            counts[i + 1] = c
        for i in range(n):
            counts[i + 1] += counts[i]
        u = counts[n]
        out_row = np.empty(u, dtype=np.int64)
        out_col = np.empty(u, dtype=np.int64)
        out_weight = np.zeros(u, dtype=weight.dtype)
        given = np.zeros(u, dtype=np.bool_)
        for i in numba.prange(n):
            o = counts[i] - 1
            for a in range(ptr[i], ptr[i + 1]):
                if a == ptr[i] or key[a] != key[a - 1]:
                    o += 1
                    out_row[o] = i
                    out_col[o] = key[a]
                e = perm[a]
                if e < m:
                    out_weight[o] += weight[e]
                    given[o] = True
        return out_row, out_col, out_weight, given, counts

    @numba.njit(nogil=True, fastmath=True, cache=True, inline="always")
    def _typed_row_product(rowptr, col, rel, weight, a, y, out, j):
        """out[j, b] += sum_k weight[k] a[rel[k], b] y[col[k], b] over the edges k into j,
        four at a time as :func:`_row_product`."""
        width = out.shape[1]
        k, end = rowptr[j], rowptr[j + 1]
        while k + 4 <= end:
            c0, c1, c2, c3 = col[k], col[k + 1], col[k + 2], col[k + 3]
            r0, r1, r2, r3 = rel[k], rel[k + 1], rel[k + 2], rel[k + 3]
            w0, w1, w2, w3 = weight[k], weight[k + 1], weight[k + 2], weight[k + 3]
            for b in range(width):
                out[j, b] += (w0 * a[r0, b] * y[c0, b] + w1 * a[r1, b] * y[c1, b]
                              + w2 * a[r2, b] * y[c2, b] + w3 * a[r3, b] * y[c3, b])
            k += 4
        while k < end:
            c, r, w = col[k], rel[k], weight[k]
            for b in range(width):
                out[j, b] += w * a[r, b] * y[c, b]
            k += 1

    @numba.njit(nogil=True, fastmath=True, cache=True, inline="always")
    def _node_mass(i, a, rel_ptr, rel_ids, rel_degree, out):
        """out[i, b] = D[i, b] = sum_r C[i, r] a[r, b] over the node's relations."""
        width = out.shape[1]
        for b in range(width):
            out[i, b] = 0
        for m in range(rel_ptr[i], rel_ptr[i + 1]):
            r, d = rel_ids[m], rel_degree[m]
            for b in range(width):
                out[i, b] += d * a[r, b]

    @numba.njit(nogil=True, fastmath=True, cache=True, inline="always")
    def _relation_stay(j, a, rel_ptr, rel_ids, asum, x, out):
        """out[j, b] = x[j, b] (asum[b] - sum of a[r, b] over the relations j has): the share
        of the relations j lacks stays (relation mode with ``keep``)."""
        width = out.shape[1]
        for b in range(width):
            out[j, b] = asum[b]
        for m in range(rel_ptr[j], rel_ptr[j + 1]):
            r = rel_ids[m]
            for b in range(width):
                out[j, b] -= a[r, b]
        for b in range(width):
            out[j, b] *= x[j, b]

    @jit
    def typed_step(rowptr, col, rel, weight, a, x, rel_ptr, rel_ids, rel_degree, asum,
                   node_mode, keep, min_mass, y, out):
        """One step of a query-conditioned flow, node-major (``x`` ``[N, B]``, ``a``
        ``[R, B]``): ``out[j, b] = x[j, b] stay[j, b] + sum_k weight[k] a[rel[k], b]
        y[col[k], b]`` over the edges into ``j``. Node mode first writes, per node ``i`` and
        query ``b``, ``y = x / D[i, b]`` (a scratch array; ``D = sum_r C[i, r] a[r, b]`` over
        the node's relation list, accumulated in ``out[i]``; 0 where ``D <= min_mass``) and
        the share that stays into ``out`` (with ``keep``, all of ``x`` where the node has no
        out-mass); otherwise ``y`` is ``x`` and, with ``keep``, the share that stays is the
        weight of the relations ``j`` lacks, ``asum[b] - sum_{r in j} a[r, b]``."""
        n, width = x.shape
        if node_mode:
            for i in numba.prange(n):
                _node_mass(i, a, rel_ptr, rel_ids, rel_degree, out)
                for b in range(width):
                    mass = out[i, b]
                    moves = mass > min_mass
                    y[i, b] = x[i, b] / mass if moves else 0.0
                    out[i, b] = x[i, b] if keep and not moves else 0.0
        for j in numba.prange(n):
            if not node_mode:
                if keep:
                    _relation_stay(j, a, rel_ptr, rel_ids, asum, x, out)
                else:
                    for b in range(width):
                        out[j, b] = 0
            _typed_row_product(rowptr, col, rel, weight, a, y, out, j)

    @numba.njit(nogil=True, fastmath=True, cache=True, inline="always")
    def _source_scale(i, a, rel_ptr, rel_ids, rel_degree, asum, node_mode, keep, min_mass,
                      scale, stay):
        """Source ``i``'s ``1 / D`` per query into ``scale`` (node mode; 0 without out-mass)
        and the share that stays on it into ``stay`` (node mode with ``keep``: 1 without
        out-mass; relation mode: the weight of the relations it lacks), for the backwards."""
        width = scale.shape[0]
        if node_mode:
            for b in range(width):
                scale[b] = 0
            for m in range(rel_ptr[i], rel_ptr[i + 1]):
                r, d = rel_ids[m], rel_degree[m]
                for b in range(width):
                    scale[b] += d * a[r, b]
            for b in range(width):
                mass = scale[b]
                scale[b] = 1.0 / mass if mass > min_mass else 0.0
                stay[b] = 1.0 if keep and scale[b] == 0 else 0.0
        elif keep:
            for b in range(width):
                stay[b] = asum[b]
            for m in range(rel_ptr[i], rel_ptr[i + 1]):
                r = rel_ids[m]
                for b in range(width):
                    stay[b] -= a[r, b]

    @jit
    def typed_step_backward(rowptr, col, rel, weight, a, x, g, rel_ptr, rel_ids, rel_degree,
                            asum, node_mode, keep, min_mass, grad_x, parts, totals):
        """The gradients of :func:`typed_step` in one pass over the edges by source (``col``:
        their targets), recomputing each source's scale and staying share from ``x`` and
        ``a``: ``grad_x`` ``[N, B]``, and the relation weights' gradient as per-chunk parts
        ``parts`` ``[chunks, R, B]`` plus ``totals`` ``[chunks, B]`` (added to every relation:
        the staying share's ``asum``); the caller sums the chunks."""
        chunks, n = parts.shape[0], rowptr.shape[0] - 1
        width = x.shape[1]
        size = (n + chunks - 1) // chunks
        for c in numba.prange(chunks):
            scale = np.ones(width, dtype=x.dtype)
            stay = np.zeros(width, dtype=x.dtype)
            for b in range(width):
                totals[c, b] = 0
                for r in range(parts.shape[1]):
                    parts[c, r, b] = 0
            for i in range(c * size, min(n, (c + 1) * size)):
                _source_scale(i, a, rel_ptr, rel_ids, rel_degree, asum, node_mode, keep, min_mass,
                              scale, stay)
                for b in range(width):
                    grad_x[i, b] = 0
                for k in range(rowptr[i], rowptr[i + 1]):
                    j, r, w = col[k], rel[k], weight[k]
                    for b in range(width):
                        gj = g[j, b]
                        grad_x[i, b] += w * a[r, b] * gj
                        parts[c, r, b] += w * x[i, b] * scale[b] * gj
                if node_mode:  # d(1 / D) = -scale^2 dD, dD / da[r] = C[i, r]
                    for m in range(rel_ptr[i], rel_ptr[i + 1]):
                        r, d = rel_ids[m], rel_degree[m]
                        for b in range(width):
                            parts[c, r, b] -= d * grad_x[i, b] * x[i, b] * scale[b] * scale[b]
                for b in range(width):
                    grad_x[i, b] = grad_x[i, b] * scale[b] + g[i, b] * stay[b]
                if keep and not node_mode:  # stay = asum - the node's relations' weights
                    for b in range(width):
                        totals[c, b] += g[i, b] * x[i, b]
                    for m in range(rel_ptr[i], rel_ptr[i + 1]):
                        r = rel_ids[m]
                        for b in range(width):
                            parts[c, r, b] -= g[i, b] * x[i, b]

    @numba.njit(nogil=True, fastmath=True, cache=True, inline="always")
    def _gather_sum(start, end, col, weight, g, out):
        """out[b] += sum_k weight[k] g[col[k], b] over the edges start..end, four at a time."""
        width = out.shape[0]
        k = start
        while k + 4 <= end:
            c0, c1, c2, c3 = col[k], col[k + 1], col[k + 2], col[k + 3]
            w0, w1, w2, w3 = weight[k], weight[k + 1], weight[k + 2], weight[k + 3]
            for b in range(width):
                out[b] += w0 * g[c0, b] + w1 * g[c1, b] + w2 * g[c2, b] + w3 * g[c3, b]
            k += 4
        while k < end:
            c, w = col[k], weight[k]
            for b in range(width):
                out[b] += w * g[c, b]
            k += 1

    @numba.njit(nogil=True, fastmath=True, cache=True)
    def _active_row_product(rowptr, col, rel, weight, a, y, active, out, j):
        """:func:`_typed_row_product` over the edges into ``j`` from active sources only,
        four at a time (the sources gathered as they are found)."""
        width = out.shape[1]
        found = 0
        c0 = c1 = c2 = 0
        r0 = r1 = r2 = 0
        w0 = w1 = w2 = weight.dtype.type(0)
        for k in range(rowptr[j], rowptr[j + 1]):
            c = col[k]
            if not active[c]:
                continue
            if found == 0:
                c0, r0, w0 = c, rel[k], weight[k]
            elif found == 1:
                c1, r1, w1 = c, rel[k], weight[k]
            elif found == 2:
                c2, r2, w2 = c, rel[k], weight[k]
            else:
                r, w = rel[k], weight[k]
                for b in range(width):
                    out[j, b] += (w0 * a[r0, b] * y[c0, b] + w1 * a[r1, b] * y[c1, b]
                                  + w2 * a[r2, b] * y[c2, b] + w * a[r, b] * y[c, b])
                found = -1
            found += 1
        if found >= 1:
            for b in range(width):
                out[j, b] += w0 * a[r0, b] * y[c0, b]
        if found >= 2:
            for b in range(width):
                out[j, b] += w1 * a[r1, b] * y[c1, b]
        if found == 3:
            for b in range(width):
                out[j, b] += w2 * a[r2, b] * y[c2, b]

    @jit
    def nonzero_rows(x, flags):
        """``flags[i]``: whether row ``i`` of ``x`` has a non-zero entry (the scan of a row
        stops at its first)."""
        n, width = x.shape
        for i in numba.prange(n):
            found = False
            for b in range(width):
                if x[i, b] != 0:
                    found = True
                    break
            flags[i] = found

    @jit
    def flow_start(x, theta, active, acc):
        """The hop-weighted sum's first term: ``acc[i] = theta x[i]`` on the active rows,
        zeros on the others."""
        n, width = x.shape
        for i in numba.prange(n):
            if active[i]:
                for b in range(width):
                    acc[i, b] = theta[b] * x[i, b]
            else:
                for b in range(width):
                    acc[i, b] = 0

    @jit
    def typed_flow_step(rowptr, col, rel, weight, a, x, src_active, rel_ptr, rel_ids,
                        rel_degree, asum, node_mode, keep, min_mass, theta, y, out, acc,
                        dst_active, dense):
        """:func:`typed_step` on the rows that can hold mass: ``x`` is read at its active
        rows (``src_active``) only; a row ``j`` of ``out`` is active (``dst_active[j]``) and
        written when an edge leads to it from an active row (whatever its weight) or, with
        ``keep``, when it was active itself; each written row also adds ``theta[b] out[j,
        b]`` into ``acc`` (the hop-weighted sum of the walks). Rows left inactive are not
        written. ``dense``: every row is active (no checks)."""
        n, width = x.shape
        if node_mode:  # y = x / D on the active rows
            for i in numba.prange(n):
                if not src_active[i]:
                    continue
                _node_mass(i, a, rel_ptr, rel_ids, rel_degree, y)
                for b in range(width):
                    mass = y[i, b]
                    y[i, b] = x[i, b] / mass if mass > min_mass else 0.0
        for j in numba.prange(n):
            start, end = rowptr[j], rowptr[j + 1]
            reached = 0
            if dense:
                reached = end - start
            else:
                for k in range(start, end):
                    if src_active[col[k]]:
                        reached += 1
            stays = keep and src_active[j]
            dst_active[j] = stays or reached > 0
            if not dst_active[j]:
                continue
            if stays:
                if node_mode:  # all of x stays where the node has no out-mass
                    _node_mass(j, a, rel_ptr, rel_ids, rel_degree, out)
                    for b in range(width):
                        out[j, b] = x[j, b] if out[j, b] <= min_mass else 0.0
                else:  # the weight of the relations j lacks stays
                    _relation_stay(j, a, rel_ptr, rel_ids, asum, x, out)
            else:
                for b in range(width):
                    out[j, b] = 0
            if reached == end - start:  # every source active: no checks
                _typed_row_product(rowptr, col, rel, weight, a, y, out, j)
            else:
                _active_row_product(rowptr, col, rel, weight, a, y, src_active, out, j)
            for b in range(width):
                acc[j, b] += theta[b] * out[j, b]

    @jit
    def typed_flow_step_backward(active, pair_ptr, pair_rel, edge_ptr, col, weight, a, x,
                                 grad, theta_next,
                                 g_next, has_g, rel_ptr, rel_ids, rel_degree, asum,
                                 node_mode, keep, min_mass, theta, write_g, g_out, parts,
                                 totals, dots):
        """The gradients of :func:`typed_flow_step` over the active rows, by source and
        relation (``pair_ptr``: each node's (source, relation) pairs, ``pair_rel`` their
        relations, ``edge_ptr`` their edges, whose targets are ``col``; an edge costs one
        gathered row, a pair the products with ``a`` and ``x``), with ``grad`` the gradient
        of the hop-weighted sum and the next walk's gradient ``g_next`` (or, without
        ``has_g``, ``theta_next grad``: the last walk's): ``g_out[i] = theta grad[i] +
        d step / d x[i]`` (with ``write_g``), the relation weights' gradient as per-chunk
        ``parts`` ``[chunks, R, B]`` plus ``totals`` ``[chunks, B]`` (as
        :func:`typed_step_backward`), and ``dots[c, b]``, the chunk's ``sum_i grad[i, b]
        x[i, b]`` (the gradient of this walk's hop weight)."""
        chunks, count = parts.shape[0], x.shape[0]
        width = x.shape[1]
        size = (count + chunks - 1) // chunks
        for c in numba.prange(chunks):
            scale = np.ones(width, dtype=x.dtype)
            stay = np.zeros(width, dtype=x.dtype)
            total = np.zeros(width, dtype=x.dtype)
            pair = np.zeros(width, dtype=x.dtype)
            for b in range(width):
                totals[c, b] = 0
                dots[c, b] = 0
                for r in range(parts.shape[1]):
                    parts[c, r, b] = 0
            for i in range(c * size, min(count, (c + 1) * size)):
                if not active[i]:
                    continue
                _source_scale(i, a, rel_ptr, rel_ids, rel_degree, asum, node_mode, keep, min_mass,
                              scale, stay)
                for b in range(width):
                    total[b] = 0
                for p in range(pair_ptr[i], pair_ptr[i + 1]):  # (i, r): its edges' sum first
                    r, first = pair_rel[p], edge_ptr[p]
                    if edge_ptr[p + 1] - first == 1:  # one edge: no sum to share
                        j, w = col[first], weight[first]
                        if has_g:
                            for b in range(width):
                                gj = g_next[j, b]
                                total[b] += w * a[r, b] * gj
                                parts[c, r, b] += w * x[i, b] * scale[b] * gj
                        else:
                            for b in range(width):
                                gj = theta_next[b] * grad[j, b]
                                total[b] += w * a[r, b] * gj
                                parts[c, r, b] += w * x[i, b] * scale[b] * gj
                        continue
                    for b in range(width):
                        pair[b] = 0
                    if has_g:
                        _gather_sum(edge_ptr[p], edge_ptr[p + 1], col, weight, g_next, pair)
                    else:
                        _gather_sum(edge_ptr[p], edge_ptr[p + 1], col, weight, grad, pair)
                        for b in range(width):
                            pair[b] *= theta_next[b]
                    for b in range(width):
                        total[b] += a[r, b] * pair[b]
                        parts[c, r, b] += x[i, b] * scale[b] * pair[b]
                if node_mode:  # d(1 / D) = -scale^2 dD, dD / da[r] = C[i, r]
                    for k in range(rel_ptr[i], rel_ptr[i + 1]):
                        r, d = rel_ids[k], rel_degree[k]
                        for b in range(width):
                            parts[c, r, b] -= d * total[b] * x[i, b] * scale[b] * scale[b]
                for b in range(width):
                    total[b] *= scale[b]
                if keep:  # what stays on i: i is active at the next step too
                    for b in range(width):
                        gi = g_next[i, b] if has_g else theta_next[b] * grad[i, b]
                        total[b] += gi * stay[b]
                        if not node_mode:  # stay = asum - the node's relations' weights
                            totals[c, b] += gi * x[i, b]
                    if not node_mode:
                        for k in range(rel_ptr[i], rel_ptr[i + 1]):
                            r = rel_ids[k]
                            for b in range(width):
                                gi = g_next[i, b] if has_g else theta_next[b] * grad[i, b]
                                parts[c, r, b] -= gi * x[i, b]
                for b in range(width):
                    dots[c, b] += grad[i, b] * x[i, b]
                if write_g:
                    for b in range(width):
                        g_out[i, b] = theta[b] * grad[i, b] + total[b]

    @jit
    def rows_dot(active, grad, x, dots):
        """``dots[c, b]``: chunk ``c``'s ``sum_i grad[i, b] x[i, b]`` over the active rows."""
        chunks, (count, width) = dots.shape[0], x.shape
        size = (count + chunks - 1) // chunks
        for c in numba.prange(chunks):
            for b in range(width):
                dots[c, b] = 0
            for i in range(c * size, min(count, (c + 1) * size)):
                if not active[i]:
                    continue
                for b in range(width):
                    dots[c, b] += grad[i, b] * x[i, b]

    @jit
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

    return SimpleNamespace(csr_spmm=csr_spmm, typed_step=typed_step,
                           typed_step_backward=typed_step_backward, csr_diffuse=csr_diffuse,
                           typed_flow_step=typed_flow_step,
                           typed_flow_step_backward=typed_flow_step_backward,
                           rows_dot=rows_dot, transpose=transpose, flow_start=flow_start,
                           nonzero_rows=nonzero_rows,
                           unique_pairs=unique_pairs,
                           edge_dot=edge_dot,
                           segment_aggregate=segment_aggregate, group_by=group_by,
                           transition_values=transition_values,
                           segment_softmax=segment_softmax,
                           segment_softmax_backward=segment_softmax_backward,
                           set_num_threads=numba.set_num_threads,
                           max_threads=numba.config.NUMBA_NUM_THREADS)
