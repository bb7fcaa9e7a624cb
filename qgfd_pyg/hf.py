"""Switch a HuggingFace transformers model's attention to QGFD in one call.

    from qgfd_pyg.hf import patch_model, unpatch_model
    patch_model(model, alpha=0.85, steps=4, k=8)   # every self-attention layer, or layers=[...]
    ...
    unpatch_model(model)                            # back to the implementation it had

It registers an attention function (``"qgfd"``) with transformers' ``AttentionInterface`` and
the matching mask builder with ``AttentionMaskInterface`` (without the latter the model hands
the function no mask at all), then selects it with ``model.set_attn_implementation``. No module
is rewritten: masks, the causal flag, the KV cache and ``generate()`` keep working. Models that
do not route attention through that interface are refused with a ``ValueError``.

With a cache, the keys of a decoding step are all positions so far; the transition is rebuilt
over them with causal rows, so cached and uncached generation compute the same thing.
"""
from typing import Any, Dict, Iterable, List, Optional

import torch
from torch import Tensor
from torch.nn import Module

from .checks import (check_alpha, check_choice, check_positive_float, check_positive_int,
                      check_steps)
from .sequence import allowed_keys, qgfd_attention

KEY = "qgfd"
_OPTIONS = "qgfd_options"


def _transformers():
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("qgfd_pyg.hf needs transformers: pip install 'qgfd-pyg[hf]'") from error
    return transformers


def qgfd_attention_function(module: Module, query: Tensor, key: Tensor, value: Tensor,
                            attention_mask: Optional[Tensor], dropout: float = 0.0,
                            scaling: Optional[float] = None, is_causal: Optional[bool] = None,
                            **kwargs) -> tuple:
    """transformers attention function: query ``[B, H, Lq, d]``, key/value ``[B, H_kv, Lk, d]``,
    mask ``[B, 1, Lq, Lk]`` (bool, True = attend, or additive float) or None; returns the
    output ``[B, Lq, H, d]`` and no weights. Layers without QGFD options run plain SDPA."""
    options = getattr(module, _OPTIONS, None)
    if options is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    groups = query.size(1) // key.size(1)
    if groups > 1:  # grouped-query attention: query head h reads key/value head h // groups
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", False))
    Lq, Lk = query.size(2), key.size(2)
    padding = None
    mask = attention_mask
    if mask is not None:  # keys that no query may see: [B, Lk]
        padding = ~allowed_keys(mask).any(dim=-2).any(dim=1)
        padding = padding.expand(query.size(0), Lk)
    elif causal:  # bottom-right aligned (queries are the last Lq keys; SDPA's flag is not)
        mask = torch.ones(Lq, Lk, dtype=torch.bool, device=query.device).tril(Lk - Lq)
    out = qgfd_attention(query, key, value, mask, causal,
                         alpha=options["alpha"], steps=options["steps"],
                         num_neighbors=options["k"], metric=options["metric"],
                         temperature=options["temperature"], key_padding_mask=padding,
                         tol=options["tol"], dropout=dropout if module.training else 0.0,
                         scale=scaling).out
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Registers the ``"qgfd"`` attention function and its mask builder with transformers."""
    transformers = _transformers()
    from transformers.masking_utils import sdpa_mask

    transformers.AttentionInterface.register(KEY, qgfd_attention_function)
    transformers.AttentionMaskInterface.register(KEY, sdpa_mask)


def attention_layers(model: Module) -> List[Module]:
    """The attention modules that call the attention interface (they carry ``layer_idx``,
    ``is_causal`` and ``scaling``, as transformers' attention layers do)."""
    return [m for m in model.modules()
            if all(hasattr(m, name) for name in ("layer_idx", "is_causal", "scaling"))]


def patch_model(model: Module, alpha: float = 0.85, steps: int = 4, k: int = 8,
                layers: Optional[Iterable[int]] = None, metric: str = "dot",
                temperature: float = 1.0, tol: Optional[float] = None) -> Module:
    r"""Makes ``model``'s attention layers (all, or those whose ``layer_idx`` is in ``layers``)
    compute QGFD attention. Returns the model (patched in place).

    Args:
        model (transformers.PreTrainedModel): a model whose attention goes through
            transformers' ``AttentionInterface`` (``_supports_attention_backend``).
        alpha (float, optional): the weight of the diffusion :math:`\alpha \in [0, 1]` (QGFD's
            ``alpha=0.85`` is APPNP's teleport ``alpha=0.15``); ``0`` is the model's own
            attention. (default: :obj:`0.85`)
        steps (int, optional): diffusion steps. (default: :obj:`4`)
        k (int, optional): neighbours per key of the kNN transition. (default: :obj:`8`)
        layers (iterable of int, optional): the ``layer_idx`` of the layers to patch.
            (default: :obj:`None`: all)
        metric (str, optional): kNN similarity, ``"dot"`` or ``"cosine"``.
            (default: :obj:`"dot"`)
        temperature (float, optional): softmax temperature of the kNN transition.
            (default: :obj:`1.0`)
        tol (float, optional): early stop of the diffusion. (default: :obj:`None`)
    """
    transformers = _transformers()
    if not isinstance(model, transformers.PreTrainedModel):
        raise ValueError(f"expected a transformers PreTrainedModel (got {type(model).__name__})")
    if not getattr(model, "_supports_attention_backend", False):
        raise ValueError(f"{type(model).__name__} does not route attention through transformers' "
                         f"AttentionInterface (_supports_attention_backend is False), so its "
                         f"attention cannot be switched to QGFD without rewriting the model")
    if getattr(model, "_qgfd_previous_attn", None) is not None:
        raise ValueError("the model is patched already; call unpatch_model first")
    options: Dict[str, Any] = {
        "alpha": check_alpha(alpha), "steps": check_steps(steps), "k": check_positive_int("k", k),
        "metric": check_choice("metric", metric, ("dot", "cosine")),
        "temperature": check_positive_float("temperature", temperature),
        "tol": check_positive_float("tol", tol, allow_none=True)}
    modules = attention_layers(model)
    if not modules:
        raise ValueError(f"found no attention layers (modules with layer_idx, is_causal and "
                         f"scaling) in {type(model).__name__}")
    available = sorted({m.layer_idx for m in modules})
    wanted = set(available) if layers is None else set(layers)
    if not wanted <= set(available):
        raise ValueError(f"layers {sorted(wanted - set(available))} do not exist; the model's "
                         f"attention layers are {available}")
    register()
    previous = model.config._attn_implementation
    for module in modules:
        if module.layer_idx in wanted:
            setattr(module, _OPTIONS, dict(options))
    model.set_attn_implementation(KEY)
    model._qgfd_previous_attn = previous
    return model


def unpatch_model(model: Module) -> Module:
    """Restores the attention implementation ``model`` had before :func:`patch_model`.

    Args:
        model (transformers.PreTrainedModel): a model patched by :func:`patch_model`.
    """
    previous = getattr(model, "_qgfd_previous_attn", None)
    if previous is None:
        raise ValueError("the model is not patched with QGFD")
    for module in attention_layers(model):
        if hasattr(module, _OPTIONS):
            delattr(module, _OPTIONS)
    model.set_attn_implementation(previous)
    model._qgfd_previous_attn = None
    return model
