"""CPU routines compiled with numba (optional: ``pip install qgfd-pyg[fast]``).

:func:`routines` returns them, or ``None`` when numba is not installed; callers then use their
torch implementations. The routines live in one module per operation, each compiled with the
flavours of :mod:`.jit`:

- :mod:`.sparse`: the CSR product ``P Z``, the fixed-``P`` diffusion in one routine, the tiled
  transpose;
- :mod:`.edges`: per-edge dot products, segment sums, the edge softmax and its backward;
- :mod:`.structure`: a graph's unique entries (counting sorts) and its transition's values;
- :mod:`.typed_flow`: the query-conditioned flow's steps and their backwards.

Every routine is parallel over output rows (or edges), so no two threads write the same
memory, and runs on as many threads as torch is set to use.
"""
from types import SimpleNamespace
from typing import Optional

import torch

_state = {}


def routines() -> Optional[SimpleNamespace]:
    """The compiled routines (``None`` without numba). Each runs outside ``torch.compile``'s
    tracing (a graph break): dynamo must not trace into numba's own compilation, which a
    model compiled before any eager call would otherwise hit on its first call."""
    if "routines" not in _state:
        _state["routines"] = _eager(_compile())
    return _state["routines"]


@torch.compiler.disable
def _eager(compiled: Optional[SimpleNamespace]) -> Optional[SimpleNamespace]:
    if compiled is None:
        return None
    return SimpleNamespace(**{name: torch.compiler.disable(value) if callable(value) else value
                              for name, value in vars(compiled).items()})


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the compiled routines can take these tensors (CPU, float32/float64, no autograd)."""
    return routines() is not None and all(
        t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
        and not t.requires_grad for t in tensors)


def set_threads() -> None:
    k = routines()
    k.set_num_threads(max(1, min(torch.get_num_threads(), k.max_threads)))


def _compile() -> Optional[SimpleNamespace]:
    try:
        import numba
    except ImportError:
        return None
    from . import edges, sparse, structure, typed_flow

    found = {name: getattr(module, name) for module in (sparse, edges, structure, typed_flow)
             for name in module.__all__}
    return SimpleNamespace(**found, set_num_threads=numba.set_num_threads,
                           max_threads=numba.config.NUMBA_NUM_THREADS)
