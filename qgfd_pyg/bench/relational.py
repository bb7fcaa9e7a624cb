r"""What the knowledge-graph (``kg``) and question-answering (``qa``) kinds share: triples and
their files, the training graph, the one relational QGFD model, and the encoder baselines.

A query is an anchor entity and words (``[B, L]`` ids, ``-1`` padded): the query relation
(KG completion and Countries, ``L = 1``), a relation path (``path-qa``), or the tokens of a
question (MetaQA). Every model scores every entity for a query.

:class:`KGQGFD` is the package's :class:`qgfd_pyg.RelationalQGFD` (a query-conditioned flow
from the anchor over the training graph) on the runner's :class:`KGGraph`: its flow graph is
built once per graph (a batch's copy without its own triples shares the sort), and it has the
kg kind's evaluation interface (``prepare`` / ``score``).
"""
import os
from functools import partial
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import Embedding, Module
from torch_geometric.typing import WITH_TORCH_SPARSE, SparseTensor

from ..checks import check_alpha, check_steps
from ..relational import Controls, RelationalGraph, RelationalQGFD, compose, relational_flow
from .data import missing_data
from .models import GAT, APPNPNet


class Triples(NamedTuple):
    """``[n, 3]`` long tensors of (head, relation, tail) per split."""
    train: Tensor
    valid: Tensor
    test: Tensor


def queries(triples: Tensor, num_relations: int) -> Tensor:
    """``[2n, 3]`` (entity, query relation, answer): tail queries, then head queries as
    inverse relations ``r + R``."""
    h, r, t = triples.unbind(1)
    return torch.cat([torch.stack([h, r, t], 1), torch.stack([t, r + num_relations, h], 1)])


class KGGraph:
    """The training graph with inverse edges: ``src -> dst`` with relation ``rel``; edge
    ``i`` and ``i + n`` come from training triple ``i``. :meth:`without` hides the edges of
    some triples (a batch's own); :meth:`relational` is the graph the flow runs on."""

    def __init__(self, src: Tensor, dst: Tensor, rel: Tensor,
                 parent: Optional["KGGraph"] = None, hidden: Optional[Tensor] = None):
        self.src, self.dst, self.rel = src, dst, rel
        self._parent, self._hidden = parent, hidden  # hidden: the training triples' ids
        self._flow: Dict[Tuple[int, int], RelationalGraph] = {}

    @classmethod
    def from_triples(cls, train: Tensor, num_relations: int) -> "KGGraph":
        h, r, t = train.unbind(1)
        return cls(torch.cat([h, t]), torch.cat([t, h]), torch.cat([r, r + num_relations]))

    @property
    def root(self) -> "KGGraph":
        """The graph with every fact (this one, or the one whose facts this hides some of)."""
        return self if self._parent is None else self._parent.root

    def without(self, triple_ids: Optional[Tensor]) -> "KGGraph":
        """The graph without the edges (both directions) of training triples ``triple_ids``."""
        if triple_ids is None or triple_ids.numel() == 0:
            return self
        keep = torch.ones(self.src.numel(), dtype=torch.bool, device=self.src.device)
        n = self.src.numel() // 2
        keep[torch.cat([triple_ids, triple_ids + n])] = False
        return KGGraph(self.src[keep], self.dst[keep], self.rel[keep], self, triple_ids)

    @property
    def edge_index(self) -> Tensor:
        return torch.stack([self.src, self.dst])

    def adj_t(self, num_nodes: int) -> SparseTensor:
        """The transposed adjacency (row: target), for layers that multiply by it."""
        return SparseTensor(row=self.dst, col=self.src, sparse_sizes=(num_nodes, num_nodes))

    def relational(self, num_nodes: int, num_relations: int) -> RelationalGraph:
        """The training triples as :meth:`~qgfd_pyg.RelationalGraph.with_inverses` builds
        them (inverse edges, a self loop per node); sorted once per graph, a hidden-edge copy
        shares the sorted structure of its parent (:meth:`~qgfd_pyg.RelationalGraph.masked`
        hides both directions of its triples)."""
        key = (num_nodes, num_relations)
        if key not in self._flow:
            if self._parent is not None:
                self._flow[key] = self._parent.relational(num_nodes, num_relations).masked(
                    self._hidden)
            else:
                n = self.src.numel() // 2  # the triples; then their inverse edges
                self._flow[key] = RelationalGraph.with_inverses(
                    torch.stack([self.src[:n], self.dst[:n]]), self.rel[:n], num_relations,
                    num_nodes)
        return self._flow[key]


def read_triples(raw_dir: str, relations: Optional[Sequence[str]] = None,
                 known_entities: bool = False, columns: str = "hrt", downloadable: bool = False
                 ) -> Tuple[Dict[str, List[Tuple[str, str, str]]], List[str]]:
    """Reads ``train/valid/test.txt`` (tab-separated head, relation, tail) and checks them:
    three fields per line, every relation of valid/test known from train (or from
    ``relations``) and, with ``known_entities``, every entity of valid/test seen in train; a
    ValueError naming the file and line otherwise. ``columns`` is the files' column order
    (``"hrt"``, or ``"rht"`` as kinship and nations ship); ``downloadable``: whether the
    missing-data error may suggest ``--download`` (sets read through PyG's classes)."""
    names = ("train", "valid", "test")
    missing = [f"{n}.txt" for n in names if not os.path.isfile(os.path.join(raw_dir, f"{n}.txt"))]
    if missing:
        raise missing_data(f"knowledge graph not found: {raw_dir} lacks {', '.join(missing)}; "
                           f"put the data set's raw files there", downloadable)
    out: Dict[str, List[Tuple[str, str, str]]] = {}
    for name in names:
        path = os.path.join(raw_dir, f"{name}.txt")
        rows = []
        with open(path) as f:
            for number, line in enumerate(f, 1):
                line = line.rstrip("\n").rstrip("\r")
                if not line.strip():
                    continue
                fields = line.split("\t")
                if len(fields) != 3 or not all(x.strip() for x in fields):
                    raise ValueError(f"{path}:{number}: expected 3 tab-separated fields "
                                     f"(head, relation, tail), got {len(fields)}")
                fields = dict(zip(columns, (x.strip() for x in fields), strict=True))
                rows.append((fields["h"], fields["r"], fields["t"]))
        out[name] = rows
    known = list(relations) if relations is not None else sorted({r for _, r, _ in out["train"]})
    allowed = set(known)
    entities = {x for h, _, t in out["train"] for x in (h, t)}
    for name in names:
        for number, (h, r, t) in enumerate(out[name], 1):
            where = f"{os.path.join(raw_dir, name + '.txt')}: triple {number}"
            if r not in allowed:
                raise ValueError(f"{where} has the unknown relation {r!r}")
            unknown = [x for x in (h, t) if x not in entities]
            if known_entities and unknown:
                raise ValueError(f"{where} has the entity {unknown[0]!r}, which no training "
                                 f"triple has")
    return out, known


def index_triples(rows: Dict[str, List[Tuple[str, str, str]]], relations: Sequence[str]
                  ) -> Tuple[Triples, List[str]]:
    """Integer triples of the three splits and the entity names (in order of appearance)."""
    entity_id: Dict[str, int] = {}
    relation_id = {r: i for i, r in enumerate(relations)}
    out = []
    for name in ("train", "valid", "test"):
        ids = [(entity_id.setdefault(h, len(entity_id)), relation_id[r],
                entity_id.setdefault(t, len(entity_id))) for h, r, t in rows[name]]
        out.append(torch.tensor(ids, dtype=torch.long).view(-1, 3))
    return Triples(*out), list(entity_id)


class KGQGFD(RelationalQGFD):
    """The package's :class:`~qgfd_pyg.RelationalQGFD` on the runner's :class:`KGGraph` (the
    call every kg / qa model shares, and the kg kind's evaluation interface)."""

    per_relation = False

    def prepare(self, graph: KGGraph, relation: int = 0) -> RelationalGraph:
        """The flow graph of ``graph`` (built once per graph)."""
        return graph.relational(self.num_entities, self.num_relations)

    def score(self, entity: Tensor, relation: Tensor, flow_graph: RelationalGraph) -> Tensor:
        """Scores ``[B, N]`` over a graph from :meth:`prepare`."""
        return super().forward(entity, relation, flow_graph)

    def flow(self, anchor: Tensor, words: Tensor, graph: "KGGraph | RelationalGraph",
             controls: Optional[Controls] = None) -> Tensor:
        if isinstance(graph, KGGraph):
            graph = self.prepare(graph)
        return super().flow(anchor, words, graph, controls)

    def forward(self, anchor: Tensor, words: Tensor, graph: KGGraph) -> Tensor:
        """Scores ``[B, N]`` of every entity for queries (``anchor`` ``[B]``, ``words``
        ``[B, L]``) over the runner's ``graph``."""
        return self.score(anchor, words, self.prepare(graph))


class PersonalizedPageRank(Module):
    r"""Reference row, nothing learnt: every entity scored by its PageRank personalised on the
    query's anchor over the training graph (every edge alike, both ways; no self loops),
    :math:`\sum_k (1 - \alpha) \alpha^k\, \mathbf{1}_a P^k` for ``steps`` steps (the rest of
    the mass on the last), by :func:`~qgfd_pyg.relational_flow` with one weight for every
    relation. The query's relation or words are not read."""

    per_relation = False

    def __init__(self, num_entities: int, num_relations: int, alpha: float = 0.85,
                 steps: int = 10, **_: Any):
        super().__init__()
        self.num_entities, self.num_relations = num_entities, num_relations
        self.alpha, self.steps = check_alpha(alpha), check_steps(steps)

    def prepare(self, graph: KGGraph, relation: int = 0) -> RelationalGraph:
        return graph.relational(self.num_entities, self.num_relations)

    def score(self, entity: Tensor, relation: Tensor, flow_graph: RelationalGraph) -> Tensor:
        p0 = torch.zeros(entity.numel(), self.num_entities, device=entity.device)
        p0[torch.arange(entity.numel(), device=entity.device), entity] = 1.0
        weights = torch.ones(self.steps, 1, 2 * self.num_relations + 1, device=entity.device)
        weights[:, :, -1] = 0.0  # the self loops: not an edge of the graph
        return relational_flow(p0, flow_graph, weights, alpha=self.alpha)

    def forward(self, anchor: Tensor, words: Tensor, graph: KGGraph) -> Tensor:
        return self.score(anchor, words, self.prepare(graph))


def untrained(build: Callable[..., Module]) -> Callable[..., Module]:
    """A reference row's builder: the model ``build`` makes, with its parameters turned into
    buffers, so that nothing trains it (the fit loop runs one epoch for a model without
    parameters) and the table shows what it scores at its initialisation."""
    def make(*args: Any, **kwargs: Any) -> Module:
        model = build(*args, **kwargs)
        for module in model.modules():
            for name, parameter in list(module._parameters.items()):
                if parameter is not None:
                    del module._parameters[name]
                    module.register_buffer(name, parameter.detach().requires_grad_(False))
        return model
    return make


class EncoderScorer(Module):
    """Learnt entity embeddings through a graph encoder, then the DistMult-style scorer
    :math:`(z_a \\odot w_q) \\cdot z_v` (``w_q``: the composed query words)."""

    def __init__(self, encoder: Module, num_entities: int, vocab: int, hidden: int,
                 sparse: bool = False):
        super().__init__()
        self.sparse = sparse  # pass the graph as a SparseTensor (one product per step)
        self.entity = Embedding(num_entities, hidden)
        self.word = Embedding(vocab, hidden)
        self.encoder = encoder
        torch.nn.init.xavier_uniform_(self.entity.weight)
        torch.nn.init.normal_(self.word.weight, 1.0, 0.1)

    per_relation = False

    def prepare(self, graph: KGGraph, relation: int = 0) -> Tensor:
        n = self.entity.num_embeddings
        return self.encoder(self.entity.weight,
                            graph.adj_t(n) if self.sparse else graph.edge_index)

    def score(self, entity: Tensor, relation: Tensor, z: Tensor) -> Tensor:
        words = relation.view(-1, 1) if relation.dim() == 1 else relation
        return (z[entity] * compose(self.word, words)) @ z.t()

    def forward(self, anchor: Tensor, words: Tensor, graph: KGGraph) -> Tensor:
        """Scores ``[B, N]`` of every entity for queries (``anchor`` ``[B]``, ``words``
        ``[B, L]``) over the runner's ``graph``."""
        return self.score(anchor, words, self.prepare(graph))


def encoder_scorer(kind: str, num_entities: int, num_relations: int, hidden: int = 64,
                   vocab: Optional[int] = None, **options) -> EncoderScorer:
    """A GAT or APPNP encoder over the training graph with the query scorer."""
    if kind == "gat":
        heads = options.pop("heads", 4)
        net = GAT(hidden, hidden, hidden=hidden // heads, heads=heads, **options)
    else:  # cached: the propagation matrix of the first call (for a graph that stays fixed)
        net = APPNPNet(hidden, hidden, hidden=hidden, **{"cached": False, **options})
    # APPNP: one sparse product per step where torch-sparse is there (the same numbers as
    # message passing over edge_index, faster on CPU)
    return EncoderScorer(net, num_entities, vocab or 2 * num_relations, hidden,
                         sparse=kind == "appnp" and WITH_TORCH_SPARSE)


gat_scorer = partial(encoder_scorer, "gat")
appnp_scorer = partial(encoder_scorer, "appnp")


def log_uniform_target(scores: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of ``scores`` ``[B, N]`` against the uniform distribution over each
    row's true entries ``target`` ``[B, N]`` (bool)."""
    weights = target.to(scores.dtype)
    weights = weights / weights.sum(1, keepdim=True).clamp_min(1)
    return -(weights * scores.log_softmax(-1)).sum(1).mean()


__all__ = ["Triples", "queries", "KGGraph", "read_triples", "index_triples", "KGQGFD",
           "PersonalizedPageRank", "untrained", "EncoderScorer", "encoder_scorer",
           "log_uniform_target"]


def draw_negatives(exclude: Tensor, answer: Tensor, num: int) -> Tensor:
    """``[B, num]`` entity ids drawn uniformly, with replacement, from each query's
    candidates: the entities ``exclude`` ``[B, N]`` leaves (its training answers, entities the
    task keeps out), never the query's own ``answer`` (the sampled negatives of NBFNet's and
    RotatE's losses). A ValueError where a query has none."""
    B = answer.numel()
    rows = torch.arange(B, device=exclude.device)
    candidates = ~exclude
    candidates[rows, answer] = False
    counts = candidates.sum(1)
    if bool((counts == 0).any()):
        raise ValueError("a training query has no negative candidate")
    columns = candidates.nonzero()[:, 1]  # row-major: each row's candidates in a run
    start = counts.cumsum(0) - counts
    draw = (torch.rand(B, num, device=exclude.device)
            * counts.view(-1, 1)).long().clamp_max(counts.view(-1, 1) - 1)
    return columns[start.view(-1, 1) + draw]
