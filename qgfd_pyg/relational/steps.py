"""One step :math:`x P_t(q)` of a query-conditioned flow, in the node-major layout (``x``
``[N, B]``, one column per query), and the autograd functions behind it: numba's compiled step
(:class:`_FusedStep`, CPU), the torch path over the (source, relation) pairs
(:class:`_TypedProduct`, optionally Triton's kernels), and the one-matrix step of queries that
share their relation weights (:func:`shared_step`)."""
import warnings
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import _numba
from ..spmm import csr_product, scratch_buffers
from .backend import use_triton
from .graph import RelationalGraph

CHUNK_ELEMENTS = 2**24  # [pairs, columns] elements per chunk on the torch path, at least
PAIR_MEMORY = 4.0  # or this many times the [N, B] state's, if that is more
NORMALIZATIONS = ("node", "relation", "none")
MIN_MASS = 1e-12  # out-mass D below this counts as none (normalization="node")
TILED_TRANSPOSE_MIN = 128  # short side from which numba's tiles beat torch's copy


def kernel_graph(graph: RelationalGraph, transpose: bool, normalization: str,
                 dtype: torch.dtype) -> Tuple[tuple, tuple]:
    """The graph as numba's typed steps take it (numpy views, values in ``dtype``): ``edges``
    ``(rowptr, col, rel, weight)`` by target (by source with ``transpose``; weights divided by
    their source's out-weight under their relation for ``normalization="relation"``) and
    ``degrees`` ``(rel_ptr, rel_ids, rel_degree)``."""
    rowptr, col, rel, weight = graph.edges(transpose, normalization == "relation")
    return ((rowptr.numpy(), col.numpy(), rel.numpy(), weight.to(dtype).numpy()),
            (graph.rel_ptr.numpy(), graph.rel_ids.numpy(), graph.rel_degree.to(dtype).numpy()))


def kernel_mode(normalization: str, keep: bool) -> Tuple[bool, bool, float]:
    """``(node_mode, keep, min_mass)`` for numba's typed steps."""
    return normalization == "node", bool(keep), MIN_MASS


def _transpose(x: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """``x.t().contiguous()`` for a 2-D ``x`` (into ``out`` if given); on the CPU with numba,
    where the short side is at least :data:`TILED_TRANSPOSE_MIN`, in compiled tiles (2 threads:
    1.3x torch's strided copy at [40,943, 256], 1.4-2.2x at 1,024; 0.8x at 64, where torch's
    copy is kept)."""
    out = x.new_empty(x.size(1), x.size(0)) if out is None else out
    if min(x.shape) >= TILED_TRANSPOSE_MIN and _numba.usable(x.detach(), out.detach()) \
            and x.dtype == out.dtype:
        _numba.set_threads()
        _numba.routines().transpose(x.detach().numpy(), out.detach().numpy())
        return out
    return out.copy_(x.t())


class _Transposed(torch.autograd.Function):
    """``x.t().contiguous()`` whose gradient is contiguous as well. (Autograd's own passes back
    a transposed view, and every elementwise product of the backward over ``[N, B]`` then
    strides across memory: 4-6x slower, most of a knowledge-graph batch's time.)"""

    @staticmethod
    def forward(ctx, x):
        return _transpose(x)

    @staticmethod
    def backward(ctx, grad):
        return _transpose(grad)


def _column_chunks(num_pairs: int, x: Tensor) -> List[slice]:
    """Slices of the queries (columns of ``x`` ``[N, B]``) whose ``[pairs, columns]``
    temporaries hold at most ``PAIR_MEMORY`` times ``x``'s elements (or
    :data:`CHUNK_ELEMENTS`, if more): the torch path's memory stays ``O(B N)``."""
    limit = max(CHUNK_ELEMENTS, int(PAIR_MEMORY * x.numel()))
    step = max(1, limit // max(1, num_pairs))
    return [slice(s, s + step) for s in range(0, x.size(1), step)]


def _into(out: Optional[Tensor], part: Tensor, cols: slice, whole: bool) -> Tensor:
    """``part`` as the result (one chunk), or copied into its columns of ``out``."""
    if whole:
        return part
    out[:, cols] = part
    return out


class _TypedProduct(torch.autograd.Function):
    """(The torch path.) ``y[j, b] = sum_{e: i -> j} w_e a[r_e, b] x[i, b]`` for ``x``
    ``[N, B]`` and ``a`` ``[R, B]``: each (source, relation) pair's value
    ``a[r, b] x[i, b]`` (two gathers over the pairs), then one sparse product over the edges
    (torch's CSR product, cuSPARSE on GPUs). Backward: the pairs' gradients ``sum_{e in
    pair} w_e g[j_e, b]`` (one product over the edges by source), summed per source (for
    ``x``, weighed by ``a``) and per relation (for ``a``, weighed by ``x``) by two products
    over the pairs. Queries go in column chunks (:func:`_column_chunks`); once
    differentiable. With :func:`set_flow_backend` ``("triton")`` the product and the
    gradients come from :mod:`qgfd_pyg.relational.triton_kernels`'s kernels instead (only
    the relation weights' sums per relation stay a CSR product)."""

    @staticmethod
    def forward(ctx, x, a, graph, per_relation):
        x, a = x.detach().contiguous(), a.detach().contiguous()
        ctx.save_for_backward(x, a)
        ctx.graph, ctx.per_relation = graph, per_relation
        if use_triton(x):
            from .triton_kernels import typed_product
            return typed_product(*graph.edges(False, per_relation), a, x)
        pairs, weight = graph.pairs, graph.edges(False, per_relation)[3].to(x.dtype)
        chunks = _column_chunks(pairs.node.numel(), x)
        out = None if len(chunks) == 1 else torch.empty_like(x)
        for cols in chunks:
            value = x[:, cols].index_select(0, pairs.node)
            value.mul_(a[:, cols].index_select(0, pairs.rel))
            out = _into(out, csr_product(graph.rowptr_in, pairs.of_in_edge, weight, value),
                        cols, len(chunks) == 1)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, a = ctx.saved_tensors
        graph, grad = ctx.graph, grad.contiguous()
        pairs = graph.pairs
        _, col, _, weight = graph.edges(True, ctx.per_relation)
        ones = pairs.ones.to(x.dtype)
        chunks = _column_chunks(pairs.node.numel(), x)
        whole = len(chunks) == 1
        grad_x = None if whole or not ctx.needs_input_grad[0] else torch.empty_like(x)
        grad_a = None if whole or not ctx.needs_input_grad[1] else torch.empty_like(a)
        if use_triton(x):
            from .triton_kernels import typed_product_backward
            grad_x, parts = typed_product_backward(pairs, col, weight, a, x, grad, chunks)
            grad_a = None if whole else torch.empty_like(a)
            for cols, part in zip(chunks, parts, strict=True):
                grad_a = _into(grad_a, csr_product(pairs.rel_ptr, pairs.by_rel, ones, part),
                               cols, whole)
            return grad_x, grad_a, None, None
        for cols in chunks:
            moved = csr_product(pairs.edge_ptr, col, weight.to(x.dtype), grad[:, cols])
            if ctx.needs_input_grad[0]:
                part = moved * a[:, cols].index_select(0, pairs.rel)
                grad_x = _into(grad_x, csr_product(pairs.node_ptr, pairs.index, ones, part),
                               cols, whole)
            if ctx.needs_input_grad[1]:  # summed per relation: pairs by relation as columns
                part = moved.mul_(x[:, cols].index_select(0, pairs.node))
                grad_a = _into(grad_a, csr_product(pairs.rel_ptr, pairs.by_rel, ones, part),
                               cols, whole)
        return grad_x, grad_a, None, None


def _edge_dot(graph: RelationalGraph, g: Tensor, x: Tensor) -> Tensor:
    """``out[k] = <g[target_k], x[source_k]>`` over the edges in CSR order by target, by
    torch's sampled product (cuSPARSE's SDDMM on GPUs): no ``[E, B]`` gathers."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(graph.rowptr_in, graph.col_in,
                                          torch.ones_like(graph.col_in, dtype=x.dtype),
                                          (graph.num_nodes, graph.num_nodes),
                                          check_invariants=False)
        return torch.sparse.sampled_addmm(pattern, g, x.t(), beta=0.0).values()


class _ValuedProduct(torch.autograd.Function):
    """``y[j] = sum_{k: i -> j} v_k x[i]`` with one value per edge (CSR order by target), as
    one sparse product; gradients w.r.t. ``x`` (the product over the reversed edges) and
    ``v`` (per edge, :func:`_edge_dot`). The step of a flow whose queries share their
    relation weights."""

    @staticmethod
    def forward(ctx, x, value, graph):
        x, value = x.detach().contiguous(), value.detach().contiguous()
        ctx.save_for_backward(x, value)
        ctx.graph = graph
        return csr_product(graph.rowptr_in, graph.col_in, value, x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, value = ctx.saved_tensors
        graph, grad = ctx.graph, grad.contiguous()
        grad_x = csr_product(graph.rowptr_out, graph.col_out, value[graph.in_to_out], grad) \
            if ctx.needs_input_grad[0] else None
        grad_v = _edge_dot(graph, grad, x) if ctx.needs_input_grad[1] else None
        return grad_x, grad_v, None


def shared_step(graph: RelationalGraph, x: Tensor, a: Tensor, normalization: str = "node",
                dangling: str = "keep") -> Tensor:
    r"""One step :math:`x P(a)` for queries that share their relation weights ``a`` ``[R]``
    (``x`` ``[N, B]``): :math:`P(a)` is then one matrix, its entries
    :math:`a_{r_e} w_e / D_i` (per relation: :math:`a_{r_e} w_e / C_{r_e, i}`) computed
    per edge, and the step is one sparse product (torch's CSR product; cuSPARSE on GPUs)
    plus what stays (added in place). :func:`relational_flow` takes it where numba's fused
    step does not run: on the CPU that step, one pass per query, is faster forward and
    backward (``benchmarks/results/perf_flow.md``)."""
    _, col, rel, weight = graph.edges(False, normalization == "relation")
    value = weight.to(a.dtype) * a[rel]
    stay = None
    if normalization == "node":  # D = C a: the edges' weights under a, summed at their sources
        degree = value.new_zeros(graph.num_nodes).index_add(0, col, value)
        has_mass = degree > MIN_MASS
        inverse = torch.where(has_mass, 1.0 / torch.where(has_mass, degree,
                                                          torch.ones_like(degree)),
                              torch.zeros_like(degree))
        stay = (~has_mass).to(a.dtype)
        value = value * inverse[col]
    elif dangling == "keep":  # the weight of the relations a node has no edge of
        stay = a.sum() - a.new_zeros(graph.num_nodes).index_add(0, graph.rel_nodes,
                                                                a[graph.rel_ids])
    moved = _ValuedProduct.apply(x, value, graph)
    return moved if dangling == "drop" else moved.addcmul_(stay.view(-1, 1), x)


class _FusedStep(torch.autograd.Function):
    """:func:`relational_step` in the compiled routines: the normaliser and the product in two
    passes over the nodes and edges, the gradients w.r.t. ``x`` and ``a`` in one pass over
    the edges by source, which recomputes the normaliser (only ``x`` and ``a`` are kept;
    CPU tensors, numba)."""

    @staticmethod
    def forward(ctx, x, a, graph, normalization, keep):
        x, a = x.detach().contiguous(), a.detach().contiguous()
        ctx.save_for_backward(x, a)
        ctx.graph, ctx.normalization, ctx.keep = graph, normalization, keep
        return _FusedStep.run(x, a, graph, normalization, keep, torch.empty_like(x))

    @staticmethod
    def run(x: Tensor, a: Tensor, graph: "RelationalGraph", normalization: str, keep: bool,
            out: Tensor, scratch: Optional[Tensor] = None) -> Tensor:
        """The step into ``out`` (``[N, B]`` like ``x``, not ``x`` itself), no autograd;
        ``scratch``: a third such buffer for the node normaliser (default: the pool's)."""
        node = normalization == "node"
        y = (scratch_buffers(x, 1)[0] if scratch is None else scratch) if node else x
        if x.numel():
            edges, degrees = kernel_graph(graph, False, normalization, x.dtype)
            _numba.set_threads()
            _numba.routines().typed_step(edges, degrees, kernel_mode(normalization, keep),
                                         a.numpy(), a.sum(0).numpy(), x.numpy(), y.numpy(),
                                         out.numpy())
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, a = ctx.saved_tensors
        graph = ctx.graph
        grad = grad.contiguous()
        chunks = max(1, min(torch.get_num_threads(), graph.num_nodes))
        grad_x = torch.empty_like(x)
        parts = x.new_empty(chunks, graph.num_relations, x.size(1))
        totals = x.new_empty(chunks, x.size(1))
        if x.numel():
            edges, degrees = kernel_graph(graph, True, ctx.normalization, x.dtype)
            _numba.set_threads()
            _numba.routines().typed_step_backward(
                edges, degrees, kernel_mode(ctx.normalization, ctx.keep), a.numpy(),
                a.sum(0).numpy(), x.numpy(), grad.numpy(), grad_x.numpy(), parts.numpy(),
                totals.numpy())
            grad_a = parts.sum(0) + totals.sum(0, keepdim=True)
        else:
            grad_a = torch.zeros_like(a)
        return (grad_x if ctx.needs_input_grad[0] else None,
                grad_a if ctx.needs_input_grad[1] else None, None, None, None)


def _times(C: Tensor, a: Tensor) -> Tensor:
    """``C @ a`` for a dense or sparse ``C`` ``[N, R]``."""
    return torch.sparse.mm(C.to(a.dtype), a) if C.is_sparse else C.to(a.dtype) @ a


def relational_step(graph: RelationalGraph, x: Tensor, a: Tensor,
                    normalization: str = "node", dangling: str = "keep") -> Tensor:
    r"""One step :math:`x P(a)` in the node-major layout: ``x`` ``[N, B]`` (one column per
    query), relation weights ``a`` ``[R, B]`` (see :func:`relational_flow` for
    ``normalization`` and ``dangling``)."""
    if _numba.usable(x.detach(), a.detach()) and x.dtype == a.dtype:
        return _FusedStep.apply(x, a, graph, normalization, dangling == "keep")
    if normalization == "node":
        degree = _times(graph.degree, a)  # D: [N, B]
        has_mass = degree > MIN_MASS  # 1 / D and its gradient -1 / D^2 stay finite
        inverse = torch.where(has_mass, 1.0 / torch.where(has_mass, degree,
                                                          torch.ones_like(degree)),
                              torch.zeros_like(degree))
        moved = _TypedProduct.apply(x * inverse, a, graph, False)
        if dangling == "drop":
            return moved
        return moved + torch.where(has_mass, torch.zeros_like(x), x)
    moved = _TypedProduct.apply(x, a, graph, normalization == "relation")
    if dangling == "drop":
        return moved
    return moved + x * (a.sum(0, keepdim=True) - _times(graph.has_relation, a))




def traced_step(graph: RelationalGraph, x: Tensor, a: Tensor, normalization: str = "node",
                dangling: str = "keep") -> Tensor:
    """:func:`relational_step` in torch ops that ``torch.compile`` traces (one gather and one
    ``index_add`` over the edges, ``[E, B]`` temporaries the compiler may fuse away; the
    normaliser over the graph's (node, relation) pairs)."""
    N, dtype = graph.num_nodes, x.dtype
    _, src, rel, weight = graph.edges(False, normalization == "relation")
    pairs = a.index_select(0, graph.rel_ids)  # [pairs, B]: each (node, relation)'s weight
    if normalization == "node":
        degree = x.new_zeros(N, x.size(1)).index_add(
            0, graph.rel_nodes, graph.rel_degree.to(dtype).unsqueeze(-1) * pairs)
        has_mass = degree > MIN_MASS
        x_in = x * torch.where(has_mass, 1.0 / torch.where(has_mass, degree,
                                                             torch.ones_like(degree)),
                               torch.zeros_like(degree))
    else:
        x_in = x
    moved = torch.zeros_like(x).index_add(
        0, graph.row_in, weight.to(dtype).unsqueeze(-1) * a.index_select(0, rel)
        * x_in.index_select(0, src))
    if dangling == "drop":
        return moved
    if normalization == "node":
        return moved + torch.where(has_mass, torch.zeros_like(x), x)
    present = x.new_zeros(N, x.size(1)).index_add(0, graph.rel_nodes, pairs)
    return moved + x * (a.sum(0, keepdim=True) - present)
