r"""Query-conditioned flows over a typed graph: every query chooses its own transition at
every step.

On a graph whose edges carry a type (a relation) ``r`` with adjacency :math:`A_r`, a batch
of :math:`B` queries diffuses seeds :math:`p_0 \in \mathbb{R}^{B \times N}`, each query
:math:`q` at step :math:`t` over its own mixture of the relations,

.. math::
    P_t(q) = D_t(q)^{-1} \sum_r a_t(q, r) A_r, \qquad
    D_t(q) = \mathrm{diag}\Big(\sum_r a_t(q, r)\, C_{r}\Big),

with :math:`C_r` the (weighted) out-degrees under relation :math:`r`. A node with no out-mass
under the query's weighting (:math:`D_t(q)_{ii} = 0`: no out-edges, or only edges of
relations the query gives weight 0; in practice below ``1e-12``, so that :math:`1/D` and its
gradient stay finite) keeps its mass for that step, as if it had a self loop (or loses it,
``dangling="drop"``); a query whose weights are all zero at a step therefore stands still.
Two other normalisations are offered: each relation's walk on its own, mixed by
:math:`a_t(q)`, and none (walk counts); see :func:`relational_flow`.

The output is the hop-weighted sum of walks that follow the steps' transitions in order,

.. math::
    p_T = \sum_{k=0}^{T} \theta_k\, p_0 P_0(q) P_1(q) \cdots P_{k-1}(q),

GPR-GNN's form. With PageRank weights :math:`\theta_k = (1-\alpha)\alpha^k` (:math:`k < T`)
and :math:`\theta_T = \alpha^T` it is exactly
:math:`p_{t+1} = (1 - \alpha) p_0 + \alpha\, p_t P` when every step has the same
transition. With different transitions the two readings differ: the recursion restarts
walks at later steps (its one-step term is :math:`p_0 P_{T-1}`), so it cannot say "follow
:math:`r_1`, then :math:`r_2`"; the walk form can, and is the one used here.

Cost: a step is one pass over the edges for all :math:`B` queries, :math:`O(B \cdot E)` time,
plus the normaliser :math:`C^\top a_t` (over each node's own relations, :math:`O(B \cdot
\mathrm{nnz}(C))`); memory :math:`O(B \cdot N)` per step. No ``[B, E]`` or ``[B, N, N]``
tensor is formed. On the CPU with numba the whole flow is compiled passes: per step the
normaliser, then the product over the edges into each node with the staying share, which
also adds the step's hop-weighted share to the sum; its backward one pass per step over the
edges out of each node, by (source, relation) pair, recomputing the normaliser, for the
gradients of the walk, the relation weights and the hop weights together. A step reads and
writes only the rows that can hold mass (those an edge reaches from the previous step's, or
that keep their own) when a batch of at least 256 seeds that need no gradient sits on at
most half of the rows, such as a knowledge-graph batch's one-hot anchors: its first steps
skip most of their work (a WN18RR training batch 2x faster); dense seeds, small batches and
seeds that need a gradient take the same compiled steps one at a time, without the checks
(cheaper there). Otherwise (GPUs, no numba) torch ops:
each (source, relation) pair's value weighed by the query's weight of the relation (gathers
over the ``P <= E`` pairs), then one torch CSR product over the edges; its backward one
product over the edges by source and two over the pairs (queries in column chunks whose
``[P, columns]`` temporaries stay within the ``[N, B]`` state's size). Where every query
of the batch shares a step's relation weights (a knowledge-graph batch of one query
relation) and numba's step does not run (GPUs), the step's transition is one matrix whose
entries are computed per edge, and the step is one torch CSR product, its backward the
product by the transpose and a sampled product (SDDMM) for the entries' gradients.
"""
import importlib.util
import os
import warnings
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _numba
from ._checks import (check_alpha, check_choice, check_edge_index, check_edge_weight,
                      check_values,
                      check_steps)
from .diffusion import ppr_hop_weights
from .spmm import csr_product, scratch_buffers

CHUNK_ELEMENTS = 2**24  # [pairs, columns] elements per chunk on the torch path, at least
PAIR_MEMORY = 4.0  # or this many times the [N, B] state's, if that is more
NORMALIZATIONS = ("node", "relation", "none")
MIN_MASS = 1e-12  # out-mass D below this counts as none (normalization="node")
DENSE_DEGREE_RELATIONS = 64  # above this many relations the degrees C are a sparse matrix


def _csr_order(row: Tensor, num_nodes: int) -> Tuple[Tensor, Tensor]:
    """(rowptr, perm): edges sorted by ``row`` (stable), and the offsets of each row."""
    perm = torch.argsort(row, stable=True)
    counts = torch.bincount(row, minlength=num_nodes)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)]), perm


class _Pairs(NamedTuple):
    """The graph's (source, relation) pairs that have edges, by source then relation: the
    torch path's per-query step first weighs each pair's source value by the query's weight
    of its relation, then sums the pairs' edges into their targets (one sparse product over
    the edges)."""
    node: Tensor  # [P] each pair's source
    rel: Tensor  # [P] and relation
    edge_ptr: Tensor  # [P + 1] a pair's edges in the by-source order
    of_in_edge: Tensor  # [E] the pair of each edge in the by-target order
    node_ptr: Tensor  # [N + 1] a node's pairs
    rel_ptr: Tensor  # [R + 1] and a relation's, in by_rel
    by_rel: Tensor  # [P] the pairs sorted by relation
    index: Tensor  # [P] 0 .. P - 1
    ones: Tensor  # [P]

    @staticmethod
    def build(out_slots: Tensor, place: Tensor, perm_out: Tensor, num_nodes: int,
              num_relations: int) -> "_Pairs":
        """From the slots ``source * R + relation`` of the edges in the by-source order,
        each edge's place in the by-target order, and that order."""
        slots, of_out_edge, counts = torch.unique_consecutive(
            out_slots, return_inverse=True, return_counts=True)
        of_edge = torch.empty_like(of_out_edge)
        of_edge[perm_out] = of_out_edge
        of_in_edge = torch.empty_like(of_out_edge)
        of_in_edge[place] = of_edge
        node, rel = slots // num_relations, slots % num_relations

        def offsets(values: Tensor, size: int) -> Tensor:
            return torch.cat([values.new_zeros(1),
                              torch.bincount(values, minlength=size).cumsum(0)])
        index = torch.arange(slots.numel(), device=slots.device)
        return _Pairs(node, rel, torch.cat([counts.new_zeros(1), counts.cumsum(0)]),
                      of_in_edge, offsets(node, num_nodes), offsets(rel, num_relations),
                      torch.argsort(rel, stable=True), index,
                      torch.ones(slots.numel(), device=slots.device))


class RelationalGraph:
    r"""A typed graph prepared for :func:`relational_flow`: its edges in CSR order by target
    (the forward product) and by source (the backward one), and the out-degrees per relation
    :math:`C` ``[N, R]``. Built once per graph; :meth:`masked` zeroes a set of edges (e.g. a
    training batch's own edges) without sorting again.

    Args:
        edge_index (torch.Tensor): edges ``[2, E]``, source first (mass flows source ->
            target). Repeated edges add up.
        edge_type (torch.Tensor): relation of each edge ``[E]``, in ``[0, num_relations)``.
        num_relations (int): number of relations :math:`R`.
        num_nodes (int, optional): number of nodes :math:`N` (default: ``max(edge_index) + 1``).
        edge_weight (torch.Tensor, optional): non-negative edge weights ``[E]``
            (default: ``None``, all ones).
    """

    def __init__(self, edge_index: Tensor, edge_type: Tensor, num_relations: int,
                 num_nodes: Optional[int] = None, edge_weight: Optional[Tensor] = None):
        if isinstance(num_relations, bool) or int(num_relations) != num_relations \
                or num_relations < 1:
            raise ValueError(f"num_relations must be a positive integer (got {num_relations!r})")
        if num_nodes is None:
            num_nodes = int(edge_index.max()) + 1 if isinstance(edge_index, Tensor) \
                and edge_index.numel() else 0
        check_edge_index(edge_index, num_nodes)
        num_edges = edge_index.size(1)
        if not isinstance(edge_type, Tensor) or edge_type.dim() != 1 \
                or edge_type.numel() != num_edges:
            raise ValueError(f"edge_type must be a tensor [{num_edges}], one relation per edge "
                             f"(got {getattr(edge_type, 'shape', type(edge_type).__name__)})")
        if edge_type.dtype.is_floating_point or edge_type.dtype == torch.bool:
            raise ValueError(f"edge_type must hold integers (got dtype {edge_type.dtype})")
        if num_edges and (int(edge_type.min()) < 0 or int(edge_type.max()) >= num_relations):
            raise ValueError(f"edge_type holds relations in [{int(edge_type.min())}, "
                             f"{int(edge_type.max())}], outside [0, {num_relations})")
        check_edge_weight(edge_weight, num_edges)
        self.num_nodes, self.num_relations = int(num_nodes), int(num_relations)
        src, dst = edge_index.long()
        self._src, self._rel = src, edge_type.long()
        self.rowptr_in, self.perm_in = _csr_order(dst, self.num_nodes)
        # by source, and within a source by relation: a (source, relation) pair's edges are
        # consecutive (the torch path's per-query product)
        slot = src * self.num_relations + self._rel
        self.perm_out = torch.argsort(slot, stable=True)
        self.col_in, self.rel_in = src[self.perm_in], self._rel[self.perm_in]
        self.col_out, self.rel_out = dst[self.perm_out], self._rel[self.perm_out]
        # the out-order edges' places in the in-order (a shared step's values, transposed)
        place = torch.empty_like(self.perm_in)
        place[self.perm_in] = torch.arange(num_edges, device=place.device)
        self.in_to_out = place[self.perm_out]
        self.pairs = _Pairs.build(slot[self.perm_out], place, self.perm_out, self.num_nodes,
                                  self.num_relations)
        self.rowptr_out = self.pairs.edge_ptr[self.pairs.node_ptr]  # a node's first pair's edge
        self._set_weight(edge_weight if edge_weight is not None
                         else torch.ones(num_edges, device=edge_index.device))

    def _set_weight(self, weight: Tensor) -> None:
        weight = weight.detach().float()
        self.weight = weight
        degree = weight.new_zeros(self.num_nodes * self.num_relations)
        slot = self._src * self.num_relations + self._rel
        degree.index_add_(0, slot, weight)
        # each edge's share of its source's out-weight under its own relation
        share = weight / torch.where(degree[slot] > 0, degree[slot], torch.ones_like(weight))
        self._weights = {False: (weight[self.perm_in], weight[self.perm_out]),
                         True: (share[self.perm_in], share[self.perm_out])}
        # each node's relations with out-weight and that weight, node-major (the compiled step)
        present = degree.nonzero().view(-1)
        self.rel_ptr = torch.cat([present.new_zeros(1), torch.bincount(
            present // self.num_relations, minlength=self.num_nodes).cumsum(0)])
        self.rel_ids, self.rel_degree = present % self.num_relations, degree[present]
        self.rel_nodes = present // self.num_relations  # the node of each (node, relation)
        degree = degree.view(self.num_nodes, self.num_relations)  # C^T: [N, R]
        has = (degree > 0).to(degree.dtype)  # whether a node has out-weight under r
        if self.num_relations > DENSE_DEGREE_RELATIONS:  # few relations per node: sparse
            degree, has = degree.to_sparse(), has.to_sparse()
        self.degree, self.has_relation = degree, has

    def edges(self, transpose: bool, per_relation: bool
              ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """(rowptr, col, rel, weight) in CSR order by target (by source, and within a source
        by relation, with ``transpose``); ``per_relation``: each weight divided by its
        source's out-weight under its relation."""
        weight = self._weights[per_relation][1 if transpose else 0]
        if transpose:
            return self.rowptr_out, self.col_out, self.rel_out, weight
        return self.rowptr_in, self.col_in, self.rel_in, weight

    def masked(self, edge_ids: Optional[Tensor]) -> "RelationalGraph":
        """A copy whose edges ``edge_ids`` have weight 0 (the sorted structure is shared)."""
        if edge_ids is None or edge_ids.numel() == 0:
            return self
        out = object.__new__(RelationalGraph)
        out.__dict__.update(self.__dict__)
        out._set_weight(self.weight.index_fill(0, edge_ids.to(self.weight.device), 0.0))
        return out

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def __repr__(self) -> str:
        return (f"RelationalGraph(num_nodes={self.num_nodes}, num_edges={self.weight.numel()}, "
                f"num_relations={self.num_relations})")


TILED_TRANSPOSE_MIN = 128  # short side from which numba's tiles beat torch's copy


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


FLOW_BACKENDS = ("torch", "triton")
_flow_backend = {"name": "torch"}


def set_flow_backend(name: str) -> None:
    """Chooses how :func:`relational_flow` runs a step with per-query relation weights where
    numba's compiled step does not (GPUs, no numba).

    Args:
        name (str): ``"torch"`` (the starting choice: gathers over the (source, relation)
            pairs and torch's CSR products) or ``"triton"`` (two Triton kernels,
            :mod:`qgfd_pyg.flow_triton`, that read each source row once per edge; CUDA
            tensors, or CPU tensors under Triton's interpreter; opt-in until timed on a GPU:
            ``benchmarks/perf_flow.py --device cuda``).
    """
    _flow_backend["name"] = check_flow_backend(name)


def check_flow_backend(name: str) -> str:
    """``name`` if :func:`set_flow_backend` can take it, else a ValueError that says why."""
    name = check_choice("flow backend", name, FLOW_BACKENDS)
    if name == "triton" and importlib.util.find_spec("triton") is None:
        raise ValueError("flow backend 'triton' needs the triton package")
    return name


def get_flow_backend() -> str:
    """The backend :func:`set_flow_backend` chose (``"torch"`` until it is called)."""
    return _flow_backend["name"]


def _use_triton(x: Tensor) -> bool:
    return _flow_backend["name"] == "triton" and (
        x.device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1")


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
    gradients come from :mod:`qgfd_pyg.flow_triton`'s kernels instead (only the relation
    weights' sums per relation stay a CSR product)."""

    @staticmethod
    def forward(ctx, x, a, graph, per_relation):
        x, a = x.detach().contiguous(), a.detach().contiguous()
        ctx.save_for_backward(x, a)
        ctx.graph, ctx.per_relation = graph, per_relation
        if _use_triton(x):
            from .flow_triton import typed_product
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
        if _use_triton(x):
            from .flow_triton import typed_product_backward
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
        rowptr, col, rel, weight = graph.edges(False, normalization == "relation")
        y = (scratch_buffers(x, 1)[0] if scratch is None else scratch) if node else x
        if x.numel():
            _numba.set_threads()
            _numba.routines().typed_step(
                rowptr.numpy(), col.numpy(), rel.numpy(), weight.to(x.dtype).numpy(),
                a.numpy(), x.numpy(), graph.rel_ptr.numpy(), graph.rel_ids.numpy(),
                graph.rel_degree.to(x.dtype).numpy(), a.sum(0).numpy(), node, keep,
                MIN_MASS, y.numpy(), out.numpy())
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, a = ctx.saved_tensors
        graph = ctx.graph
        grad = grad.contiguous()
        rowptr, col, rel, weight = graph.edges(True, ctx.normalization == "relation")
        chunks = max(1, min(torch.get_num_threads(), graph.num_nodes))
        grad_x = torch.empty_like(x)
        parts = x.new_empty(chunks, graph.num_relations, x.size(1))
        totals = x.new_empty(chunks, x.size(1))
        if x.numel():
            _numba.set_threads()
            _numba.routines().typed_step_backward(
                rowptr.numpy(), col.numpy(), rel.numpy(), weight.to(x.dtype).numpy(),
                a.numpy(), x.numpy(), grad.numpy(), graph.rel_ptr.numpy(),
                graph.rel_ids.numpy(), graph.rel_degree.to(x.dtype).numpy(), a.sum(0).numpy(),
                ctx.normalization == "node", ctx.keep, MIN_MASS, grad_x.numpy(),
                parts.numpy(), totals.numpy())
            grad_a = parts.sum(0) + totals.sum(0, keepdim=True)
        else:
            grad_a = torch.zeros_like(a)
        return (grad_x if ctx.needs_input_grad[0] else None,
                grad_a if ctx.needs_input_grad[1] else None, None, None, None)


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
    rowptr, col, rel, weight = graph.edges(False, normalization == "relation")
    weight, degree = weight.to(x0.dtype), graph.rel_degree.to(x0.dtype)
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
        k.typed_flow_step(rowptr.numpy(), col.numpy(), rel.numpy(), weight.numpy(), a_t.numpy(),
                          x.numpy(), active.numpy(), graph.rel_ptr.numpy(),
                          graph.rel_ids.numpy(), degree.numpy(), a_t.sum(0).numpy(), node,
                          keep, MIN_MASS, theta[t + 1].numpy(), (y if node else x).numpy(),
                          out.numpy(), acc.numpy(), nxt.numpy(), bool(active.all()))
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
        _, col, _, weight = graph.edges(True, ctx.normalization == "relation")
        weight, pairs = weight.to(grad.dtype), graph.pairs
        degree = graph.rel_degree.to(grad.dtype)
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
                flags[t].numpy(), pairs.node_ptr.numpy(), pairs.rel.numpy(),
                pairs.edge_ptr.numpy(), col.numpy(), weight.numpy(), a[t].numpy(),
                walks[t].numpy(), grad.numpy(), theta[t + 1].numpy(), g_next.numpy(),
                t < T - 1, graph.rel_ptr.numpy(), graph.rel_ids.numpy(),
                degree.numpy(), a[t].sum(0).numpy(),
                ctx.normalization == "node", ctx.keep, MIN_MASS, theta[t].numpy(), write_g,
                g_out.numpy(), parts.numpy(), totals.numpy(), dots[t].numpy())
            grad_a[t] = parts.sum(0) + totals.sum(0, keepdim=True)
            spare = g_next if g_next.numel() else None
            g_next = g_out
        return (None, dots.sum(1), None, None, None, None, *grad_a)


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


def _check_weights(name: str, value: Tensor, validate: bool) -> None:
    if validate and value.numel():
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
        if bool((value < 0).any()):
            raise ValueError(f"{name} contains negative values; relation weights must be >= 0")


@torch.compiler.disable  # compiled CPU routines: torch.compile breaks the graph here
def relational_flow(p0: Tensor, graph: RelationalGraph,
                    relation_weights: Union[Tensor, Sequence[Tensor]], alpha: float = 0.85,
                    hop_weights: Optional[Tensor] = None, normalization: str = "node",
                    dangling: str = "keep", return_steps: bool = False,
                    validate: Optional[bool] = None
                    ) -> Union[Tensor, Tuple[Tensor, List[Tensor]]]:
    r"""Diffuses a batch of seeds over per-query, per-step mixtures of relations (see the
    module docstring):

    .. math::
        p_T = \sum_{k=0}^{T} \theta_k\, p_0 P_0(q) \cdots P_{k-1}(q), \qquad
        P_t(q) = D_t(q)^{-1} \sum_r a_t(q, r) A_r .

    Differentiable in ``p0``, ``relation_weights`` and ``hop_weights`` (once: the backward
    pass itself is not differentiated).

    Args:
        p0 (torch.Tensor): seeds ``[B, N]``, one row per query (a one-hot anchor, an
            attention; any real values, the map is linear in them).
        graph (RelationalGraph): the typed graph.
        relation_weights (torch.Tensor or list): :math:`a_t(q, r)`, ``[T, B, R]`` or a list
            of ``T`` tensors ``[B, R]``; a step's ``[1, R]`` is shared by every query (a
            batch of one query relation): where numba's fused step does not run (GPUs), that
            step's transition is then one matrix and the step one CSR product with per-edge
            values. Non-negative; they need not sum to one
            (:math:`P_t(q)` does not change when a row is scaled); a row of zeros makes that
            query stand still for that step. ``T = 0`` returns :math:`\theta_0 p_0`.
        alpha (float): diffusion weight in ``[0, 1]`` of the PageRank hop weights
            :math:`\theta_k = (1-\alpha)\alpha^k`, :math:`\theta_T = \alpha^T` used when
            ``hop_weights`` is not given; this is PPR's continuation probability
            (APPNP's teleport is ``1 - alpha``). (default: ``0.85``)
        hop_weights (torch.Tensor, optional): :math:`\theta_0..\theta_T`, ``[T + 1]`` for all
            queries or ``[B, T + 1]`` per query, e.g. learnt (GPR-GNN); any real values.
            (default: ``None``)
        normalization (str): ``"node"``: :math:`P_t(q) = D_t(q)^{-1} \sum_r a_t(q, r) A_r`,
            each node's out-edges normalised together under the query's weighting (the
            module docstring); ``"relation"``: :math:`P_t(q) = \sum_r a_t(q, r) C_r^{-1}
            A_r`, each relation's walk normalised on its own and mixed by :math:`a_t(q)`
            (whose rows must then sum to one), so that a node without edges of relation
            :math:`r` passes on nothing of :math:`r`'s share (TransferNet's and NeuralLP's
            reading: following a relation the node lacks leads nowhere); ``"none"``:
            :math:`P_t(q) = \sum_r a_t(q, r) A_r` unnormalised, so that :math:`p_T` counts the
            (weighted) walks that reach a node, not their probability (TransferNet's score
            propagation without its clipping): every node a walk of the query's relations
            reaches gets at least that walk's weight, however many other walks spread from
            the same nodes. (default: ``"node"``)
        dangling (str): what happens to mass that has no edge to follow (``"node"``: nodes
            with :math:`D_t(q)_{ii} = 0`; ``"relation"``: the shares of the relations a node
            lacks): ``"keep"`` leaves it on its node, ``"drop"`` removes it (the flow is then
            sub-stochastic, and a walk that hits a dead end is gone). (default: ``"keep"``)
        return_steps (bool): also return the walks :math:`p_0 P_0 \cdots P_{k-1}`,
            ``k = 0..T``, each ``[B, N]``. (default: ``False``)
        validate (bool, optional): check that the weights are finite and non-negative; these
            checks read values (a device sync on GPUs), so by default they run for CPU tensors
            only. (default: ``None``)

    Shapes:
        - **input:** p0 :math:`(B, N)`, relation_weights :math:`(T, B, R)` or
          :math:`(T, 1, R)`, hop_weights
          :math:`(T + 1)` or :math:`(B, T + 1)`
        - **output:** :math:`(B, N)`, and a list of :math:`T + 1` tensors :math:`(B, N)` if
          ``return_steps``
    """
    alpha = check_alpha(alpha)
    normalization = check_choice("normalization", normalization, NORMALIZATIONS)
    dangling = check_choice("dangling", dangling, ("keep", "drop"))
    if not isinstance(graph, RelationalGraph):
        raise ValueError(f"graph must be a RelationalGraph (got {type(graph).__name__})")
    if not isinstance(p0, Tensor) or p0.dim() != 2 or p0.size(1) != graph.num_nodes:
        raise ValueError(f"p0 must be a tensor [B, {graph.num_nodes}] (one seed per query over "
                         f"the graph's nodes; got "
                         f"{list(p0.shape) if isinstance(p0, Tensor) else type(p0).__name__})")
    if not p0.dtype.is_floating_point:
        raise ValueError(f"p0 must be floating point (got dtype {p0.dtype})")
    B, R = p0.size(0), graph.num_relations
    if isinstance(relation_weights, Tensor):
        if relation_weights.dim() != 3:
            raise ValueError(f"relation_weights must be [T, B, R] or a list of [B, R] tensors "
                             f"(got {list(relation_weights.shape)})")
        relation_weights = list(relation_weights.unbind(0))
    relation_weights = list(relation_weights)
    for t, a in enumerate(relation_weights):
        if not isinstance(a, Tensor) or a.dim() != 2 or a.size(0) not in (1, B):
            raise ValueError(f"relation_weights[{t}] must be [B={B}, R] or [1, R] (got "
                             f"{list(a.shape) if isinstance(a, Tensor) else type(a).__name__})")
        if a.size(1) != R:
            raise ValueError(f"relation_weights[{t}] weighs {a.size(1)} relations but the graph "
                             f"has {R}")
    steps = check_steps(len(relation_weights))
    if validate is None:
        validate = check_values(p0)
    for t, a in enumerate(relation_weights):
        _check_weights(f"relation_weights[{t}]", a, validate)
        if validate and normalization == "relation" and a.numel() and not torch.allclose(
                a.sum(1), a.new_ones(a.size(0)), atol=1e-4):
            raise ValueError(f"relation_weights[{t}] rows must be distributions (sum to 1) "
                             f"with normalization='relation', which mixes the relations' walks")
    if hop_weights is None:
        theta = ppr_hop_weights(alpha, steps).to(p0.device)
    else:
        theta = hop_weights
        if not isinstance(theta, Tensor) or theta.dim() not in (1, 2) \
                or theta.size(-1) != steps + 1 or (theta.dim() == 2 and theta.size(0) != B):
            raise ValueError(f"hop_weights must be [T + 1 = {steps + 1}] or [B = {B}, "
                             f"{steps + 1}] (got {list(getattr(theta, 'shape', []))})")
        if validate and not bool(torch.isfinite(theta).all()):
            raise ValueError("hop_weights contains NaN or infinite values")
    if graph.device != p0.device:
        raise ValueError(f"p0 is on {p0.device} but the graph on {graph.device}")

    dtype = p0.dtype if p0.dtype in (torch.float32, torch.float64) else torch.float32
    theta = theta.to(dtype)
    # per-query weights as contiguous rows: a column of theta strides across memory, and
    # broadcasting it over [N, B] (forward and backward) takes a slow, unvectorised loop
    coefficient = theta if theta.dim() == 1 else theta.t().contiguous()  # [T + 1(, B)]
    # without autograd nothing keeps a walk once the next exists: the steps run in place in
    # kept buffers (fresh memory per step costs its page faults, about a product's time)
    reuse = not torch.is_grad_enabled() and not return_steps and _numba.usable(p0.detach())
    if reuse:
        y, walk, other, total = scratch_buffers(
            torch.empty(graph.num_nodes, B, dtype=dtype, device="meta"), 4)
        x = _transpose(p0.to(dtype), out=walk)  # [N, B]: a column per query, a row per node
    else:
        x = _Transposed.apply(p0.to(dtype))
    if steps and not return_steps and not x.requires_grad and B >= SPARSE_MIN_QUERIES \
            and x.numel() and _numba.usable(
            x, coefficient.detach(), *[a.detach().to(dtype) for a in relation_weights]) \
            and (active := _sparse_rows(x)) is not None:
        # a large batch of seeds on few nodes that need no gradient: the whole flow in
        # compiled steps over the rows that can hold mass
        a_list = [a.to(dtype).expand(B, -1).t().contiguous() for a in relation_weights]
        theta_rows = coefficient.view(steps + 1, -1).expand(steps + 1, B)
        keep = dangling == "keep"
        if reuse:  # a fifth kept buffer: the walks alternate between two, apart from x
            spare = scratch_buffers(walk, 5)[4]
            out = _flow_forward(x, theta_rows.contiguous(), a_list, graph, normalization, keep,
                                active, (other, spare, y, total))[0]
        else:
            out = _FusedFlow.apply(x, theta_rows, graph, normalization, keep, active, *a_list)
        return _Transposed.apply(out).to(p0.dtype)
    out = torch.mul(x, coefficient[0], out=total) if reuse else coefficient[0] * x
    walks = [x]
    for t, a in enumerate(relation_weights):
        if a.size(0) == 1 and not _numba.usable(x.detach()):
            # one transition for every query: one sparse product (torch's; GPUs, no numba)
            x = shared_step(graph, x, a.to(dtype).view(-1), normalization, dangling)
        else:
            a = a.to(dtype).expand(x.size(1), -1).t().contiguous()  # [R, B]
            if reuse:
                walk, other = other, walk
                x = _FusedStep.run(x, a, graph, normalization, dangling == "keep", walk, y)
            else:
                x = relational_step(graph, x, a, normalization, dangling)
        out = out.addcmul_(coefficient[t + 1], x)  # in place: the sum's backward keeps no out
        if return_steps:
            walks.append(x)
    out = _Transposed.apply(out).to(p0.dtype)
    if return_steps:
        return out, [_Transposed.apply(w).to(p0.dtype) for w in walks]
    return out
