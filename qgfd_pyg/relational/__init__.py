r"""Query-conditioned flows over typed graphs, and the model built on them.

- :class:`RelationalGraph` (``graph.py``): a typed graph sorted once for the flow;
- :func:`relational_flow` (``flow.py``): seeds diffused over per-query, per-step mixtures of
  relations; its steps (``steps.py``: numba's compiled step, the torch and Triton paths, the
  one-matrix step of shared weights), the active-row flow (``active.py``), the backend choice
  (``backend.py``) and the Triton kernels (``triton_kernels.py``, imported when chosen);
- :class:`RelationalQGFD` (``model.py``): knowledge-graph completion and multi-hop questions
  by a flow from the query's anchor.
"""
from .backend import check_flow_backend, get_flow_backend, set_flow_backend
from .flow import relational_flow
from .graph import RelationalGraph
from .model import CONTROLLERS, Controls, RelationalQGFD, compose
from .steps import NORMALIZATIONS, relational_step, shared_step

__all__ = [
    "RelationalGraph",
    "relational_flow",
    "relational_step",
    "shared_step",
    "RelationalQGFD",
    "Controls",
    "compose",
    "CONTROLLERS",
    "NORMALIZATIONS",
    "set_flow_backend",
    "get_flow_backend",
    "check_flow_backend",
]
