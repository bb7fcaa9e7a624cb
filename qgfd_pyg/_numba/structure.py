"""Compiled structure builds: a graph's unique entries by counting sorts, and the values of its
transition (qgfd_pyg.structure)."""
import numba
import numpy as np

from .jit import parallel, serial

__all__ = ["transition_values", "group_by", "unique_pairs"]


@parallel
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


@serial
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


@serial
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


@parallel
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
