"""Input validation shared by every public entry point, and offered to code built on the
package (the benchmark runner, your own layers) so that it raises the same errors.

Each check raises a :class:`ValueError` naming the argument and what is wrong with it, so that
bad input never fails deep inside torch or turns silently into NaN.
"""
from typing import Optional

import torch
from torch import Tensor


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:  # also rejects NaN
        raise ValueError(f"alpha must lie in [0, 1] (got {alpha})")
    return alpha


def check_steps(steps: int) -> int:
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer (got {steps!r})")
    return int(steps)


def check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer (got {value!r})")
    return int(value)


def check_positive_float(name: str, value: Optional[float], allow_none: bool = False):
    if value is None and allow_none:
        return None
    value = float(value)
    if not value > 0.0 or value == float("inf"):  # rejects NaN, 0, negatives, inf
        raise ValueError(f"{name} must be a positive finite number (got {value})")
    return value


def check_choice(name: str, value: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)} (got {value!r})")
    return value


def check_values(tensor: Tensor) -> bool:
    """Whether to check ``tensor``'s values (its range, NaN): reading them is a device sync on
    GPUs and a graph break under ``torch.compile``, so, as PyG does, they are checked on CPU
    tensors in eager mode, and elsewhere only on request (``torch_geometric.debug()``).
    Dtypes and shapes are always checked."""
    import torch_geometric

    if torch_geometric.is_debug_enabled():
        return True
    return tensor.device.type == "cpu" and not torch.compiler.is_compiling()


def check_edge_index(edge_index: Tensor, num_nodes: int) -> None:
    """``edge_index`` must be an integer tensor [2, E] with entries in [0, num_nodes) (the
    range only where :func:`check_values` allows)."""
    if not isinstance(edge_index, Tensor):
        raise ValueError(f"edge_index must be a torch.Tensor (got {type(edge_index).__name__})")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape [2, num_edges] "
                         f"(got {list(edge_index.shape)})")
    if edge_index.dtype.is_floating_point or edge_index.dtype == torch.bool:
        raise ValueError(f"edge_index must hold integers (got dtype {edge_index.dtype})")
    if edge_index.numel() > 0 and check_values(edge_index):
        lo, hi = int(edge_index.min()), int(edge_index.max())
        if lo < 0 or hi >= num_nodes:
            raise ValueError(
                f"edge_index holds node indices in [{lo}, {hi}], outside [0, {num_nodes}) "
                f"for num_nodes={num_nodes}")


def check_edge_weight(edge_weight: Optional[Tensor], num_edges: int) -> None:
    """Edge weights must be a finite, non-negative vector with one entry per edge (the values
    only where :func:`check_values` allows)."""
    if edge_weight is None:
        return
    if not isinstance(edge_weight, Tensor):
        raise ValueError(f"edge_weight must be a torch.Tensor (got {type(edge_weight).__name__})")
    if edge_weight.dim() != 1 or edge_weight.numel() != num_edges:
        raise ValueError(f"edge_weight must have shape [{num_edges}] to match the edges "
                         f"(got {list(edge_weight.shape)})")
    if not edge_weight.dtype.is_floating_point:
        raise ValueError(f"edge_weight must be floating point (got dtype {edge_weight.dtype})")
    if num_edges > 0 and check_values(edge_weight):
        if not bool(torch.isfinite(edge_weight).all()):
            raise ValueError("edge_weight contains NaN or infinite values")
        if bool((edge_weight < 0).any()):
            raise ValueError("edge_weight contains negative values; transition weights "
                             "must be >= 0")


__all__ = ["check_alpha", "check_steps", "check_positive_int", "check_positive_float",
           "check_choice", "check_values", "check_edge_index", "check_edge_weight"]
