"""Compiled steps of the query-conditioned flow (qgfd_pyg.relational): a step over every row
and its backward, and the active-row steps of the whole flow with theirs.

The graph comes in three groups: ``edges`` ``(rowptr, col, rel, weight)`` in CSR order (by
target for the steps, by source for the backwards), ``degrees`` ``(rel_ptr, rel_ids,
rel_degree)``, each node's relations with out-weight and that weight, and ``mode``
``(node_mode, keep, min_mass)``: the normalisation (by node, else per relation), whether
dangling mass stays, and the out-mass below which a node counts as having none."""
import numba
import numpy as np

from .jit import helper, inline, parallel

__all__ = ["typed_step", "typed_step_backward", "nonzero_rows", "flow_start",
           "typed_flow_step", "typed_flow_step_backward", "rows_dot"]


@inline
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


@inline
def _node_mass(i, a, rel_ptr, rel_ids, rel_degree, out):
    """out[i, b] = D[i, b] = sum_r C[i, r] a[r, b] over the node's relations."""
    width = out.shape[1]
    for b in range(width):
        out[i, b] = 0
    for m in range(rel_ptr[i], rel_ptr[i + 1]):
        r, d = rel_ids[m], rel_degree[m]
        for b in range(width):
            out[i, b] += d * a[r, b]


@inline
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


@parallel
def typed_step(edges, degrees, mode, a, asum, x, y, out):
    """One step of a query-conditioned flow, node-major (``x`` ``[N, B]``, ``a``
    ``[R, B]``): ``out[j, b] = x[j, b] stay[j, b] + sum_k weight[k] a[rel[k], b]
    y[col[k], b]`` over the edges into ``j``. Node mode first writes, per node ``i`` and
    query ``b``, ``y = x / D[i, b]`` (a scratch array; ``D = sum_r C[i, r] a[r, b]`` over
    the node's relation list, accumulated in ``out[i]``; 0 where ``D <= min_mass``) and
    the share that stays into ``out`` (with ``keep``, all of ``x`` where the node has no
    out-mass); otherwise ``y`` is ``x`` and, with ``keep``, the share that stays is the
    weight of the relations ``j`` lacks, ``asum[b] - sum_{r in j} a[r, b]``."""
    rowptr, col, rel, weight = edges
    rel_ptr, rel_ids, rel_degree = degrees
    node_mode, keep, min_mass = mode
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


@inline
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


@parallel
def typed_step_backward(edges, degrees, mode, a, asum, x, g, grad_x, parts, totals):
    """The gradients of :func:`typed_step` in one pass over the edges by source (``col``:
    their targets), recomputing each source's scale and staying share from ``x`` and
    ``a``: ``grad_x`` ``[N, B]``, and the relation weights' gradient as per-chunk parts
    ``parts`` ``[chunks, R, B]`` plus ``totals`` ``[chunks, B]`` (added to every relation:
    the staying share's ``asum``); the caller sums the chunks."""
    rowptr, col, rel, weight = edges
    rel_ptr, rel_ids, rel_degree = degrees
    node_mode, keep, min_mass = mode
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


@inline
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


@helper
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


@parallel
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


@parallel
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


@parallel
def typed_flow_step(edges, degrees, mode, a, asum, x, src_active, dense, theta, y, out, acc,
                    dst_active):
    """:func:`typed_step` on the rows that can hold mass: ``x`` is read at its active
    rows (``src_active``) only; a row ``j`` of ``out`` is active (``dst_active[j]``) and
    written when an edge leads to it from an active row (whatever its weight) or, with
    ``keep``, when it was active itself; each written row also adds ``theta[b] out[j,
    b]`` into ``acc`` (the hop-weighted sum of the walks). Rows left inactive are not
    written. ``dense``: every row is active (no checks)."""
    rowptr, col, rel, weight = edges
    rel_ptr, rel_ids, rel_degree = degrees
    node_mode, keep, min_mass = mode
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


@parallel
def typed_flow_step_backward(pairs, degrees, mode, a, asum, x, active, grad, theta,
                             theta_next, g_next, has_g, write_g, g_out, parts, totals, dots):
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
    pair_ptr, pair_rel, edge_ptr, col, weight = pairs
    rel_ptr, rel_ids, rel_degree = degrees
    node_mode, keep, min_mass = mode
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


@parallel
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
