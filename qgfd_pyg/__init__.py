"""qgfd-pyg: Query-Graph-Flow Diffusion for PyTorch Geometric.

The names below load their modules on first use (PEP 562), so that ``import qgfd_pyg`` and
the runner's command line (``python -m qgfd_pyg.bench --help``) do not import PyG until a
layer is asked for."""
import importlib
from typing import Any, List

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "QGFDAttention": "attention",
    "QGFDConv": "conv",
    "QGFD": "models",
    "InputDropout": "models",
    "DiffusionInfo": "diffusion",
    "diffuse": "diffusion",
    "kernel_coefficients": "diffusion",
    "ppr_hop_weights": "diffusion",
    "RelationalGraph": "relational",
    "RelationalQGFD": "relational",
    "relational_flow": "relational",
    "set_flow_backend": "relational",
    "get_flow_backend": "relational",
    "check_flow_backend": "relational",
    "set_spmm_backend": "spmm",
    "get_spmm_backend": "spmm",
    "graph_transition": "transition",
    "knn_transition": "transition",
    "from_networkx": "transition",
    "from_scipy": "transition",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_EXPORTS))
