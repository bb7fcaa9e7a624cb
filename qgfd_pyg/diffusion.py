r"""The one diffusion loop shared by the graph and dense paths.

QGFD never materialises the diffused distribution :math:`p_T = p_0 M`; it diffuses the values
instead, :math:`Z_T = M V`, and the caller finishes with one attention :math:`p_0 Z_T`. For a
kernel with coefficients :math:`\theta_k`, truncated after ``T`` steps with the remaining mass
put on the last power so that :math:`M` stays row-stochastic,

.. math::
    Z_T = \sum_{k<T} \theta_k P^k V + \Big(1 - \sum_{k<T} \theta_k\Big) P^T V.

For personalised PageRank (``"ppr"``), :math:`\theta_k = (1-\alpha)\alpha^k`, this is exactly
:math:`Z_{t+1} = (1-\alpha) V + \alpha P Z_t` from :math:`Z_0 = V` (APPNP's propagation with
teleport :math:`1-\alpha`); for the heat kernel (``"heat"``), :math:`\theta_k = e^{-s} s^k / k!`.

Learnt hop weights (GPR-GNN) replace the kernel by any :math:`\theta_0..\theta_T`,
:math:`Z_T = \sum_{k \le T} \theta_k P^k V`; :func:`ppr_hop_weights` gives the PageRank ones to
start from. A list of per-step transitions :math:`P_0..P_{T-1}` gives
:math:`Z_T = \sum_k \theta_k P_0 P_1 \cdots P_{k-1} V` (so that :math:`p_0 Z_T` is the sum of
walks :math:`p_0 P_0 \cdots P_{k-1}` that take the steps in order; computed from the inside
out, :math:`H \leftarrow \theta_t V + P_t H`).
"""
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as recompute
from torch_geometric.typing import SparseTensor

from .checks import check_alpha, check_choice, check_positive_float, check_steps
from .spmm import EdgeListTransition, Transition, fused_diffusion, needs_value_grad, spmm
KERNELS = ("ppr", "heat")


@dataclass
class DiffusionInfo:
    """What one call of :func:`diffuse` did: for convergence plots and early-stop reports.

    Args:
        steps (int, optional): sparse products performed (``<= steps`` asked for).
            (default: :obj:`0`)
        residuals (list, optional): :math:`\\max |Z_{t+1} - Z_t|` after each step.
            (default: :obj:`[]`)
        converged (bool, optional): whether ``tol`` was reached before the step budget ran
            out. (default: :obj:`False`)
    """
    steps: int = 0
    residuals: List[float] = field(default_factory=list)
    converged: bool = False


def kernel_coefficients(kernel: str, steps: int, alpha: float = 0.85,
                        heat_time: float = 1.0) -> Tuple[List[float], List[float]]:
    r"""Coefficients :math:`\theta_0..\theta_{T-1}` and tails :math:`r_k = 1-\sum_{j<k}\theta_j`
    (``r_0..r_T``) of a diffusion kernel, :math:`\mathbf{Z} = \sum_{k<T} \theta_k
    \mathbf{P}^k \mathbf{V} + r_T \mathbf{P}^T \mathbf{V}`.

    Args:
        kernel (str): ``"ppr"`` (personalised PageRank, :math:`\theta_k = (1-\alpha)
            \alpha^k`) or ``"heat"`` (:math:`\theta_k = e^{-s} s^k / k!`).
        steps (int): the number of steps :math:`T`.
        alpha (float, optional): the weight of the diffusion (PageRank's probability of one
            more step; QGFD's ``alpha=0.85`` is APPNP's teleport ``alpha=0.15``).
            (default: :obj:`0.85`)
        heat_time (float, optional): the heat kernel's time :math:`s`. (default: :obj:`1.0`)

    Returns:
        ``(theta, tail)``: lists of :math:`T` and :math:`T + 1` floats.
    """
    check_choice("kernel", kernel, KERNELS)
    steps, alpha = check_steps(steps), check_alpha(alpha)
    heat_time = check_positive_float("heat_time", heat_time)
    if kernel == "ppr":
        theta = [(1.0 - alpha) * alpha**k for k in range(steps)]
        tail = [alpha**k for k in range(steps + 1)]
    else:
        theta = [math.exp(-heat_time + k * math.log(heat_time) - math.lgamma(k + 1))
                 for k in range(steps)]
        tail = [max(0.0, 1.0 - math.fsum(theta[:k])) for k in range(steps + 1)]
    return theta, tail


def ppr_hop_weights(alpha: float, steps: int, kernel: str = "ppr", heat_time: float = 1.0
                    ) -> Tensor:
    r"""The kernel's hop weights :math:`\theta_0..\theta_T` as one tensor ``[T + 1]``, the
    last one holding the truncated tail (PageRank: :math:`(1-\alpha)\alpha^k` for
    :math:`k < T`, :math:`\alpha^T` for the last): where learnt hop weights start.

    Args:
        alpha (float): the weight of the diffusion (QGFD's ``alpha=0.85`` is APPNP's
            teleport ``alpha=0.15``).
        steps (int): the number of steps :math:`T`.
        kernel (str, optional): ``"ppr"`` or ``"heat"`` (see :func:`kernel_coefficients`).
            (default: :obj:`"ppr"`)
        heat_time (float, optional): the heat kernel's time. (default: :obj:`1.0`)
    """
    theta, tail = kernel_coefficients(kernel, check_steps(steps), check_alpha(alpha), heat_time)
    return torch.tensor(theta + [tail[steps]])


def _check_hop_weights(hop_weights: Tensor, steps: int) -> Tensor:
    if not isinstance(hop_weights, Tensor) or hop_weights.dim() != 1 \
            or hop_weights.numel() != steps + 1:
        raise ValueError(f"hop_weights must be a tensor [steps + 1 = {steps + 1}] "
                         f"(got {list(getattr(hop_weights, 'shape', [])) or hop_weights!r})")
    if not hop_weights.dtype.is_floating_point:
        raise ValueError(f"hop_weights must be floating point (got dtype {hop_weights.dtype})")
    return hop_weights


def _product(x: Tensor, transition: Transition) -> Tensor:
    """``P x`` with gradients w.r.t. ``x`` (and ``P``'s entries where they need them)."""
    if needs_value_grad(transition) or isinstance(transition, EdgeListTransition):
        return spmm(transition, x)
    return _FixedTransitionDiffusion.apply(x, transition, [0.0], [1.0, 1.0], 1, None, False,
                                           False, [])


def _hop_sum(x: Tensor, transitions: List[Transition], theta: Tensor) -> Tensor:
    """``sum_k theta_k P_0 .. P_{k-1} x`` (one ``P`` repeated when the list has one entry
    per step and all are the same object: then the powers are taken forward)."""
    steps = len(transitions)
    theta = theta.to(x.dtype)
    if all(P is transitions[0] for P in transitions):  # powers of one P, from the front
        out = theta[0] * x
        for t in range(steps):
            x = _product(x, transitions[0])
            out = out + theta[t + 1] * x
        return out
    out = theta[steps] * x  # from the inside out
    for t in reversed(range(steps)):
        out = theta[t] * x + _product(out, transitions[t])
    return out


def _num_nodes(transition: Transition) -> int:
    if isinstance(transition, EdgeListTransition):
        return transition.size
    if isinstance(transition, SparseTensor):
        rows, cols = transition.sparse_sizes()
    elif isinstance(transition, Tensor) and (transition.dim() == 2 or (
            transition.dim() == 3 and transition.layout == torch.strided)):
        rows, cols = transition.shape[-2:]
    else:
        raise ValueError(f"transition must be a SparseTensor, an [N, N] tensor or a dense "
                         f"[B, N, N] batch (got "
                         f"{getattr(transition, 'shape', type(transition).__name__)})")
    if rows != cols:
        raise ValueError(f"transition must be square (got {rows} x {cols})")
    return rows


def _loop(x: Tensor, transition: Transition, theta: List[float], tail: List[float],
          steps: int, tol: Optional[float], track: bool, transpose: bool = False
          ) -> Tuple[Tensor, DiffusionInfo]:
    """The diffusion loop on ``[N, d]`` values (``P^T`` instead of ``P`` with ``transpose``)."""
    info = DiffusionInfo()
    recording = torch.is_grad_enabled()
    if not recording:  # inside an autograd function or no_grad: the compiled routines then
        x = x.detach()  # take the values as plain tensors
        if not track and steps > 0:  # all steps in one routine where one applies
            out = fused_diffusion(transition, x, theta[:steps], tail[steps], steps, transpose)
            if out is not None:
                info.steps = steps
                return out, info
    acc: Optional[Tensor] = None  # sum_{j<t} theta_j P^j V
    spare: Optional[Tensor] = None  # a dead iterate whose memory the next product may reuse
    for t in range(steps):
        x_next = spmm(transition, x, transpose, out=spare)
        acc = _accumulate(acc, x, theta[t])
        info.steps = t + 1
        if track:  # Z_{t+1} - Z_t = r_{t+1} (P^{t+1} V - P^t V)
            change = float((x_next - x).detach().abs().max()) if x.numel() else 0.0
            info.residuals.append(tail[t + 1] * change)
        # Z_t is dead from here on unless autograd keeps it; Z_0 is the caller's tensor
        spare = x if t > 0 and not recording and x_next is not x else None
        x = x_next
        if tol is not None and info.residuals[-1] < tol:
            info.converged = True
            break
    return _accumulate(acc, x, tail[info.steps]), info


def _accumulate(acc: Optional[Tensor], x: Tensor, weight: float) -> Tensor:
    """``acc + weight * x``, in place where autograd does not track ``acc``."""
    if acc is None:
        return weight * x
    if acc.requires_grad:
        return acc + weight * x
    return acc.add_(x, alpha=weight)


class _FixedTransitionDiffusion(torch.autograd.Function):
    """Diffusion over a transition whose entries are constants. The map is linear,
    ``Z = M V`` with ``M = sum_k theta_k P^k + r_T P^T``, so the backward is the same diffusion
    over ``P^T``: nothing of the forward steps is kept, only ``P`` (whose transposed CSR form is
    cached on it). The backward goes through this function again, so it is differentiable too.
    """

    @staticmethod
    def forward(ctx, x, transition, theta, tail, steps, tol, track, transpose, info_out):
        out, info = _loop(x, transition, theta, tail, steps, tol, track, transpose)
        info_out.append(info)
        ctx.transition, ctx.theta, ctx.tail = transition, theta, tail
        ctx.steps, ctx.transpose = info.steps, transpose  # the steps actually taken
        return out

    @staticmethod
    def backward(ctx, grad):
        grad_x = _FixedTransitionDiffusion.apply(grad.contiguous(), ctx.transition, ctx.theta,
                                                 ctx.tail, ctx.steps, None, False,
                                                 not ctx.transpose, [])
        return (grad_x,) + (None,) * 8


def _transition_size(transition, steps: int) -> Tuple[int, int]:
    """(nodes, steps) of :func:`diffuse`'s ``transition``: one matrix (``steps`` as given) or
    a list of per-step ``[N, N]`` matrices of one size (as many steps as matrices)."""
    if not isinstance(transition, (list, tuple)):
        return _num_nodes(transition), steps
    if not transition:
        raise ValueError("transition is an empty list; give one transition per step")
    sizes = {_num_nodes(P) for P in transition}
    if len(sizes) > 1:
        raise ValueError(f"the per-step transitions differ in size ({sorted(sizes)})")
    if any(isinstance(P, Tensor) and P.dim() == 3 for P in transition):
        raise ValueError("a list of per-step transitions takes [N, N] transitions only")
    return sizes.pop(), len(transition)


def diffuse(values: Tensor, transition: Union[Transition, Sequence[Transition]],
            alpha: float = 0.85, steps: int = 6, tol: Optional[float] = None,
            kernel: str = "ppr", heat_time: float = 1.0, return_info: bool = False,
            checkpoint: bool = False, hop_weights: Optional[Tensor] = None
            ) -> Union[Tensor, Tuple[Tensor, DiffusionInfo]]:
    r"""Diffuses ``values`` over a row-stochastic ``transition`` (the Z-form of QGFD).

    .. math::
        Z_0 = V, \qquad Z_{t+1} = (1 - \alpha) V + \alpha P Z_t \quad (t < T)

    for ``kernel="ppr"``; ``kernel="heat"`` uses :math:`\theta_k = e^{-s} s^k / k!` with
    :math:`s` = ``heat_time`` (see the module docstring). With ``tol`` set, the loop stops as
    soon as :math:`\max |Z_{t+1} - Z_t| <` ``tol``; the residual shrinks at least geometrically
    at rate :math:`\alpha` for PPR. Any ``out = p_0 Z_T`` then equals :math:`p_T V`.

    Half-precision values (float16, bfloat16) are diffused in float32 and the result is
    returned in their dtype.

    Memory: when the entries of ``transition`` are constants (graph transitions, detached
    kNN), the backward pass is the same diffusion over :math:`P^\top` and keeps no copy of
    the values from the forward steps. When they need gradients (kNN over trainable keys),
    autograd keeps one ``[N, d]`` copy per step; ``checkpoint=True`` keeps none and runs the
    forward steps again during the backward pass instead.

    Args:
        values (torch.Tensor): values :math:`V` with the nodes first, ``[N, *]`` (``[B, N, *]``
            for a batch of transitions).
        transition (SparseTensor or torch.Tensor or list): row-stochastic :math:`P`
            ``[N, N]``, or a dense batch ``[B, N, N]``, one transition per item (e.g. one per
            query); or a list of ``T`` such transitions, one per step (then ``steps`` is the
            list's length, see the module docstring).
        alpha (float): diffusion weight in ``[0, 1]``, PPR's continuation probability (APPNP's
            teleport is ``1 - alpha``); ``0`` returns ``values`` unchanged. (default: ``0.85``)
        steps (int): number of steps :math:`T \ge 0`. (default: ``6``)
        tol (float, optional): early-stopping threshold on :math:`\max |Z_{t+1} - Z_t|`
            (one fixed transition and kernel weights only). (default: ``None``)
        kernel (str): ``"ppr"`` or ``"heat"``. (default: ``"ppr"``)
        heat_time (float): diffusion time :math:`s > 0` of the heat kernel. (default: ``1.0``)
        return_info (bool): also return a :class:`DiffusionInfo` (steps taken, residuals).
            (default: ``False``)
        checkpoint (bool): recompute instead of storing (only matters for a differentiable
            ``transition``). (default: ``False``)
        hop_weights (torch.Tensor, optional): :math:`\theta_0..\theta_T` ``[T + 1]`` in place
            of the kernel's (e.g. a learnt parameter started at :func:`ppr_hop_weights`);
            differentiable; ``alpha`` and ``kernel`` are then unused. (default: ``None``)

    Shapes:
        - **input:** values :math:`(N, *)`, transition :math:`(N, N)`; or values
          :math:`(B, N, *)`, transition :math:`(B, N, N)`
        - **output:** the shape of the values, and a :class:`DiffusionInfo` if ``return_info``

    Under ``torch.compile`` the loop over an :class:`~qgfd_pyg.spmm.EdgeListTransition` or a
    dense ``P`` (what the layers build while compiled) is traced into the graph; other
    transitions (numba and torch-sparse kernels) run eagerly behind a graph break.
    """
    if torch.compiler.is_compiling() and not _traceable(transition):
        return _eager_diffuse(values, transition, alpha, steps, tol, kernel, heat_time,
                              return_info, checkpoint, hop_weights)
    alpha = check_alpha(alpha)
    steps = check_steps(steps)
    tol = check_positive_float("tol", tol, allow_none=True)
    heat_time = check_positive_float("heat_time", heat_time)
    if not isinstance(values, Tensor) or values.dim() < 1:
        raise ValueError("values must be a tensor with the nodes along its first dimension")
    per_step = isinstance(transition, (list, tuple))
    n, steps = _transition_size(transition, steps)
    if hop_weights is not None:
        hop_weights = _check_hop_weights(hop_weights, steps)
    if (per_step or hop_weights is not None) and tol is not None:
        raise ValueError("tol (early stopping) needs one transition and kernel weights; "
                         "drop tol with hop_weights or a list of transitions")
    batch = transition.shape[:1] if isinstance(transition, Tensor) and transition.dim() == 3 \
        else ()
    if batch and (values.dim() < 2 or values.size(0) != batch[0]):
        raise ValueError(f"a batch of {batch[0]} transitions needs values [{batch[0]}, N, *] "
                         f"(got {tuple(values.shape)})")
    if values.size(len(batch)) != n:
        raise ValueError(f"values have {values.size(len(batch))} rows but the transition is "
                         f"{n} x {n}")
    if values.dtype in (torch.float16, torch.bfloat16):
        # half precision (a .half() / .bfloat16() module, autocast): the sparse products need
        # float32, so the diffusion runs in float32 and its result is cast back
        with torch.autocast(values.device.type, enabled=False):
            result = diffuse(values.float(), transition, alpha, steps, tol, kernel, heat_time,
                             return_info, checkpoint,
                             None if hop_weights is None else hop_weights.float())
        if return_info:
            return result[0].to(values.dtype), result[1]
        return result.to(values.dtype)
    if per_step or hop_weights is not None:
        theta_t = hop_weights if hop_weights is not None else \
            ppr_hop_weights(alpha, steps, kernel, heat_time).to(values.device)
        transitions = list(transition) if per_step else [transition] * steps
        out = _hop_sum(values.reshape(*batch, n, -1), transitions, theta_t)
        out = out.reshape(values.shape)
        return (out, DiffusionInfo(steps=steps)) if return_info else out
    theta, tail = kernel_coefficients(kernel, steps, alpha, heat_time)
    if kernel == "ppr" and alpha == 0.0:
        steps = 0  # plain attention: Z = V exactly, no products needed
    if steps == 0:
        return (values, DiffusionInfo()) if return_info else values

    shape = values.shape
    x = values.reshape(*batch, n, -1)
    track = return_info or tol is not None
    if torch.compiler.is_compiling():  # traced: autograd through the products themselves
        if track:
            raise ValueError("tol and return_info read the residuals (a device sync): "
                             "they need eager mode, not torch.compile")
        out, info = _loop(x, transition, theta, tail, steps, None, False)
    elif not needs_value_grad(transition):
        infos: List[DiffusionInfo] = []
        out = _FixedTransitionDiffusion.apply(x, transition, theta, tail, steps, tol, track,
                                              False, infos)
        info = infos[0]
    elif checkpoint and torch.is_grad_enabled():
        infos = []

        def run(x_in: Tensor) -> Tensor:
            out, info = _loop(x_in, transition, theta, tail, steps, tol, track)
            infos.append(info)
            return out

        out = recompute(run, x, use_reentrant=False)
        info = infos[0]
    else:
        out, info = _loop(x, transition, theta, tail, steps, tol, track)
    out = out.reshape(shape)
    return (out, info) if return_info else out


def _traceable(transition) -> bool:
    """Whether ``torch.compile`` can trace :func:`diffuse` over ``transition``."""
    if isinstance(transition, (list, tuple)):
        return all(_traceable(P) for P in transition)
    return isinstance(transition, EdgeListTransition) or (
        isinstance(transition, Tensor) and transition.layout == torch.strided)


@torch.compiler.disable  # numba / torch_sparse kernels: torch.compile breaks the graph here
def _eager_diffuse(*args):
    return diffuse(*args)
