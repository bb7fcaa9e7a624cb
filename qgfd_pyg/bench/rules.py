r"""Mined path rules: the knowledge-graph kind's reference row (nothing is trained).

A path rule :math:`q(x, y) \leftarrow r_1(x, z_1) \wedge r_2(z_1, z_2) \wedge \dots \wedge
r_L(z_{L-1}, y)` (inverse relations included) says that what the body's relations reach from
``x``, in that order, answers the query ``(x, q)``. :class:`MinedRules` finds the bodies
that connect the two entities of sampled training triples of each query relation (AnyBURL's
path rules without constants), measures each body's confidence on the training graph (of
the pairs it connects, from sampled sources, the share the query relation also connects:
:math:`c = \mathrm{support} / (\mathrm{pairs} + k)`, with a pseudo-count :math:`k` that
discounts rules seen on few pairs) and ranks a query's candidates by the confidences of the
rules that reach them: the highest (``"max"``) or :math:`1 - \prod_i (1 - c_i)`
(``"noisy-or"``). Entities that no rule reaches, and the query's own entity, score 0.

It is the knowledge-graph tables' simplest strong reference: exact rule following with
confidences counted, not learnt, against which the learnt flows (which weigh relations per
step by gradient descent) can be read.
"""
from typing import Dict, List, NamedTuple, Optional, Set, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.nn import Module

from ..checks import check_choice, check_positive_int
from .relational import KGGraph

Body = Tuple[int, ...]
AGGREGATIONS = ("max", "noisy-or")


class MinedRules(Module):
    r"""The rule reference of the ``kg`` kind (see the module docstring); no parameters.

    Rules are mined once per training graph, on the first :meth:`prepare` (the runner's
    first evaluation), from the graph's edges, inverses included.

    Args:
        num_entities (int): entities :math:`N`.
        num_relations (int): relations :math:`R` (query relations ``0..2R-1``, the inverses
            after the relations).
        max_length (int): longest body, 1 to 3 relations. (default: ``3``)
        samples (int): training pairs sampled per query relation to find bodies, and sources
            sampled per body to count its confidence. (default: ``300``)
        fanout (int): out-edges of a node followed when paths are searched (a random
            subset of a node with more; hubs would make a 3-relation search quadratic).
            (default: ``20``)
        rules (int): most confident rules kept per query relation. (default: ``100``)
        min_support (int): sampled training pairs of the query relation a rule must be
            found on (by a simple path), and pairs it must predict correctly among its
            sampled sources. (default: ``2``)
        pseudo_count (float): :math:`k` in the confidence. (default: ``5.0``)
        aggregation (str): ``"max"`` or ``"noisy-or"``. (default: ``"noisy-or"``)
        seed (int, optional): the sampling's seed (default: ``None``, drawn from torch's
            generator, so that the runner's seed sets it)
    """
    per_relation = False  # the kg kind's evaluation: one state for every query relation

    def __init__(self, num_entities: int, num_relations: int, max_length: int = 3,
                 samples: int = 300, fanout: int = 20, rules: int = 100, min_support: int = 2,
                 pseudo_count: float = 5.0, aggregation: str = "noisy-or",
                 seed: Optional[int] = None, **_):
        super().__init__()
        self.num_entities, self.num_relations = num_entities, num_relations
        self.max_length = check_positive_int("max_length", max_length)
        if self.max_length > 3:
            raise ValueError(f"max_length must be 1, 2 or 3 (got {max_length})")
        self.samples = check_positive_int("samples", samples)
        self.fanout = check_positive_int("fanout", fanout)
        self.rules = check_positive_int("rules", rules)
        self.min_support = check_positive_int("min_support", min_support)
        if not pseudo_count >= 0:
            raise ValueError(f"pseudo_count must be >= 0 (got {pseudo_count})")
        self.pseudo_count = float(pseudo_count)
        self.aggregation = check_choice("aggregation", aggregation, AGGREGATIONS)
        self.seed = int(torch.randint(2 ** 31, ()) if seed is None else seed)
        self._mined: Dict[int, "Mined"] = {}
        self._rules: Optional[List[List[Tuple[Body, float]]]] = None

    def prepare(self, graph: KGGraph, relation: int = 0) -> "Mined":
        """The rules with ``graph``'s adjacency: the rules are mined on the first graph
        prepared (the runner's first evaluation is on the training graph) and kept; a later
        graph (an inductive split's test graph) gets its own adjacency and the same rules."""
        key = id(graph)
        if key not in self._mined:  # one graph at a time
            adjacency = self._adjacency(graph)
            if self._rules is None:
                self._rules = self._mine(graph, adjacency)
            self._mined = {key: Mined(adjacency, self._rules)}
        return self._mined[key]

    def _adjacency(self, graph: KGGraph) -> list:
        """Per relation (inverses included) the 0/1 adjacency ``[N, N]`` of ``graph``."""
        import scipy.sparse as sp

        N, Q = self.num_entities, 2 * self.num_relations
        src, dst, rel = (t.cpu().numpy() for t in (graph.src, graph.dst, graph.rel))
        by_rel = np.argsort(rel, kind="stable")  # each relation's edges, in one sort
        rel_ptr = np.concatenate([[0], np.cumsum(np.bincount(rel, minlength=Q))])
        adjacency = []
        for r in range(Q):
            at = by_rel[rel_ptr[r]:rel_ptr[r + 1]]
            a = sp.csr_matrix((np.ones(at.size, dtype=np.float32), (src[at], dst[at])),
                              shape=(N, N))
            a.sum_duplicates()
            a.data[:] = 1.0
            adjacency.append(a)
        return adjacency

    def _mine(self, graph: KGGraph, adjacency: list) -> List[List[Tuple[Body, float]]]:
        N, Q = self.num_entities, 2 * self.num_relations
        src, dst, rel = (t.cpu().numpy() for t in (graph.src, graph.dst, graph.rel))
        rng = np.random.default_rng(self.seed)
        order = np.lexsort((dst, src))  # out-edges of each node: (relation, target)
        out_rel, out_dst = rel[order], dst[order]
        out_ptr = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=N))])
        inverse = np.concatenate([np.arange(Q // 2, Q), np.arange(Q // 2)])

        def out_edges(node: int) -> List[Tuple[int, int]]:
            lo, hi = out_ptr[node], out_ptr[node + 1]
            picks = np.arange(lo, hi) if hi - lo <= self.fanout else \
                rng.choice(np.arange(lo, hi), self.fanout, replace=False)
            return list(zip(out_rel[picks].tolist(), out_dst[picks].tolist(), strict=True))

        def reach(body: Body):
            """The pairs the body connects from sampled sources: ([S, N] 0/1, sources)."""
            has = np.flatnonzero(np.diff(adjacency[body[0]].indptr))
            sources = has if has.size <= self.samples else \
                rng.choice(has, self.samples, replace=False)
            walk = adjacency[body[0]][sources]
            for r in body[1:]:
                walk = walk @ adjacency[r]
                walk.data[:] = 1.0
            row = np.repeat(np.arange(sources.size), np.diff(walk.indptr))
            walk.data[walk.indices == sources[row]] = 0.0  # x never answers itself
            walk.eliminate_zeros()
            return walk, sources

        # the bodies found on at least min_support sampled pairs of each query relation
        heads_of: Dict[Body, List[int]] = {}
        for q in range(Q):
            heads, tails = adjacency[q].nonzero()
            if heads.size > self.samples:
                pick = rng.choice(heads.size, self.samples, replace=False)
                heads, tails = heads[pick], tails[pick]
            seen: Dict[Body, int] = {}
            for x, y in zip(heads.tolist(), tails.tolist(), strict=True):
                found: Set[Body] = set()
                into_y: Dict[int, List[int]] = {}  # z -> relations of the edges z -> y
                for r, z in zip(out_rel[out_ptr[y]:out_ptr[y + 1]].tolist(),
                                out_dst[out_ptr[y]:out_ptr[y + 1]].tolist(), strict=True):
                    into_y.setdefault(z, []).append(int(inverse[r]))
                for r1, z1 in out_edges(x):
                    if z1 == y:
                        if r1 != q:  # the triple's own edge is no rule
                            found.add((r1,))
                        continue
                    if z1 == x or self.max_length < 2:
                        continue
                    for r2 in into_y.get(z1, ()):
                        found.add((r1, r2))
                    if self.max_length < 3:
                        continue
                    for r2, z2 in out_edges(z1):
                        if z2 in (x, y, z1):
                            continue
                        for r3 in into_y.get(z2, ()):
                            found.add((r1, r2, r3))
                for body in found:
                    seen[body] = seen.get(body, 0) + 1
            for body, count in seen.items():
                if count >= self.min_support:
                    heads_of.setdefault(body, []).append(q)
        # each body's pairs once (one body's at a time in memory), its confidence per head
        scored: List[List[Tuple[Body, float]]] = [[] for _ in range(Q)]
        for body in sorted(heads_of):
            walk, sources = reach(body)
            for q in heads_of[body]:
                support = walk.multiply(adjacency[q][sources]).nnz
                if support >= self.min_support:
                    scored[q].append((body, support / (walk.nnz + self.pseudo_count)))
        return [sorted(found, key=lambda item: -item[1])[:self.rules] for found in scored]

    def score(self, entity: Tensor, relation: Tensor, state: "Mined") -> Tensor:
        """Scores ``[B, N]`` of every entity for the queries ``(entity, relation)``."""
        entity_np, relation_np = entity.cpu().numpy(), relation.view(-1).cpu().numpy()
        out = np.zeros((entity_np.size, self.num_entities), dtype=np.float64)
        for q in np.unique(relation_np).tolist():
            rows = np.flatnonzero(relation_np == q)
            part = np.zeros((rows.size, self.num_entities))
            for body, confidence in state.rules[q]:
                walk = state.adjacency[body[0]][entity_np[rows]]
                for r in body[1:]:
                    walk = walk @ state.adjacency[r]
                walk = walk.tocoo()
                hit = walk.data > 0
                i, j = walk.row[hit], walk.col[hit]
                if self.aggregation == "max":
                    part[i, j] = np.maximum(part[i, j], confidence)
                else:  # log of the chance that every rule reaching the entity is wrong
                    part[i, j] += np.log1p(-confidence)
            if self.aggregation == "noisy-or":
                part = -np.expm1(part)
            part[np.arange(rows.size), entity_np[rows]] = 0.0  # the query's own entity
            out[rows] = part
        return torch.from_numpy(out).float().to(entity.device)

    def forward(self, entity: Tensor, relation: Tensor, graph: KGGraph) -> Tensor:
        return self.score(entity, relation, self.prepare(graph))

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.num_entities}, {self.num_relations}, "
                f"max_length={self.max_length}, aggregation={self.aggregation!r})")


class Mined(NamedTuple):
    """What :meth:`MinedRules.prepare` gives: per relation (inverses included) the 0/1
    adjacency ``[N, N]`` (scipy CSR), and per query relation its rules (body, confidence),
    most confident first."""
    adjacency: list
    rules: List[List[Tuple[Body, float]]]


__all__ = ["MinedRules", "Mined", "AGGREGATIONS"]
