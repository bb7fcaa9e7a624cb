r"""The structure of one graph that :class:`qgfd_pyg.QGFDConv` needs, built from one sort.

A call on a new graph (every mini-batch of a ``NeighborLoader``, ``cached=False``) needs three
things: the attention edges (unique, self-loops added, sorted by target, then source), the
graph transition :math:`\mathbf{P}` over the reversed edges (rows by target, duplicates summed)
and the grouping of the attention edges by target and by source that the edge kernels use.
With self-loops added, ``P`` has exactly the attention edges as its entries, so all three come
from one sort of the keys ``target * N + source`` (none when the input is already sorted and
unique, as a SparseTensor ``adj_t`` is); the grouping by source is a counting sort (numba) that
also gives the transposed order ``P^T`` needs in the backward pass.
"""
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.typing import OptTensor

from . import _numba
from .checks import check_choice
from .edge_ops import EdgeLayout
from .spmm import EdgeListTransition, Transition, sparse_matrix


class Entries(NamedTuple):
    """Unique entries ``(row, col)`` of a sparse matrix in row-major order."""
    row: Tensor
    col: Tensor
    weight: Tensor  # summed over duplicates (0 for a self-loop the input did not have)
    given: Tensor  # whether the input had the entry
    rowptr: Tensor


def unique_entries(row: Tensor, col: Tensor, num_nodes: int, weight: OptTensor = None,
                   self_loops: bool = False) -> Entries:
    """The unique pairs ``(row, col)`` sorted by row, then column, with their weights summed
    (``weight=None``: 1 per pair given); ``self_loops`` adds an entry ``(i, i)`` for every node
    (weight 0 where the input has none). On the CPU with numba: a compiled counting sort by row,
    then each row by column; else one sort of ``row * N + col``, skipped when the keys are
    already sorted (and when the weights need gradients: they keep them)."""
    n, device = num_nodes, row.device
    if weight is None:
        weight = torch.ones(row.numel(), device=device)
    if device.type == "cpu" and _numba.routines() is not None and not weight.requires_grad \
            and weight.dtype in (torch.float32, torch.float64):  # a compiled counting sort
        _numba.set_threads()
        out = _numba.routines().unique_pairs(row.contiguous().numpy(), col.contiguous().numpy(),
                                             weight.detach().contiguous().numpy(), n,
                                             self_loops)
        return Entries(*(torch.from_numpy(a) for a in out))
    num_given = row.numel()
    key = row * n + col
    if self_loops:
        loops = torch.arange(n, device=device)
        key = torch.cat([key, loops * (n + 1)])
        weight = torch.cat([weight, weight.new_zeros(n)])
    if key.numel() < 2 or bool((key[1:] >= key[:-1]).all()):
        order = None
    else:
        key, order = torch.sort(key)
        weight = weight[order]
    first = torch.ones(key.numel(), dtype=torch.bool, device=device)
    if key.numel() > 1:
        torch.ne(key[1:], key[:-1], out=first[1:])
    unique = key[first]
    if unique.numel() == key.numel():  # no duplicates: nothing to sum
        summed = weight
        given = torch.arange(key.numel(), device=device) < num_given if order is None \
            else order < num_given
    else:
        segment = torch.cumsum(first, 0) - 1
        summed = weight.new_zeros(unique.numel()).index_add_(0, segment, weight)
        from_input = (torch.arange(key.numel(), device=device) if order is None
                      else order) < num_given
        given = torch.zeros(unique.numel(), dtype=torch.bool, device=device)
        given[segment[from_input]] = True
    urow = torch.div(unique, n, rounding_mode="floor")
    rowptr = torch.zeros(n + 1, dtype=torch.long, device=device)
    torch.cumsum(torch.bincount(urow, minlength=n), 0, out=rowptr[1:])
    return Entries(urow, unique - urow * n, summed, given, rowptr)


def transition_entries(entries: Entries, num_nodes: int, add_self_loops: bool,
                       normalization: str = "rw") -> Tuple[Tensor, Tensor]:
    """Which of ``entries`` (built with ``self_loops=True``) are entries of the transition,
    and their values: self-loops of weight 1 where ``add_self_loops`` asks for them and the
    input has none, and on every dangling row (no positive out-weight); rows normalised by
    their out-weight (``"rw"``) or symmetrically (``"sym"``). See
    :func:`qgfd_pyg.graph_transition`."""
    check_choice("normalization", normalization, ("rw", "sym"))
    row, col, weight, given, rowptr = entries
    weight = weight.float() if not weight.dtype.is_floating_point else weight
    if _numba.usable(weight):  # compiled: one pass over the rows
        value, keep = torch.empty_like(weight), torch.empty_like(given)
        _numba.set_threads()
        _numba.routines().transition_values(rowptr.numpy(), col.numpy(), weight.numpy(),
                                            given.numpy(), add_self_loops,
                                            normalization == "sym", value.numpy(),
                                            keep.numpy())
        return keep, value
    loop = row == col
    if add_self_loops:
        weight = torch.where(loop & ~given, torch.ones_like(weight), weight)
    out_weight = weight.new_zeros(num_nodes).index_add_(0, row, weight)
    dangling = out_weight == 0
    weight = torch.where(loop & dangling[row], weight + 1, weight)
    out_weight = torch.where(dangling, torch.ones_like(out_weight), out_weight)
    keep = given | (loop & (dangling[row] | add_self_loops))
    if normalization == "rw":
        value = weight / out_weight[row]
    else:
        value = weight / (out_weight[row] * out_weight[col]).sqrt()
    return keep, value


class GraphStructure(NamedTuple):
    """What :class:`qgfd_pyg.QGFDConv` needs of a graph."""
    edge_index: Tensor  # attention edges (source, target), unique, sorted by target, source
    transition: Optional[Transition]  # P over the reversed edges (rows by target), or None
    layout: EdgeLayout  # the attention edges grouped by target and by source


def graph_structure(src: Tensor, dst: Tensor, num_nodes: int, edge_weight: OptTensor = None,
                    add_self_loops: bool = True, normalization: Optional[str] = None
                    ) -> GraphStructure:
    """The attention edges of the edges ``src -> dst`` (self-loops added with
    ``add_self_loops``; any given self-loop kept), their :class:`EdgeLayout` and, with
    ``normalization`` (``"rw"`` or ``"sym"``), the transition ``P`` of
    :func:`qgfd_pyg.graph_transition` over the edges ``dst -> src`` weighted by
    ``edge_weight``: all from one sort. Under ``torch.compile`` it is one opaque operator
    (``qgfd::graph_structure``, whose outputs' sizes depend on the data), ``P`` an
    :class:`~qgfd_pyg.spmm.EdgeListTransition` and no layout (the edge operations are traced
    then)."""
    if torch.compiler.is_compiling():
        if edge_weight is not None and edge_weight.requires_grad:
            raise ValueError("edge weights that need gradients are not supported under "
                             "torch.compile (the graph structure is one opaque operator)")
        edge_index, row, col, value = _structure_op(src, dst, edge_weight, num_nodes,
                                                    add_self_loops, normalization or "none")
        P = None if normalization is None else EdgeListTransition(row, col, value, num_nodes)
        return GraphStructure(edge_index, P, None)
    n = num_nodes
    entries = unique_entries(dst, src, n, edge_weight,
                             self_loops=add_self_loops or normalization is not None)
    row, col, _, given, rowptr = entries
    attend = given | (row == col) if add_self_loops else given
    same = bool(attend.all())
    if not same:
        row, col = row[attend], col[attend]
        rowptr = torch.zeros(n + 1, dtype=torch.long, device=row.device)
        torch.cumsum(torch.bincount(row, minlength=n), 0, out=rowptr[1:])
    layout = EdgeLayout(col, row, n, dst_ptr=rowptr)
    P = None
    if normalization is not None:
        keep, value = transition_entries(entries, n, add_self_loops, normalization)
        if same and bool(keep.all()):  # P's entries are the attention edges: share the order
            P = sparse_matrix(row, col, value, n, is_sorted=True, rowptr=rowptr,
                              csr2csc=layout.groups("src")[1] if layout.fast_groups else None)
        else:
            P = sparse_matrix(entries.row[keep], entries.col[keep], value[keep], n,
                              is_sorted=True)
    return GraphStructure(torch.stack([col, row]), P, layout)


@torch.library.custom_op("qgfd::graph_structure", mutates_args=())
def _structure_op(src: Tensor, dst: Tensor, edge_weight: Optional[Tensor], num_nodes: int,
                  add_self_loops: bool, normalization: str
                  ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`graph_structure` as an operator ``torch.compile`` sees as one node: the
    attention edges ``[2, E']`` and ``P``'s entries ``(row, col, value)`` (empty without
    ``normalization``)."""
    found = graph_structure(src, dst, num_nodes, edge_weight, add_self_loops,
                            None if normalization == "none" else normalization)
    P = found.transition
    if P is None:
        row = col = src.new_empty(0)
        value = torch.empty(0, device=src.device)
    elif isinstance(P, Tensor):  # a torch sparse COO matrix
        (row, col), value = P._indices(), P._values()
    else:  # a SparseTensor
        row, col, value = P.coo()
    return found.edge_index.clone(), row.clone(), col.clone(), value.clone()


@_structure_op.register_fake
def _(src, dst, edge_weight, num_nodes, add_self_loops, normalization):
    context = torch.library.get_ctx()
    edges = context.new_dynamic_size()
    entries = 0 if normalization == "none" else context.new_dynamic_size()
    dtype = edge_weight.dtype if edge_weight is not None \
        and edge_weight.dtype.is_floating_point else torch.float32
    return (src.new_empty(2, edges), src.new_empty(entries), src.new_empty(entries),
            torch.empty(entries, dtype=dtype, device=src.device))
