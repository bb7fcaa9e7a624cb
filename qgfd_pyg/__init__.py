"""qgfd-pyg: Query-Graph-Flow Diffusion for PyTorch Geometric."""
from .attention import QGFDAttention
from .conv import QGFDConv
from .models import QGFD, InputDropout
from .diffusion import DiffusionInfo, diffuse, kernel_coefficients, ppr_hop_weights
from .relational import (RelationalGraph, RelationalQGFD, check_flow_backend, get_flow_backend,
                         relational_flow, set_flow_backend)
from .spmm import get_spmm_backend, set_spmm_backend
from .transition import from_networkx, from_scipy, graph_transition, knn_transition

__version__ = "0.1.0"

__all__ = [
    "QGFDAttention",
    "QGFDConv",
    "QGFD",
    "InputDropout",
    "DiffusionInfo",
    "diffuse",
    "kernel_coefficients",
    "ppr_hop_weights",
    "RelationalGraph",
    "RelationalQGFD",
    "relational_flow",
    "set_flow_backend",
    "get_flow_backend",
    "check_flow_backend",
    "set_spmm_backend",
    "get_spmm_backend",
    "graph_transition",
    "knn_transition",
    "from_networkx",
    "from_scipy",
    "__version__",
]
