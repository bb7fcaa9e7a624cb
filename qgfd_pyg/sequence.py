r"""QGFD over dense sequences: the transition between the keys of every (batch, head) pair, the
diffusion of per-head values over it, and the attention core that :class:`QGFDAttention` and
the HuggingFace path (:mod:`qgfd_pyg.hf`) both call.

For per-head queries, keys and values ``[B, H, L, d]``,

.. math::
    \text{out} = \mathrm{SDPA}(Q, K, Z_T), \qquad
    Z_{t+1} = (1-\alpha) V + \alpha \mathbf{P} Z_t,

which equals :math:`p^{(T)} V` for the seed :math:`p^{(0)} = \mathrm{softmax}(QK^\top/\sqrt{d}
+ \text{mask})` diffused over :math:`\mathbf{P}` (see :mod:`qgfd_pyg.diffusion`).
"""
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.typing import SparseTensor

from .diffusion import DiffusionInfo, diffuse
from .transition import graph_transition, knn_transition


def sequence_transition(keys: Tensor, num_neighbors: int, metric: str = "dot",
                        temperature: float = 1.0, key_padding_mask: Optional[Tensor] = None,
                        is_causal: bool = False, adjacency: Optional[Tensor] = None,
                        detach: bool = False) -> SparseTensor:
    r"""Block-diagonal transition over the keys of every (batch, head) pair.

    Without ``adjacency``, block ``(b, h)`` is :func:`qgfd_pyg.knn_transition` of
    ``keys[b, h]`` with ``num_neighbors`` neighbours per key; with it, the random walk of
    ``adjacency`` (``[L, L]`` or ``[B, L, L]``, dense or sparse, entry ``[i, j]`` = flow from
    ``i`` to ``j``, shared by the heads). Causal rows reach only keys ``<= i``; padded keys
    (``key_padding_mask`` True) are never reached. Half-precision keys are compared in float32.

    Shapes:
        - **input:** keys :math:`(B, H, L, d)`
        - **output:** row-stochastic SparseTensor :math:`(B H L, B H L)`
    """
    B, H, L, d = keys.shape
    if adjacency is None:
        keys = keys.detach() if detach else keys
        keys = keys.float() if keys.dtype in (torch.float16, torch.bfloat16) else keys
        mask = None
        if key_padding_mask is not None:
            mask = key_padding_mask[:, None, :].expand(B, H, L).reshape(B * H, L)
        return knn_transition(keys.reshape(B * H, L, d), num_neighbors, metric, temperature,
                              causal=is_causal, mask=mask)
    if not isinstance(adjacency, Tensor) or adjacency.dim() not in (2, 3) \
            or tuple(adjacency.shape[-2:]) != (L, L) \
            or (adjacency.dim() == 3 and adjacency.size(0) not in (1, B)):
        raise ValueError(f"adjacency must be [L, L] or [B, L, L] with L={L}, B={B} "
                         f"(got {getattr(adjacency, 'shape', type(adjacency).__name__)})")
    device = keys.device
    adjacency = adjacency.to(device)
    adjacency = adjacency.to_dense() if adjacency.layout != torch.strided else adjacency
    weight = adjacency.float().expand(B, L, L)
    if is_causal:
        weight = weight.tril()
    if key_padding_mask is not None:
        weight = weight.masked_fill(key_padding_mask[:, None, :], 0.0)
    b, row, col = weight.nonzero(as_tuple=True)
    offset = ((b[:, None] * H + torch.arange(H, device=device)[None, :]) * L).reshape(-1)
    edge_index = torch.stack([row.repeat_interleave(H) + offset,
                              col.repeat_interleave(H) + offset])
    return graph_transition(edge_index, B * H * L, weight[b, row, col].repeat_interleave(H))


def diffuse_sequence(values: Tensor, transition: SparseTensor, alpha: float, steps: int,
                     tol: Optional[float] = None, checkpoint: bool = False
                     ) -> Tuple[Tensor, DiffusionInfo]:
    """:func:`qgfd_pyg.diffuse` of per-head values ``[B, H, L, d]`` over a
    :func:`sequence_transition`; half-precision values are diffused in float32. Residuals are
    only traced when ``tol`` asks for early stopping (the trace costs a pass per step)."""
    B, H, L, d = values.shape
    work = values.float() if values.dtype in (torch.float16, torch.bfloat16) else values
    if tol is None:
        z = diffuse(work.reshape(B * H * L, d), transition, alpha, steps, checkpoint=checkpoint)
        info = DiffusionInfo(steps=steps if alpha > 0.0 else 0)
    else:
        z, info = diffuse(work.reshape(B * H * L, d), transition, alpha, steps, tol,
                          return_info=True, checkpoint=checkpoint)
    return z.view(B, H, L, d).to(values.dtype), info


def allowed_keys(mask: Tensor) -> Tensor:
    """Which (query, key) pairs an attention mask lets through: a bool mask is True where
    attending is allowed (SDPA's convention); an additive float mask blocks ``-inf`` and the
    dtype's most negative values (HuggingFace's stand-in for ``-inf``)."""
    if mask.dtype == torch.bool:
        return mask
    return ~torch.isneginf(mask) & (mask > torch.finfo(mask.dtype).min / 2)


class SequenceAttention(NamedTuple):
    """What :func:`qgfd_attention` computed: the output ``[B, H, Lq, d]``, the transition (None
    when nothing was diffused) and the diffusion's :class:`DiffusionInfo`."""
    out: Tensor
    transition: Optional[SparseTensor]
    info: DiffusionInfo


def qgfd_attention(query: Tensor, keys: Tensor, values: Tensor, mask: Optional[Tensor] = None,
                   is_causal: bool = False, *, alpha: float, steps: int, num_neighbors: int = 8,
                   metric: str = "dot", temperature: float = 1.0,
                   key_padding_mask: Optional[Tensor] = None,
                   adjacency: Optional[Tensor] = None, detach_transition: bool = False,
                   tol: Optional[float] = None, checkpoint: bool = False, dropout: float = 0.0,
                   scale: Optional[float] = None) -> SequenceAttention:
    r"""The QGFD attention core on per-head tensors: builds :math:`\mathbf{P}`
    (:func:`sequence_transition`), diffuses the values, then runs
    :func:`torch.nn.functional.scaled_dot_product_attention` on the diffused values. Queries
    that ``mask`` leaves no key to attend to get zeros, not NaN.

    Args:
        query, keys, values (torch.Tensor): ``[B, H, Lq, d]``, ``[B, H, Lk, d]``,
            ``[B, H, Lk, d_v]``.
        mask (torch.Tensor, optional): SDPA's ``attn_mask`` (bool, True = attend, or additive),
            broadcastable to ``[B, H, Lq, Lk]``; ``None`` with ``is_causal`` uses SDPA's flag.
        is_causal (bool): causal rows in :math:`\mathbf{P}` (and SDPA's flag when no mask).
        alpha, steps, num_neighbors, metric, temperature, tol, checkpoint: the diffusion and
            its kNN transition (see :func:`qgfd_pyg.diffuse`, :func:`qgfd_pyg.knn_transition`).
        key_padding_mask (torch.Tensor, optional): ``[B, Lk]``, True = padded key, never reached
            by :math:`\mathbf{P}`.
        adjacency (torch.Tensor, optional): a given graph between the keys instead of kNN.
        detach_transition (bool): no gradient through :math:`\mathbf{P}`.
        dropout (float): SDPA's dropout on the seed weights.
        scale (float, optional): SDPA's score scale (default :math:`1/\sqrt{d}`).
    """
    transition, z, info = None, values, DiffusionInfo()
    if alpha > 0.0 and steps > 0:
        transition = sequence_transition(keys, num_neighbors, metric, temperature,
                                         key_padding_mask, is_causal, adjacency,
                                         detach_transition)
        z, info = diffuse_sequence(values, transition, alpha, steps, tol, checkpoint)
    out = F.scaled_dot_product_attention(query, keys, z, attn_mask=mask, dropout_p=dropout,
                                         is_causal=is_causal and mask is None, scale=scale)
    if mask is not None:  # queries with no visible key: zeros, not NaN
        out = out.masked_fill(~allowed_keys(mask).any(dim=-1, keepdim=True), 0.0)
    return SequenceAttention(out, transition, info)
