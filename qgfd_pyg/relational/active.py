"""The active-row flow: a whole query-conditioned flow in numba's compiled steps, each over the
rows that can hold mass (a large batch of seeds on few nodes that take no gradient, such as a
knowledge-graph batch's one-hot anchors, skips most of its first steps' work)."""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _numba
from .graph import RelationalGraph
from .steps import kernel_graph, kernel_mode


def _flow_forward(x0: Tensor, theta: Tensor, a: Sequence[Tensor], graph: "RelationalGraph",
                  normalization: str, keep: bool, active: Tensor,
                  buffers: Optional[Tuple[Tensor, Tensor, Tensor, Tensor]] = None
                  ) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """The hop-weighted sum of the walks ``sum_k theta[k] x_k`` (``x0`` ``[N, B]``, ``theta``
    ``[T + 1, B]``, ``a``: ``T`` tensors ``[R, B]``) in numba's compiled steps, each over the
    rows that can hold mass: a row is active at step ``t + 1`` when an edge leads to it from
    a row active at ``t`` (whatever its relation's weight), or, with ``keep``, when it was
    active at ``t``; the rows of ``x0`` flagged ``active`` (those with a non-zero entry)
    start. Only the active rows of a walk are written and read: a batch of one-hot anchors on
    a sparse graph skips most of the work of its first steps (WN18RR: 1%, 19%, 51% of the
    rows active at steps 0-2 for 1,024 queries). Returns the sum ``[N, B]``, the walks and
    each walk's active rows (flags ``[N]``); with ``buffers`` (two walks', the normaliser's
    and the sum's, each like ``x0``) the walks are written in turn into the first two and
    only the last is returned."""
    N = x0.size(0)
    node = normalization == "node"
    edges, degrees = kernel_graph(graph, False, normalization, x0.dtype)
    mode = kernel_mode(normalization, keep)
    if buffers is None:
        y = torch.empty_like(x0) if node else x0
        acc = torch.empty_like(x0)
    else:
        y, acc = buffers[2], buffers[3]
    _numba.set_threads()
    k = _numba.routines()
    k.flow_start(x0.numpy(), theta[0].numpy(), active.numpy(), acc.numpy())
    walks, flags = [x0], [active]
    for t, a_t in enumerate(a):
        x = walks[-1]
        out = torch.empty_like(x0) if buffers is None else buffers[t % 2]
        nxt = torch.empty(N, dtype=torch.bool)
        k.typed_flow_step(edges, degrees, mode, a_t.numpy(), a_t.sum(0).numpy(), x.numpy(),
                          active.numpy(), bool(active.all()), theta[t + 1].numpy(),
                          (y if node else x).numpy(), out.numpy(), acc.numpy(), nxt.numpy())
        walks.append(out)
        flags.append(nxt)
        active = nxt
    if buffers is not None:
        walks, flags = walks[-1:], flags[-1:]
    return acc, walks, flags


SPARSE_ROWS = 0.5  # seeds on at most this share of the rows take the active-row flow
SPARSE_MIN_QUERIES = 256  # and batches of at least this many queries (below, its per-edge
# checks cost more than they save: FB15k-237, 5 queries, 9-10 ms a flow against 6.5)


def _sparse_rows(x: Tensor) -> Optional[Tensor]:
    """The flags of ``x``'s rows that hold a non-zero entry if they are at most
    :data:`SPARSE_ROWS` of them, else ``None`` (a row's scan stops at its first: a dense
    ``x`` costs one read per row)."""
    flags = torch.empty(x.size(0), dtype=torch.bool)
    _numba.set_threads()
    _numba.routines().nonzero_rows(x.detach().numpy(), flags.numpy())
    return flags if int(flags.sum()) <= SPARSE_ROWS * x.size(0) else None


class _FusedFlow(torch.autograd.Function):
    """:func:`relational_flow`'s whole flow in numba's compiled steps (:func:`_flow_forward`)
    and its gradients in one compiled pass per step over the active rows' out-edges, which
    also adds the hop weights' gradients (CPU tensors; seeds that take no gradient)."""

    @staticmethod
    def forward(ctx, x0, theta, graph, normalization, keep, active, *a):
        x0, theta = x0.detach().contiguous(), theta.detach().contiguous()
        a = [w.detach().contiguous() for w in a]
        acc, walks, flags = _flow_forward(x0, theta, a, graph, normalization, keep, active)
        ctx.save_for_backward(theta, *walks, *flags, *a)
        ctx.graph, ctx.normalization, ctx.keep, ctx.steps = graph, normalization, keep, len(a)
        return acc

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        T, graph = ctx.steps, ctx.graph
        saved = ctx.saved_tensors
        theta, walks = saved[0], saved[1:T + 2]
        flags, a = saved[T + 2:2 * T + 3], saved[2 * T + 3:]
        grad = grad.contiguous()
        (_, col, _, weight), degrees = kernel_graph(graph, True, ctx.normalization, grad.dtype)
        pairs = graph.pairs
        pairs = (pairs.node_ptr.numpy(), pairs.rel.numpy(), pairs.edge_ptr.numpy(), col, weight)
        mode = kernel_mode(ctx.normalization, ctx.keep)
        x0 = walks[0]
        chunks = max(1, min(torch.get_num_threads(), graph.num_nodes))
        B = x0.size(1)
        parts = x0.new_empty(chunks, graph.num_relations, B)
        totals, dots = x0.new_empty(chunks, B), x0.new_empty(T + 1, chunks, B)
        k = _numba.routines()
        _numba.set_threads()
        k.rows_dot(flags[T].numpy(), grad.numpy(), walks[T].numpy(), dots[T].numpy())
        grad_a: List[Optional[Tensor]] = [None] * T
        g_next, spare = x0.new_empty(0, B), None
        for t in range(T - 1, -1, -1):
            write_g = t > 0  # the seeds take no gradient
            g_out = (spare if spare is not None else torch.empty_like(x0)) if write_g \
                else x0.new_empty(0, B)
            k.typed_flow_step_backward(
                pairs, degrees, mode, a[t].numpy(), a[t].sum(0).numpy(), walks[t].numpy(),
                flags[t].numpy(), grad.numpy(), theta[t].numpy(), theta[t + 1].numpy(),
                g_next.numpy(), t < T - 1, write_g, g_out.numpy(), parts.numpy(),
                totals.numpy(), dots[t].numpy())
            grad_a[t] = parts.sum(0) + totals.sum(0, keepdim=True)
            spare = g_next if g_next.numel() else None
            g_next = g_out
        return (None, dots.sum(1), None, None, None, None, *grad_a)


