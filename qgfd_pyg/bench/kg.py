r"""Knowledge-graph completion: filtered ranking of every entity for ``(h, r, ?)`` and
``(?, r, t)``.

Every triple gives two queries, ``(h, r)`` with answer ``t`` and ``(t, r^{-1})`` with answer
``h`` (relation ``r + R``), so all models answer one kind of query ``(e, q)`` with a score per
entity. Models:

- ``qgfd`` (:class:`KGQGFD`): the DistMult query :math:`q = e_e \odot w_q` attends over all
  entities with the seed :math:`p_0 = \mathrm{softmax}(q E^\top/\sqrt{d})`, which is diffused
  over the training graph with a transition conditioned on the query relation,
  :math:`p_{t+1} = (1-\alpha) p_0 + \alpha p_t P_q`; the read-out :math:`p_T V` of the entity
  values refines the query, and every candidate is scored against it (1-vs-all softmax loss).
- ``gat``, ``appnp`` (:class:`EncoderDistMult`): learnt entity embeddings through the
  encoder over the training graph, then the same DistMult scorer and loss.
- ``distmult``, ``rotate``: PyG's :mod:`torch_geometric.nn.kge` models with their own loss
  (margin / negative sampling), ranked by their own scores.

Protocol, the same for every model: batches of queries of one relation; the edges of a
batch's own triples are taken out of the graph the batch sees (NBFNet's rule: a query must
not be answered by its own edge, which the test triples never have); Adam; model selection
on the filtered MRR of a fixed subset of the validation queries; filtered MRR and Hits@1/3/10
on all test queries, computed by OGB's ranking evaluator (ties count half). Entities of the
validation and test triples that no training triple has (WN18RR: 210 test triples) stay in
the ranking, as in the published protocol.
"""
import math
import os
from functools import partial
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Embedding, Linear, Module, Parameter
from torch_geometric.utils import softmax
from torch_geometric.typing import WITH_TORCH_SPARSE, SparseTensor

from .._checks import check_alpha, check_positive_int, check_steps
from ..diffusion import diffuse
from ..spmm import Transition, sparse_matrix
from .data import MissingData
from .metrics import ranking
from .models import GAT, APPNPNet, ModelSpec
from .tasks import MiniBatchExperiment, Task, register


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


class Filter:
    """Every true answer of every query ``(e, q)`` over train + valid + test, as CSR rows
    keyed ``e * 2R + q``, for the filtered ranking."""

    def __init__(self, triples: Triples, num_entities: int, num_relations: int):
        facts = queries(torch.cat(list(triples)), num_relations)
        self.width = 2 * num_relations
        key = facts[:, 0] * self.width + facts[:, 1]
        order = torch.argsort(key * num_entities + facts[:, 2])
        self.answers = facts[order, 2]
        counts = torch.bincount(key, minlength=num_entities * self.width)
        self.rowptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])

    def mask(self, entity: Tensor, relation: Tensor, num_entities: int) -> Tensor:
        """``[B, N]`` boolean: True where a candidate is a true answer of the query."""
        key = entity.cpu() * self.width + relation.cpu()
        start, end = self.rowptr[key], self.rowptr[key + 1]
        lengths = end - start
        rows = torch.repeat_interleave(torch.arange(key.numel()), lengths)
        offsets = torch.arange(int(lengths.sum())) - torch.repeat_interleave(
            torch.cumsum(lengths, 0) - lengths, lengths)
        cols = self.answers[torch.repeat_interleave(start, lengths) + offsets]
        out = torch.zeros(key.numel(), num_entities, dtype=torch.bool)
        out[rows, cols] = True
        return out.to(entity.device)


def filtered_ranking(scores: Tensor, answer: Tensor, true: Tensor) -> Dict[str, float]:
    """MRR and Hits@1/3/10 of ``answer`` among the candidates of ``scores`` ``[B, N]``, the
    other true answers (``true`` ``[B, N]``) left out."""
    rows = torch.arange(answer.numel(), device=scores.device)
    pos = scores[rows, answer]
    neg = scores.masked_fill(true, -math.inf)
    neg[rows, answer] = -math.inf
    return ranking(pos, neg)


class KGGraph(NamedTuple):
    """The training graph with inverse edges: ``src -> dst`` with relation ``rel``; edge
    ``i`` and ``i + n`` come from training triple ``i``."""
    src: Tensor
    dst: Tensor
    rel: Tensor

    @classmethod
    def from_triples(cls, train: Tensor, num_relations: int) -> "KGGraph":
        h, r, t = train.unbind(1)
        return cls(torch.cat([h, t]), torch.cat([t, h]), torch.cat([r, r + num_relations]))

    def without(self, triple_ids: Optional[Tensor]) -> "KGGraph":
        """The graph without the edges (both directions) of training triples ``triple_ids``."""
        if triple_ids is None or triple_ids.numel() == 0:
            return self
        keep = torch.ones(self.src.numel(), dtype=torch.bool, device=self.src.device)
        n = self.src.numel() // 2
        keep[triple_ids] = False
        keep[triple_ids + n] = False
        return KGGraph(self.src[keep], self.dst[keep], self.rel[keep])

    @property
    def edge_index(self) -> Tensor:
        return torch.stack([self.src, self.dst])

    def adj_t(self, num_nodes: int) -> SparseTensor:
        """The transposed adjacency (row: target), for layers that multiply by it."""
        return SparseTensor(row=self.dst, col=self.src, sparse_sizes=(num_nodes, num_nodes))


class KGQGFD(Module):
    r"""QGFD for knowledge-graph queries (see the module docstring): the query
    :math:`q = e_h \odot w_r` attends over all entities, reads their values diffused over a
    transition conditioned on the query relation, and scores every candidate with its
    embedding,

    .. math::
        p_0 = \mathrm{softmax}(q E^\top / \sqrt{d}), \qquad
        Z_T = \mathrm{diffuse}(E W_v, P_r), \qquad
        s(e) = (q + W_o\, p_0 Z_T) \cdot e_e .

    :math:`P_r` gives an edge of relation :math:`\rho` out of a node the weight
    :math:`\exp A_{r\rho}`, normalised over the node's out-edges and a self loop (learnt
    :math:`A`, zero at the start: a uniform walk). :math:`p_0 Z_T = p_T E W_v`: the query
    reads the entities its diffused attention reaches. ``alpha = 0`` is one-hop attention
    over the entities added to DistMult.

    Args:
        num_entities, num_relations: entities and relations (inverse relations are added).
        hidden: embedding width :math:`d`.
        alpha: diffusion weight in ``[0, 1]``.
        steps: diffusion steps ``T``.
        dropout: dropout on the query and the read-out.
    """

    def __init__(self, num_entities: int, num_relations: int, hidden: int = 128,
                 alpha: float = 0.5, steps: int = 3, dropout: float = 0.0):
        super().__init__()
        self.alpha, self.steps, self.dropout = check_alpha(alpha), check_steps(steps), dropout
        hidden = check_positive_int("hidden", hidden)
        self.entity = Embedding(num_entities, hidden)
        self.relation = Embedding(2 * num_relations, hidden)
        self.value = Linear(hidden, hidden, bias=False)
        self.out = Linear(hidden, hidden, bias=False)
        # the seed's extra logit on the query's own entity, per query relation
        self.anchor = Parameter(torch.empty(2 * num_relations))
        # A[r, rho]; the last column is the self loop
        self.edge_logits = Parameter(torch.zeros(2 * num_relations, 2 * num_relations + 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.entity.weight)
        torch.nn.init.xavier_uniform_(self.relation.weight)
        self.value.reset_parameters()
        torch.nn.init.zeros_(self.out.weight)  # starts as DistMult
        torch.nn.init.zeros_(self.edge_logits)
        # about half the seed's mass on the anchor at the start
        torch.nn.init.constant_(self.anchor, math.log(self.entity.num_embeddings))

    def transition(self, graph: KGGraph, relation: int) -> Transition:
        """:math:`P_r` over the graph's edges and a self loop per entity."""
        n = self.entity.num_embeddings
        loops = torch.arange(n, device=graph.src.device)
        src, dst = torch.cat([graph.src, loops]), torch.cat([graph.dst, loops])
        rel = torch.cat([graph.rel, loops.new_full((n,), self.edge_logits.size(1) - 1)])
        weight = softmax(self.edge_logits[relation, rel], src, num_nodes=n)
        return sparse_matrix(src, dst, weight, n)

    per_relation = True  # prepare() depends on the query relation

    def prepare(self, graph: KGGraph, relation: int) -> Tensor:
        """:math:`Z_T`: the entity values diffused over :math:`P_r`."""
        values = self.value(self.entity.weight)
        if self.alpha > 0.0 and self.steps > 0:
            values = diffuse(values, self.transition(graph, relation), self.alpha, self.steps)
        return values

    def score(self, entity: Tensor, relation: Tensor, values: Tensor) -> Tensor:
        emb = self.entity.weight
        query = F.dropout(self.entity(entity) * self.relation(relation), self.dropout,
                          self.training)
        logits = query @ emb.t() / math.sqrt(emb.size(1))
        rows = torch.arange(entity.numel(), device=entity.device)
        logits = logits.index_put((rows, entity), logits[rows, entity] + self.anchor[relation])
        read = F.dropout(logits.softmax(dim=-1) @ values, self.dropout, self.training)
        return (query + self.out(read)) @ emb.t()

    def forward(self, entity: Tensor, relation: Tensor, graph: KGGraph) -> Tensor:
        """Scores ``[B, N]`` of every entity for queries of one relation."""
        if entity.numel() == 0:
            return self.entity.weight.new_zeros(0, self.entity.num_embeddings)
        if not bool((relation == relation[0]).all()):
            raise ValueError("KGQGFD diffuses over the transition of one relation per call")
        return self.score(entity, relation, self.prepare(graph, int(relation[0])))


class EncoderDistMult(Module):
    """Learnt entity embeddings through a graph encoder, then DistMult over all entities."""

    def __init__(self, encoder: Module, num_entities: int, num_relations: int, hidden: int,
                 sparse: bool = False):
        super().__init__()
        self.sparse = sparse  # pass the graph as a SparseTensor (one product per step)
        self.entity = Embedding(num_entities, hidden)
        self.relation = Embedding(2 * num_relations, hidden)
        self.encoder = encoder
        torch.nn.init.xavier_uniform_(self.entity.weight)
        torch.nn.init.xavier_uniform_(self.relation.weight)

    per_relation = False

    def prepare(self, graph: KGGraph, relation: int) -> Tensor:
        n = self.entity.num_embeddings
        return self.encoder(self.entity.weight,
                            graph.adj_t(n) if self.sparse else graph.edge_index)

    def score(self, entity: Tensor, relation: Tensor, z: Tensor) -> Tensor:
        return (z[entity] * self.relation(relation)) @ z.t()

    def forward(self, entity: Tensor, relation: Tensor, graph: KGGraph) -> Tensor:
        return self.score(entity, relation, self.prepare(graph, 0))


class PyGKGE(Module):
    """A :mod:`torch_geometric.nn.kge` model answering ``(e, q)`` queries: tails for
    ``q < R``, heads of relation ``q - R`` otherwise. DistMult and RotatE score all
    candidates at once through their closed forms (the same numbers as the model's own
    ``forward``, tested); other KGE models go through ``forward`` in chunks."""
    per_relation = False

    def __init__(self, kge: Module, num_relations: int, chunk: int = 2 ** 19):
        super().__init__()
        self.kge, self.num_relations, self.chunk = kge, num_relations, chunk

    def prepare(self, graph: Optional[KGGraph], relation: int) -> None:
        return None

    def score(self, entity: Tensor, relation: Tensor, state: None = None) -> Tensor:
        from torch_geometric.nn.kge import DistMult, RotatE

        rel, inverse = relation % self.num_relations, (relation >= self.num_relations)
        kge = self.kge
        if isinstance(kge, DistMult):  # (h * r) . t is symmetric in h and t
            return (kge.node_emb(entity) * kge.rel_emb(rel)) @ kge.node_emb.weight.t()
        if isinstance(kge, RotatE):
            # |h o r - t| = |h - t o conj(r)|: rotate the known side, then one distance
            theta = kge.rel_emb(rel)
            cos, sin = torch.cos(theta), torch.sin(theta)
            sin = torch.where(inverse.view(-1, 1), -sin, sin)
            re, im = kge.node_emb(entity), kge.node_emb_im(entity)
            a_re, a_im = cos * re - sin * im, cos * im + sin * re
            c_re, c_im = kge.node_emb.weight, kge.node_emb_im.weight
            squared = ((a_re ** 2 + a_im ** 2).sum(-1, keepdim=True)
                       + (c_re ** 2 + c_im ** 2).sum(-1) - 2 * (a_re @ c_re.t() + a_im @ c_im.t()))
            return kge.margin - squared.clamp_min(0).sqrt()
        return self._chunked(entity, rel, inverse)

    def _chunked(self, entity: Tensor, rel: Tensor, inverse: Tensor) -> Tensor:
        n = self.kge.num_nodes
        out = []
        step = max(1, self.chunk // n)
        for e, r, inv in zip(entity.split(step), rel.split(step), inverse.split(step),
                             strict=True):
            b = e.numel()
            cand = torch.arange(n, device=e.device).repeat(b)
            fixed, inv = e.repeat_interleave(n), inv.repeat_interleave(n)
            head, tail = torch.where(inv, cand, fixed), torch.where(inv, fixed, cand)
            out.append(self.kge(head, r.repeat_interleave(n), tail).view(b, n))
        return torch.cat(out) if out else self.kge.node_emb.weight.new_zeros(0, n)

    def forward(self, entity: Tensor, relation: Tensor, graph: Optional[KGGraph] = None
                ) -> Tensor:
        return self.score(entity, relation)


def _kge(cls_name: str, num_entities: int, num_relations: int, hidden: int = 128,
         margin: float = 1.0) -> PyGKGE:
    from torch_geometric.nn import kge

    cls = getattr(kge, cls_name)
    if cls_name == "RotatE":  # complex embeddings: hidden real numbers
        return PyGKGE(cls(num_entities, num_relations, hidden // 2, margin=margin),
                      num_relations)
    return PyGKGE(cls(num_entities, num_relations, hidden, margin=margin), num_relations)


def _encoder(kind: str, num_entities: int, num_relations: int, hidden: int = 128,
             **options) -> EncoderDistMult:
    if kind == "gat":
        heads = options.pop("heads", 4)
        net = GAT(hidden, hidden, hidden=hidden // heads, heads=heads, **options)
    else:
        net = APPNPNet(hidden, hidden, hidden=hidden, cached=False, **options)
    # APPNP: one sparse product per step where torch-sparse is there (the same numbers as
    # message passing over edge_index, faster on CPU)
    return EncoderDistMult(net, num_entities, num_relations, hidden,
                           sparse=kind == "appnp" and WITH_TORCH_SPARSE)


_SAME = "128 dimensions, batches of 512 queries"
KG_MODELS: Dict[str, ModelSpec] = {
    "qgfd": ModelSpec(KGQGFD, 0.005, 0.0, dict(hidden=128, alpha=0.5, steps=3, dropout=0.2),
                      "DistMult query read-out of entity values diffused over a query-conditioned "
                      "transition; " + _SAME),
    "gat": ModelSpec(partial(_encoder, "gat"), 0.005, 0.0,
                     dict(hidden=128, heads=4, dropout=0.2), "GAT encoder + DistMult; " + _SAME),
    "appnp": ModelSpec(partial(_encoder, "appnp"), 0.005, 0.0,
                       dict(hidden=128, dropout=0.2, K=10, alpha=0.1),
                       "APPNP encoder + DistMult; " + _SAME),
    "distmult": ModelSpec(partial(_kge, "DistMult"), 0.005, 0.0, dict(hidden=128, margin=1.0),
                          "torch_geometric.nn.kge.DistMult, its own loss; " + _SAME),
    "rotate": ModelSpec(partial(_kge, "RotatE"), 0.005, 0.0, dict(hidden=128, margin=9.0),
                        "torch_geometric.nn.kge.RotatE, its own loss; " + _SAME),
    "attention": ModelSpec(KGQGFD, 0.005, 0.0, dict(hidden=128, alpha=0.0, steps=3, dropout=0.2),
                           "the qgfd model with alpha = 0: one-hop attention, the control; "
                           + _SAME),
}


class KGTask(Task):
    """A loaded knowledge graph: entities, relations and the three splits' triples.

    Args:
        name: the task's name.
        triples: train / valid / test ``[n, 3]`` (head, relation, tail).
        num_entities, num_relations: sizes (relations without inverses).
        quick: a short budget for tests and smoke runs (few training batches per epoch,
            a few hundred validation and test queries).
        batch_size: queries per batch.
        val_queries: size of the fixed validation subset the models are selected on.
    """
    kind = "kg"
    models = KG_MODELS
    columns = (("hits@1", "Hits@1"), ("hits@3", "Hits@3"), ("hits@10", "Hits@10"))
    percent = False
    metric = "filtered MRR"
    budget = (10, 3)

    @classmethod
    def default_budget(cls, extra: Dict[str, Any]) -> Tuple[int, int]:
        return (2, 1) if extra.get("quick") else cls.budget

    def __init__(self, name: str, triples: Triples, num_entities: int, num_relations: int,
                 quick: bool = False, batch_size: int = 512, val_queries: int = 2000):
        self.name, self.triples, self.quick = name, triples, quick
        self.num_entities, self.num_relations = num_entities, num_relations
        self.batch_size = 64 if quick else batch_size
        self.val_queries = 100 if quick else val_queries
        self.test_queries = 200 if quick else None
        self.train_batches = 4 if quick else None
        self.filter = Filter(triples, num_entities, num_relations)

    def stored_config(self) -> Dict[str, Any]:
        return {"quick": self.quick, "batch_size": self.batch_size,
                "val_queries": self.val_queries, "test_queries": self.test_queries,
                "train_batches": self.train_batches}

    check_options = Task.check_known_options

    def setup(self, model: str, seed: int, options: Dict[str, Any],
              device: torch.device) -> "KGExperiment":
        return KGExperiment(self, model, seed, options, device)

    def eval_queries(self, split: str) -> Tensor:
        """``[n, 3]`` (entity, query relation, answer) of ``split``: both directions of every
        triple, the fixed subset of :attr:`val_queries` / :attr:`test_queries` if set."""
        triples = self.triples.valid if split == "val" else self.triples.test
        items = queries(triples, self.num_relations)
        limit = self.val_queries if split == "val" else self.test_queries
        if limit and limit < items.size(0):  # one subset for all models and seeds
            chosen = torch.Generator().manual_seed(0 if split == "val" else 1)
            items = items[torch.randperm(items.size(0), generator=chosen)[:limit]]
        return items

    def batch_metrics(self, entity: Tensor, relation: Tensor, answer: Tensor,
                      scores: Tensor) -> Any:
        """What one evaluation batch contributes (reduced by :meth:`reduce`)."""
        true = self.filter.mask(entity, relation, self.num_entities)
        return answer.numel(), filtered_ranking(scores, answer, true)

    def reduce(self, parts: List[Any]) -> Dict[str, float]:
        """The metrics of a split from its batches' contributions; ``"metric"`` is the main."""
        total = sum(n for n, _ in parts)
        out = {key: sum(n * m[key] for n, m in parts) / total for key in parts[0][1]}
        out["metric"] = out.pop("mrr")
        return out

    def protocol(self, config: Dict[str, Any]) -> str:
        subset = (f"{self.val_queries} validation queries" if self.val_queries
                  else "all validation queries")
        return (f"Adam, batches of {self.batch_size} queries of one relation with their own "
                f"edges taken out of the graph, up to {config['epochs']} epochs, early "
                f"stopping after {config['patience']} epochs without a better filtered MRR "
                f"on {subset} (fixed); test on "
                f"{self.test_queries or 'all'} test queries (both directions)"
                + ("; --quick budget" if self.quick else ""))


class KGExperiment(MiniBatchExperiment):
    def __init__(self, task: KGTask, model: str, seed: int, options: Dict[str, Any],
                 device: torch.device):
        self.task, self.device, self.name = task, device, model
        spec = task.models[model]
        self.model = spec.build(task.num_entities, task.num_relations, **options).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=spec.lr,
                                          weight_decay=spec.weight_decay)
        r = task.num_relations
        self.train = queries(task.triples.train, r).to(device)
        self.train_ids = torch.arange(task.triples.train.size(0)).repeat(2).to(device)
        self.graph = KGGraph.from_triples(task.triples.train.to(device), r)
        self.eval_queries = {split: task.eval_queries(split).to(device)
                             for split in ("val", "test")}

    def batches(self) -> List[Tensor]:
        """Shuffled query indices in batches that share one query relation."""
        order = torch.randperm(self.train.size(0), device=self.device)
        order = order[torch.argsort(self.train[order, 1], stable=True)]
        rel = self.train[order, 1]
        out = []
        for chunk in torch.split(order, torch.bincount(rel).tolist()):
            out.extend(b for b in chunk.split(self.task.batch_size) if b.numel())
        out = [out[i] for i in torch.randperm(len(out)).tolist()]
        return out[:self.task.train_batches] if self.task.train_batches else out

    def train_batches(self) -> List[Tensor]:
        return self.batches()

    def batch_loss(self, idx: Tensor) -> Tensor:
        e, q, a = self.train[idx].unbind(1)
        if isinstance(self.model, PyGKGE):  # its own loss on the batch's triples
            r = self.task.num_relations
            inverse = q >= r
            head, tail = torch.where(inverse, a, e), torch.where(inverse, e, a)
            return self.model.kge.loss(head, q % r, tail)
        graph = self.graph.without(self.train_ids[idx])
        return F.cross_entropy(self.model(e, q, graph), a)

    @torch.no_grad()
    def evaluate(self, split: str) -> Dict[str, float]:
        self.model.eval()
        items = self.eval_queries[split]
        parts = []
        # one relation per batch (the QGFD transition is per query relation)
        order = torch.argsort(items[:, 1], stable=True)
        items = items[order]
        state = None
        for chunk in torch.split(items, torch.bincount(items[:, 1]).tolist()):
            if chunk.numel() == 0:
                continue
            if state is None or self.model.per_relation:  # encode the graph once per state
                state = self.model.prepare(self.graph, int(chunk[0, 1]))
            for batch in chunk.split(self.task.batch_size):
                e, q, a = batch.unbind(1)
                parts.append(self.task.batch_metrics(e, q, a, self.model.score(e, q, state)))
        return self.task.reduce(parts)


def read_triples(raw_dir: str, relations: Optional[Sequence[str]] = None,
                 known_entities: bool = False, columns: str = "hrt"
                 ) -> Tuple[Dict[str, List[Tuple[str, str, str]]], List[str]]:
    """Reads ``train/valid/test.txt`` (tab-separated head, relation, tail) and checks them:
    three fields per line, every relation of valid/test known from train (or from
    ``relations``) and, with ``known_entities``, every entity of valid/test seen in train; a
    ValueError naming the file and line otherwise. ``columns`` is the files' column order
    (``"hrt"``, or ``"rht"`` as kinship and nations ship)."""
    names = ("train", "valid", "test")
    missing = [f"{n}.txt" for n in names if not os.path.isfile(os.path.join(raw_dir, f"{n}.txt"))]
    if missing:
        raise MissingData(f"knowledge graph not found: {raw_dir} lacks {', '.join(missing)}; "
                          f"put the data set's raw files there (nothing is downloaded)")
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


@register("wn18rr", KGTask, "WordNet18RR through PyG's WordNet18RR (40,943 entities, 11 "
                            "relations); filtered MRR and Hits@1/3/10 over all entities; ships "
                            "in datasets/WN18RR; --quick: a smoke budget")
def wn18rr(root: str, dataset: Optional[str], extra: Dict[str, Any]) -> KGTask:
    from torch_geometric.datasets import WordNet18RR

    folder = os.path.join(root, "WN18RR")
    read_triples(os.path.join(folder, "raw"), list(WordNet18RR.edge2id))
    data = WordNet18RR(folder)[0]
    triples = [torch.stack([data.edge_index[0], data.edge_type, data.edge_index[1]], 1)[mask]
               for mask in (data.train_mask, data.val_mask, data.test_mask)]
    return KGTask("wn18rr", Triples(*triples), data.num_nodes, len(WordNet18RR.edge2id),
                  quick=bool(extra.get("quick")))


@register("fb15k-237", KGTask, "FB15k-237 through PyG's FB15k_237, the wn18rr protocol; raw "
                               "train/valid/test.txt go to --root/FB15k-237/raw (published "
                               "filtered MRR: MAGNA 0.369, NBFNet 0.415)")
def fb15k_237(root: str, dataset: Optional[str], extra: Dict[str, Any]) -> KGTask:
    from torch_geometric.datasets import FB15k_237

    folder = os.path.join(root, "FB15k-237")
    read_triples(os.path.join(folder, "raw"))
    splits = [FB15k_237(folder, split=s)[0] for s in ("train", "val", "test")]
    triples = [torch.stack([d.edge_index[0], d.edge_type, d.edge_index[1]], 1) for d in splits]
    num_relations = int(torch.cat([t[:, 1] for t in triples]).max()) + 1
    return KGTask("fb15k-237", Triples(*triples), splits[0].num_nodes, num_relations,
                  quick=bool(extra.get("quick")))


REGIONS = ("africa", "americas", "asia", "europe", "oceania")


class CountriesTask(KGTask):
    """Countries S1-S3 (Bouchard et al. 2015): ``locatedin(country, ?)`` for the held-out
    countries, ranked over the five regions; AUC-PR over all (country, region) pairs, as NTP,
    NeuralLP, MINERVA and CTP report it. Training as for the other knowledge graphs."""
    metric = "AUC-PR"
    columns = ()
    percent = True
    budget = (100, 20)

    def __init__(self, name: str, triples: Triples, entities: List[str], relations: List[str],
                 quick: bool = False):
        super().__init__(name, triples, len(entities), len(relations), quick=quick,
                         val_queries=0)
        self.test_queries = None
        missing = [r for r in REGIONS if r not in entities]
        if missing or "locatedin" not in relations:
            raise ValueError(f"{name}: not a Countries split (missing {missing or 'locatedin'})")
        self.regions = torch.tensor([entities.index(r) for r in REGIONS])
        self.locatedin = relations.index("locatedin")

    @classmethod
    def default_budget(cls, extra: Dict[str, Any]) -> Tuple[int, int]:
        return (3, 1) if extra.get("quick") else cls.budget

    def eval_queries(self, split: str) -> Tensor:
        triples = self.triples.valid if split == "val" else self.triples.test
        if not bool((triples[:, 1] == self.locatedin).all()):
            raise ValueError(f"{self.name}: {split} triples must all be locatedin")
        return triples

    def batch_metrics(self, entity: Tensor, relation: Tensor, answer: Tensor,
                      scores: Tensor) -> Any:
        regions = self.regions.to(scores.device)
        truth = answer.view(-1, 1) == regions.view(1, -1)
        if not bool(truth.any(dim=1).all()):
            raise ValueError(f"{self.name}: an answer is not one of the regions {REGIONS}")
        return scores[:, regions].cpu(), truth.cpu()

    def reduce(self, parts: List[Any]) -> Dict[str, float]:
        from sklearn.metrics import average_precision_score

        scores = torch.cat([p[0] for p in parts]).view(-1).double().numpy()
        truth = torch.cat([p[1] for p in parts]).view(-1).numpy()
        return {"metric": float(average_precision_score(truth, scores))}

    def protocol(self, config: Dict[str, Any]) -> str:
        return (f"Adam, batches of {self.batch_size} queries of one relation with their own "
                f"edges taken out of the graph, up to {config['epochs']} epochs, early stopping "
                f"after {config['patience']} epochs without a better validation AUC-PR; test "
                f"AUC-PR of locatedin(country, region) over the five regions")


def _register_countries(level: int) -> None:
    hops = {1: "1 hop: a neighbour's or the subregion's region",
            2: "2 hops: the country's own subregion is hidden too",
            3: "3 hops: its neighbours' regions are hidden too"}[level]

    @register(f"countries-s{level}", CountriesTask,
              f"Countries S{level} ({hops}); AUC-PR over (country, region); ships in "
              f"datasets/kg/countries_S{level}")
    def load(root: str, dataset: Optional[str], extra: Dict[str, Any]) -> CountriesTask:
        rows, relations = read_triples(os.path.join(root, "kg", f"countries_S{level}"),
                                       known_entities=True)
        triples, entities = index_triples(rows, relations)
        return CountriesTask(f"countries-s{level}", triples, entities, relations,
                             quick=bool(extra.get("quick")))


for _level in (1, 2, 3):
    _register_countries(_level)
