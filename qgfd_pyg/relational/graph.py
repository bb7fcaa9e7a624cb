"""The typed graph a query-conditioned flow runs on (:class:`RelationalGraph`): its edges in CSR
order by target and by source, the (source, relation) pairs, the out-degrees per relation."""
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ..checks import check_edge_index, check_edge_weight, check_values

DENSE_DEGREE_RELATIONS = 64  # above this many relations the degrees C are a sparse matrix


def _csr_order(row: Tensor, num_nodes: int) -> Tuple[Tensor, Tensor]:
    """(rowptr, perm): edges sorted by ``row`` (stable), and the offsets of each row."""
    perm = torch.argsort(row, stable=True)
    counts = torch.bincount(row, minlength=num_nodes)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)]), perm


class _Pairs(NamedTuple):
    """The graph's (source, relation) pairs that have edges, by source then relation: the
    torch path's per-query step first weighs each pair's source value by the query's weight
    of its relation, then sums the pairs' edges into their targets (one sparse product over
    the edges)."""
    node: Tensor  # [P] each pair's source
    rel: Tensor  # [P] and relation
    edge_ptr: Tensor  # [P + 1] a pair's edges in the by-source order
    of_in_edge: Tensor  # [E] the pair of each edge in the by-target order
    node_ptr: Tensor  # [N + 1] a node's pairs
    rel_ptr: Tensor  # [R + 1] and a relation's, in by_rel
    by_rel: Tensor  # [P] the pairs sorted by relation
    index: Tensor  # [P] 0 .. P - 1
    ones: Tensor  # [P]

    @staticmethod
    def build(out_slots: Tensor, place: Tensor, perm_out: Tensor, num_nodes: int,
              num_relations: int) -> "_Pairs":
        """From the slots ``source * R + relation`` of the edges in the by-source order,
        each edge's place in the by-target order, and that order."""
        slots, of_out_edge, counts = torch.unique_consecutive(
            out_slots, return_inverse=True, return_counts=True)
        of_edge = torch.empty_like(of_out_edge)
        of_edge[perm_out] = of_out_edge
        of_in_edge = torch.empty_like(of_out_edge)
        of_in_edge[place] = of_edge
        node, rel = slots // num_relations, slots % num_relations

        def offsets(values: Tensor, size: int) -> Tensor:
            return torch.cat([values.new_zeros(1),
                              torch.bincount(values, minlength=size).cumsum(0)])
        index = torch.arange(slots.numel(), device=slots.device)
        return _Pairs(node, rel, torch.cat([counts.new_zeros(1), counts.cumsum(0)]),
                      of_in_edge, offsets(node, num_nodes), offsets(rel, num_relations),
                      torch.argsort(rel, stable=True), index,
                      torch.ones(slots.numel(), device=slots.device))


class RelationalGraph:
    r"""A typed graph prepared for :func:`relational_flow`: its edges in CSR order by target
    (the forward product) and by source (the backward one), and the out-degrees per relation
    :math:`C` ``[N, R]``. Built once per graph; :meth:`masked` zeroes a set of edges (e.g. a
    training batch's own edges) without sorting again.

    Args:
        edge_index (torch.Tensor): edges ``[2, E]``, source first (mass flows source ->
            target). Repeated edges add up.
        edge_type (torch.Tensor): relation of each edge ``[E]``, in ``[0, num_relations)``.
        num_relations (int): number of relations :math:`R`.
        num_nodes (int, optional): number of nodes :math:`N` (default: ``max(edge_index) + 1``).
        edge_weight (torch.Tensor, optional): non-negative edge weights ``[E]``
            (default: ``None``, all ones).
    """

    def __init__(self, edge_index: Tensor, edge_type: Tensor, num_relations: int,
                 num_nodes: Optional[int] = None, edge_weight: Optional[Tensor] = None):
        if isinstance(num_relations, bool) or int(num_relations) != num_relations \
                or num_relations < 1:
            raise ValueError(f"num_relations must be a positive integer (got {num_relations!r})")
        if num_nodes is None:
            num_nodes = int(edge_index.max()) + 1 if isinstance(edge_index, Tensor) \
                and edge_index.numel() else 0
        check_edge_index(edge_index, num_nodes)
        num_edges = edge_index.size(1)
        if not isinstance(edge_type, Tensor) or edge_type.dim() != 1 \
                or edge_type.numel() != num_edges:
            raise ValueError(f"edge_type must be a tensor [{num_edges}], one relation per edge "
                             f"(got {getattr(edge_type, 'shape', type(edge_type).__name__)})")
        if edge_type.dtype.is_floating_point or edge_type.dtype == torch.bool:
            raise ValueError(f"edge_type must hold integers (got dtype {edge_type.dtype})")
        if num_edges and (int(edge_type.min()) < 0 or int(edge_type.max()) >= num_relations):
            raise ValueError(f"edge_type holds relations in [{int(edge_type.min())}, "
                             f"{int(edge_type.max())}], outside [0, {num_relations})")
        check_edge_weight(edge_weight, num_edges)
        self.num_nodes, self.num_relations = int(num_nodes), int(num_relations)
        src, dst = edge_index.long()
        self._src, self._rel = src, edge_type.long()
        self.rowptr_in, self.perm_in = _csr_order(dst, self.num_nodes)
        # by source, and within a source by relation: a (source, relation) pair's edges are
        # consecutive (the torch path's per-query product)
        slot = src * self.num_relations + self._rel
        self.perm_out = torch.argsort(slot, stable=True)
        self.col_in, self.rel_in = src[self.perm_in], self._rel[self.perm_in]
        self.row_in = dst[self.perm_in]  # each in-order edge's target (the traced step)
        self.col_out, self.rel_out = dst[self.perm_out], self._rel[self.perm_out]
        # the out-order edges' places in the in-order (a shared step's values, transposed)
        place = torch.empty_like(self.perm_in)
        place[self.perm_in] = torch.arange(num_edges, device=place.device)
        self.in_to_out = place[self.perm_out]
        self.pairs = _Pairs.build(slot[self.perm_out], place, self.perm_out, self.num_nodes,
                                  self.num_relations)
        self.rowptr_out = self.pairs.edge_ptr[self.pairs.node_ptr]  # a node's first pair's edge
        self.facts = None  # with_inverses: the number of given edges, each also reversed
        self._set_weight(edge_weight if edge_weight is not None
                         else torch.ones(num_edges, device=edge_index.device))

    @classmethod
    def with_inverses(cls, edge_index: Tensor, edge_type: Tensor, num_relations: int,
                      num_nodes: Optional[int] = None, self_loops: bool = True
                      ) -> "RelationalGraph":
        r"""The graph a knowledge-graph query flows over: every edge ``h -> t`` of relation
        ``r`` (a fact) also reversed, ``t -> h`` with relation ``r + R``, and (``self_loops``)
        a loop on every node with relation ``2R``, which lets a walk stay where it is. The
        edges come in that order (the facts, their inverses, the loops), so the graph has
        :math:`2R` (or :math:`2R + 1`) relations; :meth:`masked` then takes ids of facts and
        hides both of their directions.

        Args:
            edge_index (torch.Tensor): the facts' ``[2, E]`` (head, tail).
            edge_type (torch.Tensor): their relations ``[E]`` in ``[0, num_relations)``.
            num_relations (int): :math:`R`.
            num_nodes (int, optional): entities (default: ``max(edge_index) + 1``).
            self_loops (bool): add the loops. (default: ``True``)
        """
        if num_nodes is None:
            num_nodes = int(edge_index.max()) + 1 if isinstance(edge_index, Tensor) \
                and edge_index.numel() else 0
        check_edge_index(edge_index, num_nodes)
        if not isinstance(edge_type, Tensor) or edge_type.shape != edge_index.shape[1:]:
            raise ValueError(f"edge_type must be a tensor [{edge_index.size(1)}], one relation "
                             f"per edge (got {getattr(edge_type, 'shape', type(edge_type))})")
        head, tail = edge_index.long()
        rel = edge_type.long()
        src, dst, types = [head, tail], [tail, head], [rel, rel + int(num_relations)]
        if self_loops:
            loops = torch.arange(int(num_nodes), device=edge_index.device)
            src, dst = src + [loops], dst + [loops]
            types.append(torch.full_like(loops, 2 * int(num_relations)))
        graph = cls(torch.stack([torch.cat(src), torch.cat(dst)]), torch.cat(types),
                    2 * int(num_relations) + int(bool(self_loops)), num_nodes)
        graph.facts = edge_index.size(1)
        return graph

    def _set_weight(self, weight: Tensor) -> None:
        weight = weight.detach().float()
        self.weight = weight
        degree = weight.new_zeros(self.num_nodes * self.num_relations)
        slot = self._src * self.num_relations + self._rel
        degree.index_add_(0, slot, weight)
        # each edge's share of its source's out-weight under its own relation
        share = weight / torch.where(degree[slot] > 0, degree[slot], torch.ones_like(weight))
        self._weights = {False: (weight[self.perm_in], weight[self.perm_out]),
                         True: (share[self.perm_in], share[self.perm_out])}
        # each node's relations with out-weight and that weight, node-major (the compiled step)
        present = degree.nonzero().view(-1)
        self.rel_ptr = torch.cat([present.new_zeros(1), torch.bincount(
            present // self.num_relations, minlength=self.num_nodes).cumsum(0)])
        self.rel_ids, self.rel_degree = present % self.num_relations, degree[present]
        self.rel_nodes = present // self.num_relations  # the node of each (node, relation)
        degree = degree.view(self.num_nodes, self.num_relations)  # C^T: [N, R]
        has = (degree > 0).to(degree.dtype)  # whether a node has out-weight under r
        if self.num_relations > DENSE_DEGREE_RELATIONS:  # few relations per node: sparse
            degree, has = degree.to_sparse(), has.to_sparse()
        self.degree, self.has_relation = degree, has

    def edges(self, transpose: bool, per_relation: bool
              ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """(rowptr, col, rel, weight) in CSR order by target (by source, and within a source
        by relation, with ``transpose``); ``per_relation``: each weight divided by its
        source's out-weight under its relation."""
        weight = self._weights[per_relation][1 if transpose else 0]
        if transpose:
            return self.rowptr_out, self.col_out, self.rel_out, weight
        return self.rowptr_in, self.col_in, self.rel_in, weight

    def masked(self, edge_ids: Optional[Tensor]) -> "RelationalGraph":
        """A copy whose edges ``edge_ids`` have weight 0 (the sorted structure is shared); on
        a graph built by :meth:`with_inverses` the ids are the given facts', and both
        directions of each are hidden (a training batch's own facts)."""
        if edge_ids is None or edge_ids.numel() == 0:
            return self
        if self.facts is not None:
            if check_values(edge_ids) and (int(edge_ids.min()) < 0
                                           or int(edge_ids.max()) >= self.facts):
                raise ValueError(f"edge_ids must be ids of the graph's {self.facts} facts")
            edge_ids = torch.cat([edge_ids, edge_ids + self.facts])
        out = object.__new__(RelationalGraph)
        out.__dict__.update(self.__dict__)
        out._set_weight(self.weight.index_fill(0, edge_ids.to(self.weight.device), 0.0))
        return out

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def __repr__(self) -> str:
        return (f"RelationalGraph(num_nodes={self.num_nodes}, num_edges={self.weight.numel()}, "
                f"num_relations={self.num_relations})")


