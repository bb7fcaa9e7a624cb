"""Which kernels run a flow step with per-query relation weights where numba's does not."""
import importlib.util
import os

from torch import Tensor

from ..checks import check_choice

FLOW_BACKENDS = ("torch", "triton")
_flow_backend = {"name": "torch"}


def set_flow_backend(name: str) -> None:
    """Chooses how :func:`relational_flow` runs a step with per-query relation weights where
    numba's compiled step does not (GPUs, no numba).

    Args:
        name (str): ``"torch"`` (the starting choice: gathers over the (source, relation)
            pairs and torch's CSR products) or ``"triton"`` (two Triton kernels,
            :mod:`qgfd_pyg.relational.triton_kernels`, that read each source row once per edge; CUDA
            tensors, or CPU tensors under Triton's interpreter; opt-in until timed on a GPU:
            ``benchmarks/perf_flow.py --device cuda``).
    """
    _flow_backend["name"] = check_flow_backend(name)


def check_flow_backend(name: str) -> str:
    """``name`` if :func:`set_flow_backend` can take it, else a ValueError that says why
    (``"triton"`` needs the triton package), without changing the backend.

    Args:
        name (str): the backend's name, ``"torch"`` or ``"triton"``.
    """
    name = check_choice("flow backend", name, FLOW_BACKENDS)
    if name == "triton" and importlib.util.find_spec("triton") is None:
        raise ValueError("flow backend 'triton' needs the triton package")
    return name


def get_flow_backend() -> str:
    """The backend :func:`set_flow_backend` chose (``"torch"`` until it is called)."""
    return _flow_backend["name"]


def use_triton(x: Tensor) -> bool:
    return _flow_backend["name"] == "triton" and (
        x.device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1")


