"""Edge-wise attention operations that never hold an [E, H, C] tensor.

Graph attention written with gathers (``q[dst] * k[src]``, ``p[e] * z[src]``) materialises one
``[E, H, C]`` tensor per gather and keeps it for the backward pass: 16 GB each at
ogbn-products' size (62M edges, 4 heads x 16). These two autograd functions save only their
inputs, so the extra memory is ``O(E H)``. On the CPU with numba installed they run as
compiled segment loops over the edges grouped by target (or by source, for the gradients that flow
back to the sources), with no scatter; otherwise as gathers and ``index_add_`` over chunks of
edges.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.utils import scatter, softmax

from . import _numba


class EdgeLayout:
    """Edges ``(src, dst)`` of ``num_nodes`` nodes, with their grouping by target and by
    source (``ptr``, ``perm``: the edges of node ``i`` are ``perm[ptr[i]:ptr[i + 1]]``),
    computed on first use and kept; reuse one layout for a fixed graph. ``dst_ptr``: the edges
    are sorted by target and these are their offsets (trusted)."""

    def __init__(self, src: Tensor, dst: Tensor, num_nodes: int,
                 dst_ptr: Optional[Tensor] = None):
        self.src, self.dst, self.num_nodes = src, dst, num_nodes
        self._groups = {}
        self._sorted_dst = dst_ptr is not None
        if dst_ptr is not None:
            self._groups["dst"] = (dst_ptr, torch.arange(dst.numel(), device=dst.device),
                                   src.contiguous())

    def _offsets(self, index: Tensor) -> Tensor:
        """Where each node's group starts among the edges sorted by ``index``."""
        ptr = torch.zeros(self.num_nodes + 1, dtype=torch.long, device=index.device)
        torch.cumsum(torch.bincount(index, minlength=self.num_nodes), 0, out=ptr[1:])
        return ptr

    @property
    def fast_groups(self) -> bool:
        """Whether grouping by source is a compiled counting sort (no comparison sort)."""
        return self.src.device.type == "cpu" and _numba.routines() is not None

    def groups(self, by: str) -> Tuple[Tensor, Tensor, Tensor]:
        """``(ptr, perm, other)``: the edges of node ``i`` by their ``by`` end (``"dst"`` or
        ``"src"``) are ``perm[ptr[i]:ptr[i + 1]]`` (in their order within the edges), and
        ``other[ptr[i]:ptr[i + 1]]`` their other ends."""
        if by not in self._groups:
            index, other = (self.dst, self.src) if by == "dst" else (self.src, self.dst)
            if index.numel() < 2 or bool((index[1:] >= index[:-1]).all()):
                ptr = self._offsets(index)
                perm = torch.arange(index.numel(), device=index.device)
                self._sorted_dst = self._sorted_dst or by == "dst"
            elif self.fast_groups:  # one compiled counting sort
                ptr, perm, other = (torch.from_numpy(a) for a in _numba.routines().group_by(
                    index.contiguous().numpy(), other.contiguous().numpy(), self.num_nodes))
            else:
                ptr = self._offsets(index)
                perm = torch.argsort(index, stable=True)
                other = other[perm]
            self._groups[by] = (ptr, perm, other.contiguous())
        return self._groups[by]

    def aggregate(self, by: str, w: Tensor, z: Tensor) -> Tensor:
        """``out[i, h] = sum_e w[e, h] z[other(e), h]`` over the edges whose ``by`` end is
        ``i`` (compiled numba routine)."""
        ptr, perm, other = self.groups(by)
        z = z.detach().contiguous()
        out = torch.empty((self.num_nodes,) + tuple(z.shape[1:]), dtype=z.dtype)
        _numba.set_threads()
        _numba.routines().segment_aggregate(ptr.numpy(), perm.numpy(), other.numpy(),
                                           w.detach().contiguous().numpy(), z.numpy(),
                                           out.numpy())
        return out

    @property
    def sorted_by_dst(self) -> bool:
        """Whether the edges are sorted by target (their groups by target are contiguous)."""
        return bool(self.groups("dst")[1].numel() == 0 or self._sorted_dst)

    def softmax(self, score: Tensor) -> Tensor:
        """Softmax of ``score[e, h]`` over the edges into each target, for edges sorted by
        target (compiled numba routine)."""
        out = torch.empty_like(score)
        _numba.set_threads()
        _numba.routines().segment_softmax(self.groups("dst")[0].numpy(),
                                         score.detach().contiguous().numpy(), out.numpy())
        return out

    def softmax_backward(self, prob: Tensor, grad: Tensor) -> Tensor:
        """The gradient of :meth:`softmax`'s scores from its output ``prob`` and ``grad``."""
        out = torch.empty_like(prob)
        _numba.set_threads()
        _numba.routines().segment_softmax_backward(self.groups("dst")[0].numpy(),
                                                  prob.detach().contiguous().numpy(),
                                                  grad.contiguous().numpy(), out.numpy())
        return out

    def dot(self, a: Tensor, b: Tensor) -> Tensor:
        """``out[e, h] = <a[dst[e], h], b[src[e], h]>`` (compiled numba routine)."""
        out = torch.empty(self.src.numel(), a.size(1), dtype=a.dtype)
        _numba.set_threads()
        _numba.routines().edge_dot(self.dst.numpy(), self.src.numpy(),
                                  a.detach().contiguous().numpy(),
                                  b.detach().contiguous().numpy(), out.numpy())
        return out


def _fast(layout: Optional[EdgeLayout], *tensors: Tensor) -> bool:
    return layout is not None and _numba.usable(*[t.detach() for t in tensors])


CHUNK_ELEMENTS = 2**24  # elements of the [chunk, H, C] temporaries of the gather path


def _chunk(width: int, chunk_elements: Optional[int]) -> int:
    """Edges per chunk so that one chunk's temporaries hold about ``chunk_elements`` numbers
    (``None``: :data:`CHUNK_ELEMENTS`)."""
    if chunk_elements is None:
        chunk_elements = CHUNK_ELEMENTS
    if isinstance(chunk_elements, bool) or int(chunk_elements) != chunk_elements \
            or chunk_elements < 1:
        raise ValueError(f"chunk_elements must be a positive integer (got {chunk_elements!r})")
    return max(1, int(chunk_elements) // max(width, 1))


class EdgeDot(torch.autograd.Function):
    """``out[e, h] = <q[dst[e], h], k[src[e], h]>`` (a sampled dense-dense product)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, src: Tensor, dst: Tensor, chunk: int,
                layout: Optional[EdgeLayout]) -> Tensor:
        ctx.save_for_backward(q, k, src, dst)
        ctx.chunk, ctx.layout = chunk, layout if _fast(layout, q, k) else None
        if ctx.layout is not None:
            return layout.dot(q, k)
        parts = [(q[dst[e]] * k[src[e]]).sum(-1)
                 for e in (slice(s, s + chunk) for s in range(0, src.numel(), chunk))]
        if len(parts) == 1:
            return parts[0]
        return torch.cat(parts) if parts else q.new_empty(0, q.size(1))

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k, src, dst = ctx.saved_tensors
        layout, grad = ctx.layout, grad.contiguous()
        if layout is not None and _numba.usable(grad):
            return (layout.aggregate("dst", grad, k) if ctx.needs_input_grad[0] else None,
                    layout.aggregate("src", grad, q) if ctx.needs_input_grad[1] else None,
                    None, None, None, None)
        grad_q = torch.zeros_like(q) if ctx.needs_input_grad[0] else None
        grad_k = torch.zeros_like(k) if ctx.needs_input_grad[1] else None
        for s in range(0, src.numel(), ctx.chunk):
            e = slice(s, s + ctx.chunk)
            g = grad[e].unsqueeze(-1)
            if grad_q is not None:
                grad_q.index_add_(0, dst[e], g * k[src[e]])
            if grad_k is not None:
                grad_k.index_add_(0, src[e], g * q[dst[e]])
        return grad_q, grad_k, None, None, None, None


class EdgeAggregate(torch.autograd.Function):
    """``out[i, h] = sum_{e: dst[e] = i} w[e, h] * z[src[e], h]`` (a weighted SpMM per head)."""

    @staticmethod
    def forward(ctx, w: Tensor, z: Tensor, src: Tensor, dst: Tensor, num_nodes: int,
                chunk: int, layout: Optional[EdgeLayout]) -> Tensor:
        ctx.save_for_backward(w, z, src, dst)
        ctx.chunk, ctx.layout = chunk, layout if _fast(layout, w, z) else None
        if ctx.layout is not None:
            return layout.aggregate("dst", w, z)
        out = z.new_zeros((num_nodes,) + tuple(z.shape[1:]))
        # torch.compile (torch 2.11) loses the gradients of an autograd.Function whose
        # forward writes in place into a tensor it returns: a new tensor per chunk there
        fresh = torch.compiler.is_compiling()
        for s in range(0, src.numel(), chunk):
            e = slice(s, s + chunk)
            add = w[e].unsqueeze(-1) * z[src[e]]
            out = out.index_add(0, dst[e], add) if fresh else out.index_add_(0, dst[e], add)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        w, z, src, dst = ctx.saved_tensors
        layout, grad = ctx.layout, grad.contiguous()
        if layout is not None and _numba.usable(grad):
            return (layout.dot(grad, z) if ctx.needs_input_grad[0] else None,
                    layout.aggregate("src", w, grad) if ctx.needs_input_grad[1] else None,
                    None, None, None, None, None)
        grad_w = torch.empty_like(w) if ctx.needs_input_grad[0] else None
        grad_z = torch.zeros_like(z) if ctx.needs_input_grad[1] else None
        for s in range(0, src.numel(), ctx.chunk):
            e = slice(s, s + ctx.chunk)
            g = grad[dst[e]]
            if grad_w is not None:
                grad_w[e] = (g * z[src[e]]).sum(-1)
            if grad_z is not None:
                grad_z.index_add_(0, src[e], w[e].unsqueeze(-1) * g)
        return grad_w, grad_z, None, None, None, None, None


class EdgeSoftmax(torch.autograd.Function):
    """``out[e, h] = exp(s[e, h]) / sum_{e': dst[e'] = dst[e]} exp(s[e', h])`` with the numba
    routines, for edges sorted by target (PyG's ``softmax`` on the other paths)."""

    @staticmethod
    def forward(ctx, score: Tensor, layout: EdgeLayout) -> Tensor:
        prob = layout.softmax(score)
        ctx.save_for_backward(prob)
        ctx.layout = layout
        return prob

    @staticmethod
    def backward(ctx, grad: Tensor):
        prob, = ctx.saved_tensors
        if torch.is_grad_enabled() or not _numba.usable(grad):  # differentiable: torch ops
            dst = ctx.layout.dst
            dot = scatter(prob * grad, dst, 0, dim_size=ctx.layout.num_nodes, reduce="sum")
            return prob * (grad - dot[dst]), None
        return ctx.layout.softmax_backward(prob, grad), None


def edge_softmax(score: Tensor, dst: Tensor, num_nodes: int,
                 layout: Optional[EdgeLayout] = None) -> Tensor:
    """Softmax of ``score`` ``[E, H]`` over the edges that share a target ``dst``;
    ``layout`` (an :class:`EdgeLayout` of the same edges) enables the numba routines."""
    if torch.compiler.is_compiling():  # traced: torch ops only
        return softmax(score, dst, num_nodes=num_nodes)
    if _fast(layout, score) and layout.sorted_by_dst:
        return EdgeSoftmax.apply(score, layout)
    return softmax(score, dst, num_nodes=num_nodes)


def edge_dot(q: Tensor, k: Tensor, src: Tensor, dst: Tensor,
             chunk_elements: Optional[int] = None, layout: Optional[EdgeLayout] = None) -> Tensor:
    """Per-edge, per-head dot products of queries ``[N, H, C]`` at ``dst`` and keys at ``src``:
    ``[E, H]``. ``layout`` (an :class:`EdgeLayout` of the same edges) enables the numba
    routines. Under ``torch.compile`` a gather and a product, which the compiler fuses."""
    if torch.compiler.is_compiling():
        return (q[dst] * k[src]).sum(-1)
    return EdgeDot.apply(q, k, src, dst, _chunk(q.shape[1:].numel(), chunk_elements), layout)


def edge_aggregate(weight: Tensor, z: Tensor, src: Tensor, dst: Tensor, num_nodes: int,
                   chunk_elements: Optional[int] = None,
                   layout: Optional[EdgeLayout] = None) -> Tensor:
    """Sums ``weight[e, h] * z[src[e], h]`` into ``dst[e]``: ``[num_nodes, H, C]``.
    ``chunk_elements`` bounds the temporaries of the gather path (``None``: the default).
    Under ``torch.compile`` one gather and one ``index_add``, which the compiler fuses."""
    if torch.compiler.is_compiling():
        return z.new_zeros((num_nodes,) + tuple(z.shape[1:])).index_add(
            0, dst, weight.unsqueeze(-1).to(z.dtype) * z[src])
    return EdgeAggregate.apply(weight, z, src, dst, num_nodes,
                               _chunk(z.shape[1:].numel(), chunk_elements), layout)
