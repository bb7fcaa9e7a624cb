import math
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Linear, Module, MultiheadAttention

from .checks import (check_alpha, check_choice, check_positive_float, check_positive_int,
                      check_steps)
from .diffusion import diffuse
from .sequence import qgfd_attention


class QGFDAttention(Module):
    r"""Multi-head QGFD attention over dense sequences, a drop-in for
    :class:`torch.nn.MultiheadAttention`.

    Per head, with :math:`Q, K, V` the projected inputs and :math:`\mathbf{P}` a row-stochastic
    transition between the keys,

    .. math::
        p^{(0)} = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d}} + \text{mask}\right), \quad
        p^{(t+1)} = (1-\alpha)\, p^{(0)} + \alpha\, p^{(t)} \mathbf{P}, \quad
        \text{out} = p^{(T)} V \mathbf{W}_O,

    computed as :math:`\text{out} = \mathrm{SDPA}(Q, K, Z_T)` with the values diffused first,
    :math:`Z_{t+1} = (1-\alpha)V + \alpha \mathbf{P} Z_t` (:func:`qgfd_pyg.diffuse`), so memory
    stays :math:`O(B L (d + k))` and never :math:`O(B H L^2)` unless weights are asked for.
    :math:`\mathbf{P}` joins each key to its ``k`` most similar keys of the same head
    (:func:`qgfd_pyg.knn_transition`), or is the random walk of a given ``adjacency``.

    Causality and padding hold through :math:`\mathbf{P}` too: with ``is_causal`` row :math:`j`
    of :math:`\mathbf{P}` only reaches keys :math:`\le j`, and padded keys are never reached, so
    no position sees a later or padded one. Queries with no key to attend to get zeros.

    Args:
        embed_dim (int): model width :math:`E` (split over the heads).
        num_heads (int): number of heads :math:`H` (``embed_dim % num_heads == 0``).
        alpha (float, optional): the weight of the diffusion :math:`\alpha \in [0, 1]`, the
            probability of taking one more step (QGFD's ``alpha=0.85`` is APPNP's teleport
            ``alpha=0.15``); ``0`` is plain attention. (default: :obj:`0.85`)
        steps (int, optional): diffusion steps :math:`T`. (default: :obj:`4`)
        k (int, optional): neighbours per key of the kNN transition. (default: :obj:`8`)
        metric (str, optional): kNN similarity, ``"dot"`` or ``"cosine"``.
            (default: :obj:`"dot"`)
        temperature (float, optional): softmax temperature of the kNN transition.
            (default: :obj:`1.0`)
        dropout (float, optional): dropout on the seed attention weights (training only).
            (default: :obj:`0.0`)
        bias (bool, optional): biases in the input and output projections.
            (default: :obj:`True`)
        batch_first (bool, optional): inputs are ``[B, L, E]`` (else ``[L, B, E]``).
            (default: :obj:`True`)
        kdim (int, optional): feature size of ``key``. (default: :obj:`None`: ``embed_dim``)
        vdim (int, optional): feature size of ``value``. (default: :obj:`None`:
            ``embed_dim``)
        tol (float, optional): stop diffusing once the largest change of the values falls
            below ``tol``. (default: :obj:`None`: all ``steps``)
        alpha_warmup_steps (int, optional): ramp :math:`\alpha` linearly from 0 over this many
            training calls (0: no warm-up). (default: :obj:`0`)
        detach_transition (bool, optional): no gradient through :math:`\mathbf{P}`.
            (default: :obj:`False`)
        checkpoint (bool, optional): keep no per-step copy of the values for the backward
            pass; the diffusion runs again during it (see :func:`qgfd_pyg.diffuse`).
            (default: :obj:`False`)

    Shapes:
        - **input:** query :math:`(B, L_q, E)`, key :math:`(B, L_k, E_k)`, value
          :math:`(B, L_k, E_v)` (batch second if not ``batch_first``; unbatched
          :math:`(L, E)` also works), ``key_padding_mask`` :math:`(B, L_k)` (``True`` = ignore),
          ``attn_mask`` :math:`(L_q, L_k)` or :math:`(B H, L_q, L_k)` (bool ``True`` = not
          allowed, or float added to the scores), ``adjacency`` :math:`(L_k, L_k)` or
          :math:`(B, L_k, L_k)`, dense or sparse
        - **output:** :math:`(B, L_q, E)` and, if ``need_weights`` (the default, as in
          :class:`torch.nn.MultiheadAttention`; pass ``need_weights=False`` in models), the
          diffused distribution
          :math:`p^{(T)}` :math:`(B, L_q, L_k)` averaged over heads (or :math:`(B, H, L_q,
          L_k)`), which is dense and costs :math:`O(B H L_q L_k)`
    """

    def __init__(self, embed_dim: int, num_heads: int, alpha: float = 0.85, steps: int = 4,
                 k: int = 8, metric: str = "dot", temperature: float = 1.0,
                 dropout: float = 0.0, bias: bool = True, batch_first: bool = True,
                 kdim: Optional[int] = None, vdim: Optional[int] = None,
                 tol: Optional[float] = None, alpha_warmup_steps: int = 0,
                 detach_transition: bool = False, checkpoint: bool = False):
        super().__init__()
        self.embed_dim = check_positive_int("embed_dim", embed_dim)
        self.num_heads = check_positive_int("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.head_dim = embed_dim // num_heads
        self.kdim = check_positive_int("kdim", kdim) if kdim is not None else embed_dim
        self.vdim = check_positive_int("vdim", vdim) if vdim is not None else embed_dim
        self.alpha = check_alpha(alpha)
        self.steps = check_steps(steps)
        self.k = check_positive_int("k", k)
        self.metric = check_choice("metric", metric, ("dot", "cosine"))
        self.temperature = check_positive_float("temperature", temperature)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1) (got {dropout})")
        self.dropout = dropout
        self.batch_first = batch_first
        self.tol = check_positive_float("tol", tol, allow_none=True)
        self.alpha_warmup_steps = check_steps(alpha_warmup_steps)
        self.detach_transition = detach_transition
        self.checkpoint = checkpoint
        self.q_proj = Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = Linear(self.kdim, embed_dim, bias=bias)
        self.v_proj = Linear(self.vdim, embed_dim, bias=bias)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.reset_parameters()

    def reset_parameters(self):
        for lin in (self.q_proj, self.k_proj, self.v_proj):
            torch.nn.init.xavier_uniform_(lin.weight)
            if lin.bias is not None:
                torch.nn.init.zeros_(lin.bias)
        self.out_proj.reset_parameters()
        if self.out_proj.bias is not None:
            torch.nn.init.zeros_(self.out_proj.bias)
        self.num_updates.zero_()

    @classmethod
    def from_multihead(cls, mha: MultiheadAttention, **options) -> "QGFDAttention":
        """A QGFDAttention with the weights of ``mha`` (with ``alpha=0`` it computes the same)."""
        if not isinstance(mha, MultiheadAttention):
            raise ValueError(f"expected nn.MultiheadAttention (got {type(mha).__name__})")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("add_bias_kv and add_zero_attn are not supported")
        has_bias = mha.in_proj_bias is not None
        layer = cls(mha.embed_dim, mha.num_heads, dropout=options.pop("dropout", mha.dropout),
                    bias=has_bias, batch_first=mha.batch_first, kdim=mha.kdim, vdim=mha.vdim,
                    **options)
        layer = layer.to(device=mha.out_proj.weight.device, dtype=mha.out_proj.weight.dtype)
        E = mha.embed_dim
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                weights = mha.in_proj_weight.split(E)
            else:
                weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            biases = mha.in_proj_bias.split(E) if has_bias else (None,) * 3
            for lin, w, b in zip((layer.q_proj, layer.k_proj, layer.v_proj), weights, biases,
                                 strict=True):
                lin.weight.copy_(w)
                if b is not None:
                    lin.bias.copy_(b)
            layer.out_proj.weight.copy_(mha.out_proj.weight)
            if has_bias:
                layer.out_proj.bias.copy_(mha.out_proj.bias)
        return layer

    def current_alpha(self) -> float:
        """:math:`\\alpha` after the warm-up ramp (the target once warm-up is over)."""
        if self.alpha_warmup_steps == 0:
            return self.alpha
        return self.alpha * min(1.0, int(self.num_updates) / self.alpha_warmup_steps)

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Optional[Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False, adjacency: Optional[Tensor] = None
                ) -> Tuple[Tensor, Optional[Tensor]]:
        """See the class docstring; the call of :meth:`torch.nn.MultiheadAttention.forward`
        (the same argument order and defaults), plus ``adjacency``."""
        unbatched = query.dim() == 2
        query, key, value = self._batch(query, key, value, unbatched)
        B, Lq, Lk, H, d = query.size(0), query.size(1), key.size(1), self.num_heads, self.head_dim
        queries = self.q_proj(query).view(B, Lq, H, d).transpose(1, 2)
        keys = self.k_proj(key).view(B, Lk, H, d).transpose(1, 2)
        values = self.v_proj(value).view(B, Lk, H, d).transpose(1, 2)
        if key_padding_mask is not None:
            key_padding_mask = self._padding(key_padding_mask, B, Lk, unbatched)
        mask = self._seed_mask(attn_mask, key_padding_mask, is_causal, B, Lq, Lk, queries.dtype)

        alpha = self.current_alpha()
        if self.training and self.alpha_warmup_steps:
            self.num_updates += 1
        out, P, info = qgfd_attention(
            queries, keys, values, mask, is_causal, alpha=alpha, steps=self.steps,
            num_neighbors=self.k, metric=self.metric, temperature=self.temperature,
            key_padding_mask=key_padding_mask, adjacency=adjacency,
            detach_transition=self.detach_transition, tol=self.tol, checkpoint=self.checkpoint,
            dropout=self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(B, Lq, H * d))

        weights = None
        if need_weights:
            weights = self._diffused_weights(queries, keys, mask, is_causal, P, alpha, info.steps)
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if unbatched:
                weights = weights.squeeze(0)
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _batch(self, query, key, value, unbatched):
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(f"query, key and value must all be [B, L, E] (or unbatched [L, E]); "
                             f"got {list(query.shape)}, {list(key.shape)}, {list(value.shape)}")
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if query.size(-1) != self.embed_dim or key.size(-1) != self.kdim \
                or value.size(-1) != self.vdim:
            raise ValueError(f"feature sizes (query {query.size(-1)}, key {key.size(-1)}, value "
                             f"{value.size(-1)}) do not match embed_dim={self.embed_dim}, "
                             f"kdim={self.kdim}, vdim={self.vdim}")
        if key.shape[:2] != value.shape[:2] or query.size(0) != key.size(0):
            raise ValueError(f"batch and key lengths must match: query {list(query.shape)}, "
                             f"key {list(key.shape)}, value {list(value.shape)}")
        if not query.dtype.is_floating_point:
            raise ValueError(f"inputs must be floating point (got {query.dtype})")
        return query, key, value

    @staticmethod
    def _padding(mask: Tensor, B: int, L: int, unbatched: bool) -> Tensor:
        mask = mask.unsqueeze(0) if unbatched and mask.dim() == 1 else mask
        if mask.shape != (B, L):
            raise ValueError(f"key_padding_mask must be [B, L_k] = [{B}, {L}] "
                             f"(got {list(mask.shape)})")
        if mask.dtype != torch.bool:
            if mask.dtype.is_floating_point:
                return torch.isneginf(mask)  # additive float mask: -inf = ignore
            raise ValueError(f"key_padding_mask must be bool or float (got {mask.dtype})")
        return mask

    def _seed_mask(self, attn_mask, key_padding_mask, is_causal, B, Lq, Lk, dtype):
        """One additive mask [B, 1 or H, Lq, Lk] for SDPA (None when there is nothing to mask
        but causality, which SDPA's is_causal handles)."""
        if attn_mask is None and key_padding_mask is None:
            return None
        mask = torch.zeros(B, 1, Lq, Lk, dtype=dtype, device=(
            key_padding_mask if key_padding_mask is not None else attn_mask).device)
        if attn_mask is not None:
            if attn_mask.dim() == 2 and attn_mask.shape == (Lq, Lk):
                attn_mask = attn_mask.view(1, 1, Lq, Lk)
            elif attn_mask.dim() == 3 and attn_mask.shape == (B * self.num_heads, Lq, Lk):
                attn_mask = attn_mask.view(B, self.num_heads, Lq, Lk)
            else:
                raise ValueError(f"attn_mask must be [L_q, L_k] or [B * heads, L_q, L_k] = "
                                 f"[{B * self.num_heads}, {Lq}, {Lk}] "
                                 f"(got {list(attn_mask.shape)})")
            if attn_mask.dtype == torch.bool:
                mask = mask.masked_fill(attn_mask, float("-inf"))
            else:
                mask = mask + attn_mask.to(dtype)
        if key_padding_mask is not None:
            mask = mask.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        if is_causal:
            future = torch.ones(Lq, Lk, dtype=torch.bool, device=mask.device).triu(1)
            mask = mask.masked_fill(future, float("-inf"))
        return mask

    def _diffused_weights(self, queries, keys, mask, is_causal, P, alpha, steps):
        """Dense p_T = p0 M [B, H, Lq, Lk], by diffusing p0^T over P^T (costly: O(B H Lq Lk))."""
        B, H, Lq, d = queries.shape
        Lk = keys.size(2)
        scores = (queries @ keys.transpose(-1, -2)).float() / math.sqrt(d)
        if mask is not None:
            scores = scores + mask.float()
        elif is_causal:
            scores = scores.masked_fill(
                torch.ones(Lq, Lk, dtype=torch.bool, device=queries.device).triu(1), float("-inf"))
        p0 = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        if P is None or steps == 0:
            return p0
        columns = p0.transpose(-1, -2).reshape(B * H * Lk, Lq)
        pT = diffuse(columns, P.t(), alpha, steps)
        return pT.view(B, H, Lk, Lq).transpose(-1, -2)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.embed_dim}, num_heads={self.num_heads}, "
                f"alpha={self.alpha}, steps={self.steps}, k={self.k})")
