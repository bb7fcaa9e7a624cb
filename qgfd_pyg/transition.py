"""Row-stochastic transitions P over the keys, the operator that QGFD diffuses over.

Every builder returns a sparse ``[N, N]`` matrix whose row ``i`` says where probability mass
sitting at node ``i`` flows in one step (each row sums to one): a
:class:`torch_sparse.SparseTensor` where torch-sparse is installed, else a torch sparse COO
tensor (see :func:`qgfd_pyg.spmm.sparse_matrix`); :func:`qgfd_pyg.diffuse` takes either.
"""
import importlib.util
import math
import numbers
import os
from typing import Any, Hashable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.typing import SparseTensor

from .checks import (check_choice, check_edge_index, check_edge_weight, check_positive_float,
                      check_positive_int)
from .spmm import Transition, sparse_matrix
from .structure import transition_entries, unique_entries

GraphLike = Union[Tensor, SparseTensor]


def _to_coo(graph: GraphLike, num_nodes: Optional[int],
            edge_weight: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor], int]:
    """Brings edge_index / SparseTensor / torch sparse input to (edge_index, weight, N)."""
    if isinstance(graph, Tensor) and graph.layout != torch.strided:  # torch COO / CSR / CSC
        coo = graph.to_sparse_coo().coalesce()
        if coo.dim() != 2:
            raise ValueError(f"a transition needs a 2-D adjacency (got shape "
                             f"{list(coo.shape)})")
        return _checked_adjacency(tuple(coo.shape), num_nodes, edge_weight, coo.indices(),
                                  coo.values())
    if isinstance(graph, SparseTensor):
        row, col, value = graph.coo()
        return _checked_adjacency(graph.sparse_sizes(), num_nodes, edge_weight,
                                  torch.stack([row, col]), value)
    if num_nodes is None:
        check_edge_index(edge_index=graph, num_nodes=2**62)
        num_nodes = int(graph.max()) + 1 if graph.numel() > 0 else 0
    if int(num_nodes) < 0:
        raise ValueError(f"num_nodes must be >= 0 (got {num_nodes})")
    check_edge_index(graph, int(num_nodes))
    return graph.long(), edge_weight, int(num_nodes)


def _checked_adjacency(sizes: Tuple[int, int], num_nodes: Optional[int],
                       edge_weight: Optional[Tensor], index: Tensor, value: Optional[Tensor]
                       ) -> Tuple[Tensor, Optional[Tensor], int]:
    """(edge_index, weight, N) of a sparse adjacency, its size and values checked."""
    n_rows, n_cols = sizes
    if n_rows != n_cols:
        raise ValueError(f"a transition needs a square adjacency (got {n_rows} x {n_cols})")
    if num_nodes is not None and num_nodes != n_rows:
        raise ValueError(f"num_nodes={num_nodes} does not match the adjacency's size {n_rows}")
    if value is not None and edge_weight is not None:
        raise ValueError("the adjacency already carries values; do not pass edge_weight too")
    if value is not None and value.dim() != 1:
        raise ValueError(f"adjacency values must be scalars per edge "
                         f"(got shape {list(value.shape)})")
    return index, edge_weight if value is None else value, n_rows


def graph_transition(edge_index: GraphLike, num_nodes: Optional[int] = None,
                     edge_weight: Optional[Tensor] = None,
                     add_self_loops: bool = True, normalization: str = "rw") -> Transition:
    r"""Random-walk transition :math:`P = D^{-1} A` of a graph (``normalization="rw"``), or
    its symmetric normalisation :math:`D^{-1/2} A D^{-1/2}` (``"sym"``, APPNP's and GCN's),
    with :math:`D` the out-weights :math:`A \mathbf{1}`. ``"sym"`` gives up row-stochasticity:
    its rows do not sum to one, so the diffused :math:`p_T` is no longer a distribution.

    Edge ``(i, j)`` (``edge_index[:, e] = [i, j]``, or entry ``[i, j]`` of a sparse adjacency)
    sends mass from ``i`` to ``j`` in proportion to its weight. Duplicate edges are summed.
    With ``add_self_loops=True`` every node without a self-loop gets one of weight 1 (existing
    self-loops keep their weight). A *dangling* node, one whose out-weights sum to zero (no
    out-edges, or only zero-weight ones), always gets a self-loop of weight 1, so every row of
    ``P`` is stochastic and diffusion never loses mass.

    Args:
        edge_index (torch.Tensor or SparseTensor): ``[2, E]`` edge indices, a
            :class:`torch_sparse.SparseTensor` or a torch sparse tensor ``[N, N]`` (its values
            are the edge weights).
        num_nodes (int, optional): number of nodes ``N`` (default: ``max(edge_index) + 1``).
        edge_weight (torch.Tensor, optional): non-negative finite weights ``[E]``.
            (default: :obj:`None`: every edge weighs 1)
        add_self_loops (bool, optional): add a unit self-loop to every node without one.
            (default: :obj:`True`)
        normalization (str, optional): ``"rw"`` (the random walk :math:`D^{-1} A`, rows sum
            to 1) or ``"sym"`` (:math:`D^{-1/2} A D^{-1/2}`, APPNP's). (default: :obj:`"rw"`)

    Shapes:
        - **input:** edge indices :math:`(2, |\mathcal{E}|)`, weights :math:`(|\mathcal{E}|)`
        - **output:** SparseTensor :math:`(N, N)`, row-stochastic for ``"rw"``
    """
    check_choice("normalization", normalization, ("rw", "sym"))
    edge_index, edge_weight, n = _to_coo(edge_index, num_nodes, edge_weight)
    check_edge_weight(edge_weight, edge_index.size(1))
    entries = unique_entries(edge_index[0], edge_index[1], n, edge_weight, self_loops=True)
    keep, value = transition_entries(entries, n, add_self_loops, normalization)
    if bool(keep.all()):
        return sparse_matrix(entries.row, entries.col, value, n, is_sorted=True,
                             rowptr=entries.rowptr)
    return sparse_matrix(entries.row[keep], entries.col[keep], value[keep], n, is_sorted=True)


def knn_transition(keys: Tensor, k: int, metric: str = "dot", temperature: float = 1.0,
                   causal: bool = False, mask: Optional[Tensor] = None,
                   chunk_size: Optional[int] = None, backend: str = "auto") -> Transition:
    r"""Sparse transition from the ``k`` nearest keys of every key.

    Row ``i`` keeps the ``k`` largest similarities :math:`s_{ij}` (exact top-k) and applies a
    softmax over them, :math:`P_{ij} = \exp(s_{ij}/\tau) / \sum_{j' \in \mathrm{top}_k(i)}
    \exp(s_{ij'}/\tau)`, with :math:`s_{ij} = k_i^\top k_j / \sqrt{d}` (``"dot"``) or the cosine
    similarity (``"cosine"``). Similarities are computed in row chunks, so memory stays
    :math:`O(\text{chunk} \cdot N)`, or on CUDA by a fused Triton kernel that keeps only a
    running top-k per row (:mod:`qgfd_pyg.knn_triton`); the kept entries are recomputed with
    autograd, so ``P`` is differentiable w.r.t. ``keys`` (call with ``keys.detach()`` to stop
    that).

    A batch of key sets ``[B, N, d]`` gives one block-diagonal ``[B * N, B * N]`` transition,
    block ``b`` built from ``keys[b]`` alone (heads or sequences never mix).

    Args:
        keys (torch.Tensor): keys ``[N, d]`` or ``[B, N, d]``.
        k (int): neighbours per row (``min(k, N)`` when fewer keys exist).
        metric (str, optional): ``"dot"`` or ``"cosine"``. (default: :obj:`"dot"`)
        temperature (float, optional): softmax temperature :math:`\tau > 0`.
            (default: :obj:`1.0`)
        causal (bool, optional): row ``i`` only selects keys ``j <= i``.
            (default: :obj:`False`)
        mask (torch.Tensor, optional): boolean ``[N]`` or ``[B, N]``; ``True`` marks keys that are
            never selected (e.g. padding, as in ``key_padding_mask``). A row left with no
            selectable key gets a self-loop. (default: :obj:`None`)
        chunk_size (int, optional): rows per chunk. (default: :obj:`None`: about
            :math:`2^{22}/(B N)`, 16 MB of similarities at a time)
        backend (str, optional): ``"auto"`` (the Triton kernel for float32 / half-precision
            CUDA keys when Triton is installed, else the chunks), ``"torch"`` (the chunks) or
            ``"triton"`` (the kernel; on the CPU only under ``TRITON_INTERPRET=1``). The kernel
            compares in float32. (default: :obj:`"auto"`)

    Shapes:
        - **input:** keys :math:`(N, d)` or :math:`(B, N, d)`
        - **output:** row-stochastic SparseTensor :math:`(B N, B N)` with at most ``k``
          entries per row
    """
    if not isinstance(keys, Tensor) or keys.dim() not in (2, 3):
        raise ValueError(f"keys must be a tensor [N, d] or [B, N, d] "
                         f"(got {getattr(keys, 'shape', type(keys).__name__)})")
    k = check_positive_int("k", k)
    check_choice("metric", metric, ("dot", "cosine"))
    temperature = check_positive_float("temperature", temperature)
    if not keys.dtype.is_floating_point:
        raise ValueError(f"keys must be floating point (got dtype {keys.dtype})")
    if not bool(torch.isfinite(keys).all()):
        raise ValueError("keys contain NaN or infinite values")
    batched = keys.dim() == 3
    keys = keys if batched else keys.unsqueeze(0)
    B, N, d = keys.shape
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a boolean tensor (got dtype {mask.dtype})")
        mask = mask if mask.dim() == 2 else mask.unsqueeze(0)
        if mask.shape != (B, N) and not (mask.shape == (1, N) and not batched):
            raise ValueError(f"mask must have shape {[B, N] if batched else [N]} to match the "
                             f"keys (got {list(mask.shape)})")
    chunk_size = (max(1, 2**22 // max(B * N, 1)) if chunk_size is None
                  else check_positive_int("chunk_size", chunk_size))
    kk = min(k, N)

    feats = keys / math.sqrt(d) if metric == "dot" else torch.nn.functional.normalize(keys, dim=-1)
    other = keys if metric == "dot" else feats
    with torch.no_grad():
        if _use_triton(backend, keys):
            from .knn_triton import topk_similar
            kept, index = topk_similar(feats, other, kk, causal, mask)
            kept = kept.to(keys.dtype)
        else:
            kept, index = _chunked_topk(feats, other, kk, causal, mask, chunk_size)
        valid = kept > float("-inf")
        # Rows without any selectable key keep their mass (self-loop).
        empty = ~valid.any(dim=-1)
        if bool(empty.any()):
            self_index = torch.arange(N, device=keys.device).expand(B, N)
            index[..., 0] = torch.where(empty, self_index, index[..., 0])
            kept[..., 0] = kept[..., 0].masked_fill(empty, 0.0)
            valid[..., 0] |= empty
        # Column order within each row (invalid slots last), so the entries come out sorted.
        index, order = index.masked_fill(~valid, N).sort(dim=-1)
        valid = valid.gather(-1, order)
        index = index.masked_fill(~valid, 0)
        kept = kept.gather(-1, order)

    if torch.is_grad_enabled() and keys.requires_grad:
        # Recompute the kept similarities with autograd: O(B * N * k * d), never O(N^2).
        neigh = torch.gather(other, 1, index.view(B, N * kk, 1).expand(-1, -1, d))
        kept = (feats.unsqueeze(2) * neigh.view(B, N, kk, d)).sum(-1)
    logits = (kept / temperature).masked_fill(~valid, float("-inf"))
    value = torch.softmax(logits, dim=-1)

    offset = (torch.arange(B, device=keys.device) * N).view(B, 1, 1)
    row = (torch.arange(N, device=keys.device).view(1, N, 1) + offset).expand(B, N, kk)
    row, col, value = row.reshape(-1), (index + offset).reshape(-1), value.reshape(-1)
    if not bool(valid.all()):
        keep = valid.view(-1)
        row, col, value = row[keep], col[keep], value[keep]
    return sparse_matrix(row, col, value, B * N, is_sorted=True)


KNN_BACKENDS = ("auto", "torch", "triton")


def _chunked_topk(feats: Tensor, other: Tensor, k: int, causal: bool, mask: Optional[Tensor],
                  chunk_size: int) -> Tuple[Tensor, Tensor]:
    """The ``k`` largest ``feats[b, i] . other[b, j]`` per row, ``[B, c, N]`` similarities
    at a time: ``(values, indices)`` ``[B, N, k]``, ``-inf`` where no key is selectable."""
    B, N, _ = feats.shape
    values = feats.new_empty((B, N, k))
    index = feats.new_empty((B, N, k), dtype=torch.long)
    for start in range(0, N, chunk_size):
        stop = min(start + chunk_size, N)
        sim = feats[:, start:stop] @ other.transpose(1, 2)  # [B, c, N]
        if mask is not None:
            sim.masked_fill_(mask[:, None, :], float("-inf"))
        if causal:
            rows = torch.arange(start, stop, device=feats.device)
            future = torch.arange(N, device=feats.device)[None, :] > rows[:, None]
            sim.masked_fill_(future[None], float("-inf"))
        values[:, start:stop], index[:, start:stop] = sim.topk(k, dim=-1)
    return values, index


def _use_triton(backend: str, keys: Tensor) -> bool:
    """Whether :func:`knn_transition` runs the Triton kernel for these keys."""
    check_choice("backend", backend, KNN_BACKENDS)
    if backend == "torch":
        return False
    installed = importlib.util.find_spec("triton") is not None
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if backend == "triton":
        if not installed:
            raise ValueError("backend 'triton' needs the triton package")
        if not (keys.is_cuda or interpreted):
            raise ValueError("backend 'triton' needs CUDA keys (or TRITON_INTERPRET=1 to run "
                             "the kernel in Triton's interpreter)")
        return True
    return installed and keys.is_cuda and keys.dtype != torch.float64


def from_scipy(matrix: Any, add_self_loops: bool = False) -> Transition:
    r"""Row-stochastic transition from a square scipy sparse (or dense numpy) matrix.

    ``matrix[i, j]`` is the weight of the flow from ``i`` to ``j``; weights must be finite and
    non-negative. Rows are normalised as in :func:`graph_transition` (dangling rows get a
    self-loop). SciPy is imported when this is called (it is not a requirement of the package).

    Args:
        matrix (scipy.sparse.sparray or numpy.ndarray): a square matrix :math:`(N, N)`.
        add_self_loops (bool, optional): add a unit self-loop to every node without one.
            (default: :obj:`False`)

    Shapes:
        - **input:** :math:`(N, N)`
        - **output:** row-stochastic SparseTensor :math:`(N, N)`
    """
    try:
        import scipy.sparse as sp
    except ImportError as error:  # pragma: no cover - scipy is there wherever matrices are
        raise ImportError("from_scipy needs scipy (pip install scipy)") from error

    if not sp.issparse(matrix):
        try:
            matrix = sp.coo_array(matrix)
        except (TypeError, ValueError) as error:
            raise ValueError(f"expected a scipy sparse matrix (got {type(matrix).__name__})") \
                from error
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"a transition needs a square matrix (got shape {matrix.shape})")
    coo = sp.coo_array(matrix)
    if coo.dtype.kind not in "fiub":
        raise ValueError(f"matrix must hold numbers (got dtype {coo.dtype})")
    edge_index = torch.stack([torch.as_tensor(coo.row, dtype=torch.long),
                              torch.as_tensor(coo.col, dtype=torch.long)])
    weight = torch.as_tensor(coo.data.astype("float64")).to(torch.get_default_dtype())
    return graph_transition(edge_index, num_nodes=coo.shape[0], edge_weight=weight,
                            add_self_loops=add_self_loops)


def from_networkx(G: Any, weight: Optional[str] = "weight",
                  nodelist: Optional[Sequence[Hashable]] = None,
                  add_self_loops: bool = False) -> Tuple[Transition, List[Hashable]]:
    r"""Row-stochastic transition of a NetworkX graph.

    Directed graphs walk along their edges; undirected ones both ways. Edge attribute ``weight``
    is the flow weight (1 where an edge lacks it; ``weight=None`` ignores weights); parallel
    edges of multigraphs add up. Isolated and dangling nodes get a self-loop so every row is
    stochastic.

    Args:
        G (networkx.Graph): any NetworkX graph (``Graph``, ``DiGraph``, ``Multi*``).
        weight (str, optional): edge attribute holding the weight (a real number; edges
            without it weigh 1; ``None``: every edge weighs 1). (default: :obj:`"weight"`)
        nodelist (list, optional): node order of ``P``. (default: :obj:`None`:
            ``list(G.nodes)``)
        add_self_loops (bool, optional): add a unit self-loop to every node without one.
            (default: :obj:`False`)

    Returns:
        ``(P, nodelist)``: the SparseTensor :math:`(N, N)` and the node order of its rows.
    """
    import networkx as nx

    if not isinstance(G, nx.Graph):
        raise ValueError(f"expected a networkx graph (got {type(G).__name__})")
    nodelist = list(G.nodes) if nodelist is None else list(nodelist)
    if len(nodelist) == 0:
        raise ValueError("the graph has no nodes")
    if len(set(nodelist)) != len(nodelist):
        raise ValueError("nodelist contains duplicate nodes")
    missing = [node for node in nodelist if node not in G]
    if missing:
        raise ValueError(f"nodelist names nodes that are not in the graph: {missing[:5]}")
    if len(nodelist) != G.number_of_nodes():
        raise ValueError(f"nodelist has {len(nodelist)} nodes but the graph has "
                         f"{G.number_of_nodes()}; list every node once")
    index = {node: i for i, node in enumerate(nodelist)}
    rows, cols, weights = [], [], []
    for u, v, w in G.edges(data=weight, default=1):
        if weight is None:
            w = 1
        if not isinstance(w, numbers.Real):
            raise ValueError(f"edge ({u!r}, {v!r}): weight {weight!r} must be a real number "
                             f"(got {w!r})")
        rows.append(index[u])
        cols.append(index[v])
        weights.append(float(w))
        if not G.is_directed() and u != v:  # undirected: both ways; a self-loop once
            rows.append(index[v])
            cols.append(index[u])
            weights.append(float(w))
    edge_index = torch.tensor([rows, cols], dtype=torch.long).view(2, -1)
    edge_weight = torch.tensor(weights, dtype=torch.float64).to(torch.get_default_dtype())
    return graph_transition(edge_index, num_nodes=len(nodelist), edge_weight=edge_weight,
                            add_self_loops=add_self_loops), nodelist
