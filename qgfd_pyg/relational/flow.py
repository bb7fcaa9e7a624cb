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
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .. import _numba
from ..checks import check_alpha, check_choice, check_steps, check_values
from ..diffusion import ppr_hop_weights
from ..spmm import scratch_buffers
from . import active
from .active import _FusedFlow, _sparse_rows
from .graph import RelationalGraph
from .steps import (NORMALIZATIONS, _FusedStep, _Transposed, _transpose, relational_step,
                    shared_step, traced_step)


def _check_weights(name: str, value: Tensor, validate: bool) -> None:
    if validate and value.numel():
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
        if bool((value < 0).any()):
            raise ValueError(f"{name} contains negative values; relation weights must be >= 0")


def _checked(p0: Tensor, graph: RelationalGraph,
             relation_weights: Union[Tensor, Sequence[Tensor]], alpha: float,
             hop_weights: Optional[Tensor], normalization: str, dangling: str,
             validate: Optional[bool]) -> Tuple[List[Tensor], Tensor]:
    """:func:`relational_flow`'s arguments checked: the steps' weights as a list and the hop
    weights (PageRank's of ``alpha`` if none are given), or a ValueError that says what is
    wrong."""
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
    return relation_weights, theta


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
    if torch.compiler.is_compiling():  # traced: torch ops the compiler sees
        return _traced_flow(p0, graph, relation_weights, alpha, hop_weights, normalization,
                            dangling, return_steps, validate)
    relation_weights, theta = _checked(p0, graph, relation_weights, alpha, hop_weights,
                                       normalization, dangling, validate)
    steps, B = len(relation_weights), p0.size(0)
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
    if steps and not return_steps and not x.requires_grad and B >= active.SPARSE_MIN_QUERIES \
            and x.numel() and _numba.usable(
            x, coefficient.detach(), *[a.detach().to(dtype) for a in relation_weights]) \
            and (rows := _sparse_rows(x)) is not None:
        # a large batch of seeds on few nodes that need no gradient: the whole flow in
        # compiled steps over the rows that can hold mass
        a_list = [a.to(dtype).expand(B, -1).t().contiguous() for a in relation_weights]
        theta_rows = coefficient.view(steps + 1, -1).expand(steps + 1, B)
        keep = dangling == "keep"
        if reuse:  # a fifth kept buffer: the walks alternate between two, apart from x
            spare = scratch_buffers(walk, 5)[4]
            out = active._flow_forward(x, theta_rows.contiguous(), a_list, graph, normalization,
                                       keep, rows, (other, spare, y, total))[0]
        else:
            out = _FusedFlow.apply(x, theta_rows, graph, normalization, keep, rows, *a_list)
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



def _traced_flow(p0: Tensor, graph: RelationalGraph,
                 relation_weights: Union[Tensor, Sequence[Tensor]], alpha: float,
                 hop_weights: Optional[Tensor], normalization: str, dangling: str,
                 return_steps: bool, validate: Optional[bool]
                 ) -> Union[Tensor, Tuple[Tensor, List[Tensor]]]:
    """:func:`relational_flow` under ``torch.compile``: the same walks in torch ops
    (:func:`~qgfd_pyg.relational.steps.traced_step`), differentiated by autograd."""
    relation_weights, theta = _checked(p0, graph, relation_weights, alpha, hop_weights,
                                       normalization, dangling, validate)
    B = p0.size(0)
    dtype = p0.dtype if p0.dtype in (torch.float32, torch.float64) else torch.float32
    theta = theta.to(dtype)
    coefficient = theta if theta.dim() == 1 else theta.t()  # [T + 1(, B)]
    x = p0.to(dtype).t()  # [N, B]
    out, walks = coefficient[0] * x, [x]
    for t, a in enumerate(relation_weights):
        x = traced_step(graph, x, a.to(dtype).expand(B, -1).t(), normalization, dangling)
        out = out + coefficient[t + 1] * x
        walks.append(x)
    out = out.t().to(p0.dtype)
    if return_steps:
        return out, [w.t().to(p0.dtype) for w in walks]
    return out
