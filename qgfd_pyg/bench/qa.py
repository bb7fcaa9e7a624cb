r"""Multi-hop path questions over a knowledge graph (MetaQA-style): the QA task kind.

``path-qa --kg NAME`` generates questions deterministically from a knowledge graph: an anchor
entity and a relation path of 1-3 relations (inverse relations included); the answers are every
entity other than the anchor that the path reaches in the *full* graph (train + valid + test
triples), while the models see only the training triples. Questions are split 80/10/10 per
seed. Every model scores all entities for a question, trained with the cross-entropy against
the uniform distribution over its answers; reported: Hits@1 (the top entity is an answer) and
MRR (of the best-ranked answer), overall and per hop count.

The anchor is never an answer: every model's score for it is set below all others.

Not a benchmark: the answers come from the full graph and the split is by question, so
training labels carry held-out facts (seed 0: 1,166 of nations' 2,390 training questions have
an answer only a validation or test triple reaches). It checks that a model can follow a given
relation path; multi-hop questions are judged on PathQuestion (``pathquestion.py``).

Models (one budget): ``qgfd`` (:class:`~qgfd_pyg.bench.relational.KGQGFD`): mass
flows from the anchor, at step ``t`` over the relations that the path's ``t``-th relation
picks through a learnt table (MetaQA: a GRU over the question's tokens), summed with learnt
hop weights, plus a DistMult-style embedding term; ``attention``: the same with one step (the
one-hop control); ``gat`` / ``appnp``: the encoders over the training graph, with the
embedding scorer :math:`(z_a \odot w_{r_1} \odot \dots \odot w_{r_k}) \cdot z_v`;
``rule``: the reference, the path followed on the training graph, no learning.
"""
import math
import os
import random
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import Module

from .models import ModelSpec, one_hop_control
from .relational import (KGGraph, KGQGFD, appnp_scorer, gat_scorer, index_triples,
                         log_uniform_target, read_triples)
from .tasks import QUICK, MiniBatchExperiment, Task, TaskOption, register
from .train import make_optimizer

MAX_HOPS = 3
# name -> (folder under --root, column order of its files)
KG_SETS = {"kinship": ("kg/kinship", "rht"), "nations": ("kg/nations", "rht"),
           "umls": ("kg/umls", "hrt"), "wn18rr": ("WN18RR/raw", "hrt")}


class Questions(NamedTuple):
    """``anchor`` ``[Q]``, ``path`` ``[Q, 3]`` (relations, ``-1`` padded; ``r + R`` is the
    inverse of ``r``), ``hops`` ``[Q]``, and the answers as CSR (``answer_ptr``, ``answer``)."""
    anchor: Tensor
    path: Tensor
    hops: Tensor
    answer_ptr: Tensor
    answer: Tensor

    def answers(self, i: int) -> List[int]:
        return self.answer[self.answer_ptr[i]:self.answer_ptr[i + 1]].tolist()

    def subset(self, idx: Tensor) -> "Questions":
        lists = [self.answers(int(i)) for i in idx]
        ptr = torch.tensor([0] + [len(a) for a in lists]).cumsum(0)
        flat = torch.tensor([x for a in lists for x in a], dtype=torch.long)
        return Questions(self.anchor[idx], self.path[idx], self.hops[idx], ptr, flat)


def adjacency(triples: Tensor, num_relations: int) -> Dict[Tuple[int, int], List[int]]:
    """``(entity, relation) -> sorted neighbours``, with inverse relations ``r + R``."""
    out: Dict[Tuple[int, int], set] = {}
    for h, r, t in triples.tolist():
        out.setdefault((h, r), set()).add(t)
        out.setdefault((t, r + num_relations), set()).add(h)
    return {key: sorted(value) for key, value in out.items()}


def follow(adj: Dict[Tuple[int, int], List[int]], anchor: int, path: Sequence[int]) -> set:
    """Every entity the relation path reaches from ``anchor``."""
    frontier = {anchor}
    for relation in path:
        frontier = {t for e in frontier for t in adj.get((e, relation), ())}
    return frontier


def generate_questions(triples: Tensor, num_entities: int, num_relations: int,
                       per_hop: int = 1000, hops: Sequence[int] = (1, 2, 3),
                       max_answers: int = 20, seed: int = 0) -> Questions:
    """Up to ``per_hop`` distinct questions per hop count: random walks of that length from
    random anchors give the paths; a question keeps 1 to ``max_answers`` answers (the anchor
    excluded). Deterministic for a given ``seed``."""
    adj = adjacency(triples, num_relations)
    out_edges: Dict[int, List[Tuple[int, int]]] = {}
    for (e, r), tails in adj.items():
        out_edges.setdefault(e, []).extend((r, t) for t in tails)
    rng = random.Random(seed)
    anchors = sorted(out_edges)
    seen, rows = set(), []
    for k in hops:
        found = 0
        for _ in range(50 * per_hop):
            if found == per_hop:
                break
            e = start = rng.choice(anchors)
            path = []
            for _ in range(k):
                if e not in out_edges:
                    break
                r, e = rng.choice(out_edges[e])
                path.append(r)
            if len(path) < k or (start, tuple(path)) in seen:
                continue
            answers = sorted(follow(adj, start, path) - {start})
            if 1 <= len(answers) <= max_answers:
                seen.add((start, tuple(path)))
                rows.append((start, path, answers))
                found += 1
    if not rows:
        raise ValueError("the knowledge graph gives no path questions (no relation path "
                         "reaches an entity other than its anchor)")
    anchor = torch.tensor([a for a, _, _ in rows])
    path = torch.tensor([p + [-1] * (MAX_HOPS - len(p)) for _, p, _ in rows])
    hops_t = torch.tensor([len(p) for _, p, _ in rows])
    ptr = torch.tensor([0] + [len(a) for _, _, a in rows]).cumsum(0)
    flat = torch.tensor([x for _, _, a in rows for x in a], dtype=torch.long)
    return Questions(anchor, path, hops_t, ptr, flat)


class PathRule(Module):
    """The reference row: follows each question's relation path on the training graph
    (breadth-first, no learning); scores 1 on every entity it reaches, 0 elsewhere."""

    def __init__(self, num_entities: int, num_relations: int, **_):
        super().__init__()
        self.num_entities, self.num_relations = num_entities, num_relations
        self._adjacency: Dict[int, Dict[Tuple[int, int], List[int]]] = {}

    def forward(self, anchor: Tensor, path: Tensor, graph: KGGraph) -> Tensor:
        key = id(graph)
        if key not in self._adjacency:  # one adjacency per graph object
            triples = torch.stack([graph.src, graph.rel, graph.dst], 1)
            forward = triples[graph.rel < self.num_relations].cpu()
            self._adjacency = {key: adjacency(forward, self.num_relations)}
        adj = self._adjacency[key]
        scores = torch.zeros(anchor.numel(), self.num_entities)
        for row, (a, p) in enumerate(zip(anchor.tolist(), path.tolist(), strict=True)):
            reached = list(follow(adj, a, [r for r in p if r >= 0]))
            scores[row, reached] = 1.0
        return scores.to(anchor.device)


_SAME = "64 dimensions, batches of 128 questions"
# normalization, dangling and the embedding term: chosen on validation by
# benchmarks/sweep_relational.py (benchmarks/results/relational_search.md)
_FLOW = dict(hidden=64, steps=3, alpha=0.9, heads=1, dropout=0.1, normalization="none",
             dangling="drop", embedding_scores=False)
_QGFD = ModelSpec(KGQGFD, 0.01, 0.0, _FLOW,
                  "query-conditioned flow: step t weighs the relations by the path's t-th "
                  "relation (or the question's tokens), learnt hop weights, walk counts "
                  "(settings: relational_search.md); " + _SAME)
QA_MODELS: Dict[str, ModelSpec] = {
    "qgfd": _QGFD,
    "attention": one_hop_control(_QGFD, "the qgfd model with one step, the one-hop control; "
                                 + _SAME, steps=1),
    "gat": ModelSpec(gat_scorer, 0.005, 0.0, dict(hidden=64, heads=4, dropout=0.1),
                     "GAT encoder + path scorer; " + _SAME),
    "appnp": ModelSpec(appnp_scorer, 0.005, 0.0,
                       dict(hidden=64, dropout=0.1, K=10, alpha=0.1, cached=True),
                       "APPNP encoder + path scorer (the training graph is fixed: its "
                       "propagation matrix cached); " + _SAME),
    "rule": ModelSpec(PathRule, 0.0, 0.0, {},
                      "reference, not learnt: the question's relation path followed on the "
                      "training graph (breadth-first)"),
}


class PathQATask(Task):
    """Path questions over a knowledge graph (see the module docstring)."""
    kind = "qa"
    models = QA_MODELS
    metric = "Hits@1"
    columns = tuple((f"{m}_{k}hop", f"{label} {k}-hop") for k in (1, 2, 3)
                    for m, label in (("hits@1", "Hits@1"), ("mrr", "MRR"))) + (("mrr", "MRR"),)
    budget = (200, 20)
    quick_budget = (2, 1)
    options = (QUICK,
               TaskOption("--kg", "path-qa: the knowledge graph questions come from (kinship, "
                          "nations, umls, wn18rr; default kinship)", str),
               TaskOption("--metaqa", "path-qa: a folder with MetaQA's kb.txt and "
                          "{1,2,3}-hop/vanilla/qa_{train,dev,test}.txt", str))
    vocab: Optional[int] = None  # token vocabulary of text questions (MetaQA)
    controller = "path"  # how KGQGFD reads a question
    anchor_answers = False  # whether a question's anchor may be its answer (else ranked last)

    def __init__(self, name: str, graph_triples: Tensor, questions: Questions,
                 num_entities: int, num_relations: int, quick: bool = False,
                 batch_size: int = 128):
        self.name, self.questions, self.quick = name, questions, quick
        self.graph_triples = graph_triples
        self.num_entities, self.num_relations = num_entities, num_relations
        self.batch_size = batch_size

    def stored_config(self) -> Dict[str, Any]:
        return {"quick": self.quick, "questions": int(self.questions.anchor.numel()),
                "batch_size": self.batch_size}

    @classmethod
    def check_options(cls, model: str, options: Dict[str, Any]) -> None:
        cls.check_known_options(model, options)

    def split(self, seed: int) -> Dict[str, Questions]:
        """80/10/10 of the questions, fixed per seed."""
        q = self.questions.anchor.numel()
        order = torch.randperm(q, generator=torch.Generator().manual_seed(seed))
        cut = [int(0.8 * q), int(0.9 * q)]
        parts = (order[:cut[0]], order[cut[0]:cut[1]], order[cut[1]:])
        return {name: self.questions.subset(idx)
                for name, idx in zip(("train", "val", "test"), parts, strict=True)}

    def setup(self, model: str, seed: int, options: Dict[str, Any],
              device: torch.device) -> "PathQAExperiment":
        return PathQAExperiment(self, model, seed, options, device)

    splits_note = "questions split 80/10/10 per seed"

    def training(self, config: Dict[str, Any]) -> str:
        return f"Adam, batches of {self.batch_size} questions"

    def protocol_notes(self, config: Dict[str, Any]) -> str:
        return self.splits_note + ("; --quick budget" if self.quick else "")


def answer_mask(questions: Questions, idx: Tensor, num_entities: int) -> Tensor:
    """``[B, N]`` boolean: the answers of questions ``idx``."""
    mask = torch.zeros(idx.numel(), num_entities, dtype=torch.bool)
    for row, i in enumerate(idx.tolist()):
        mask[row, questions.answers(i)] = True
    return mask


def path_metrics(scores: Tensor, answers: Tensor) -> Tuple[Tensor, Tensor]:
    """Per question: Hits@1 (the top entity is an answer) and the reciprocal rank of the
    best-ranked answer (ties count half)."""
    best = scores.masked_fill(~answers, -math.inf).max(dim=1).values.view(-1, 1)
    above = (scores > best).sum(1).double()
    tied = ((scores == best) & ~answers).sum(1).double()
    rank = 1 + above + tied / 2
    return (rank == 1).double(), 1.0 / rank


class PathQAExperiment(MiniBatchExperiment):
    def __init__(self, task: PathQATask, model: str, seed: int, options: Dict[str, Any],
                 device: torch.device):
        self.task, self.device, self.name = task, device, model
        spec = task.models[model]
        if spec.build is KGQGFD:  # its controller reads paths or question tokens
            options = {"controller": task.controller, **options}
        self.model = spec.build(task.num_entities, task.num_relations, vocab=task.vocab,
                                **options).to(device)
        self.optimizer = make_optimizer(self.model, spec)  # None for the rule
        self.graph = KGGraph.from_triples(task.graph_triples.to(device), task.num_relations)
        self.splits = task.split(seed)

    def _batches(self, questions: Questions, shuffle: bool) -> List[Tensor]:
        q = questions.anchor.numel()
        order = torch.randperm(q) if shuffle else torch.arange(q)
        batches = list(order.split(self.task.batch_size))
        return batches[:4] if self.task.quick and shuffle else batches

    def train_batches(self) -> List[Tensor]:
        return self._batches(self.splits["train"], shuffle=True)

    def scores(self, questions: Questions, idx: Tensor) -> Tensor:
        """Scores ``[B, N]``; where the anchor is never an answer (the task's
        ``anchor_answers``), it is ranked last for every model."""
        anchor = questions.anchor[idx].to(self.device)
        out = self.model(anchor, questions.path[idx].to(self.device), self.graph)
        if self.task.anchor_answers:
            return out
        rows = torch.arange(anchor.numel(), device=self.device)
        return out.index_put((rows, anchor), out.new_tensor(-1e9))

    def batch_loss(self, idx: Tensor) -> Tensor:
        questions = self.splits["train"]
        target = answer_mask(questions, idx, self.task.num_entities).to(self.device)
        return log_uniform_target(self.scores(questions, idx), target)

    @torch.no_grad()
    def evaluate(self, split: str) -> Dict[str, float]:
        self.model.eval()
        questions = self.splits[split]
        hits, rr = [], []
        for idx in self._batches(questions, shuffle=False):
            scores = self.scores(questions, idx).cpu()
            h, r = path_metrics(scores, answer_mask(questions, idx, self.task.num_entities))
            hits.append(h)
            rr.append(r)
        hits_t, rr_t = torch.cat(hits), torch.cat(rr)
        out = {"metric": float(hits_t.mean()), "mrr": float(rr_t.mean())}
        for k in (1, 2, 3):
            at = questions.hops == k
            out[f"hits@1_{k}hop"] = float(hits_t[at].mean()) if at.any() else float("nan")
            out[f"mrr_{k}hop"] = float(rr_t[at].mean()) if at.any() else float("nan")
        return out


def load_kg(root: str, name: str) -> Tuple[Tensor, Tensor, int, int]:
    """(training triples, all triples, entities, relations) of a ``KG_SETS`` graph."""
    if name not in KG_SETS:
        raise ValueError(f"unknown --kg {name!r}; choose one of {', '.join(KG_SETS)}")
    folder, order = KG_SETS[name]
    raw = os.path.join(root, folder)
    rows, _ = read_triples(raw, columns=order)
    relations = sorted({r for _, r, _ in rows["train"]})
    triples, entities = index_triples(rows, relations)
    return (triples.train, torch.cat(list(triples)), len(entities), len(relations))


@register("path-qa", PathQATask,
          "MetaQA-style k-hop path questions (k = 1, 2, 3) generated from --kg KG "
          "(kinship, nations, umls, wn18rr; default kinship); answers in the full graph, "
          "models see the training graph; Hits@1 and MRR per hop; --metaqa DIR reads "
          "MetaQA (kb.txt, {1,2,3}-hop/vanilla/qa_{train,dev,test}.txt) instead")
def path_qa(root: str, dataset: Optional[str], extra: Dict[str, Any]) -> PathQATask:
    if extra.get("metaqa"):
        return read_metaqa(extra["metaqa"], quick=bool(extra.get("quick")))
    name = extra.get("kg") or "kinship"
    train, full, n, r = load_kg(root, name)
    quick = bool(extra.get("quick"))
    questions = generate_questions(full, n, r, per_hop=60 if quick else 1000)
    return PathQATask(f"path-qa-{name}", train, questions, n, r, quick=quick)


class MetaQATask(PathQATask):
    """MetaQA's own layout (see :func:`read_metaqa`). A question is its anchor and its words
    (the anchor's replaced by ``<e>``), which take the place of the relation path: the qgfd
    model reads them with its text controller, the encoders compose their embeddings; the
    files' splits are used as they are, and each question keeps its hop count."""
    controller = "text"
    models = {name: spec for name, spec in QA_MODELS.items() if name != "rule"}

    def __init__(self, name: str, graph_triples: Tensor, splits: Dict[str, Questions],
                 num_entities: int, num_relations: int, vocab: int, quick: bool = False):
        everything = splits["train"]
        super().__init__(name, graph_triples, everything, num_entities, num_relations, quick)
        self.fixed, self.vocab = splits, vocab

    def split(self, seed: int) -> Dict[str, Questions]:
        return self.fixed

    splits_note = "MetaQA's train/dev/test files"


def _tokens(text: str) -> List[str]:
    return [w for w in "".join(c.lower() if c.isalnum() else " " for c in text).split()]


METAQA_SPLITS = (("train", "qa_train.txt"), ("val", "qa_dev.txt"), ("test", "qa_test.txt"))


def read_metaqa(folder: str, quick: bool = False) -> MetaQATask:
    """Reads MetaQA as it ships: ``folder/kb.txt`` (``head|relation|tail``) and
    ``folder/{1,2,3}-hop/vanilla/qa_{train,dev,test}.txt`` (a question with its anchor in
    ``[brackets]``, a tab, the answers joined by ``|``). Every hop folder present is read
    (at least one must be); each question records its hop count. A ValueError names the
    file and line of a malformed line or of an entity the KB lacks."""
    from .data import MissingData, missing_data

    kb = os.path.join(folder, "kb.txt")
    hops = [k for k in (1, 2, 3) if os.path.isdir(os.path.join(folder, f"{k}-hop", "vanilla"))]
    if not os.path.isfile(kb) or not hops:
        raise missing_data(f"MetaQA not found: {folder} needs kb.txt and "
                           f"{{1,2,3}}-hop/vanilla/qa_{{train,dev,test}}.txt as MetaQA ships "
                           f"them", downloadable=False)
    missing = [os.path.join(f"{k}-hop", "vanilla", file) for k in hops
               for _, file in METAQA_SPLITS
               if not os.path.isfile(os.path.join(folder, f"{k}-hop", "vanilla", file))]
    if missing:
        raise MissingData(f"MetaQA incomplete: {folder} lacks {', '.join(missing)}")
    entity: Dict[str, int] = {}
    relation: Dict[str, int] = {}
    triples = []
    with open(kb) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("|")
            if len(fields) != 3 or not all(x.strip() for x in fields):
                raise ValueError(f"{kb}:{number}: expected head|relation|tail")
            h, r, t = (x.strip() for x in fields)
            triples.append((entity.setdefault(h, len(entity)),
                            relation.setdefault(r, len(relation)),
                            entity.setdefault(t, len(entity))))
    words: Dict[str, int] = {"<unk>": 0}
    splits = {}
    for split, file in METAQA_SPLITS:  # train first: it defines the vocabulary
        rows = []
        for k in hops:
            path = os.path.join(folder, f"{k}-hop", "vanilla", file)
            found = []
            with open(path) as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    question, tab, answers = line.rstrip("\n").partition("\t")
                    start, end = question.find("["), question.find("]")
                    if not tab or start < 0 or end < start or not answers.strip():
                        raise ValueError(f"{path}:{number}: expected 'question with [anchor]"
                                         f"<TAB>answer|answer...'")
                    names = [question[start + 1:end].strip()] + [
                        a.strip() for a in answers.split("|") if a.strip()]
                    unknown = [x for x in names if x not in entity]
                    if unknown:
                        raise ValueError(f"{path}:{number}: entity {unknown[0]!r} is not in "
                                         f"kb.txt")
                    tokens = _tokens(question[:start]) + ["<e>"] + _tokens(question[end + 1:])
                    ids = [words.setdefault(w, len(words)) if split == "train" else
                           words.get(w, 0) for w in tokens]
                    found.append((entity[names[0]], ids,
                                  sorted({entity[a] for a in names[1:]}), k))
            rows.extend(found[:200] if quick else found)
        if not rows:
            raise ValueError(f"{folder}: no questions in the {split} files")
        length = max(len(ids) for _, ids, _, _ in rows)
        splits[split] = Questions(
            torch.tensor([a for a, _, _, _ in rows]),
            torch.tensor([ids + [-1] * (length - len(ids)) for _, ids, _, _ in rows]),
            torch.tensor([k for _, _, _, k in rows]),
            torch.tensor([0] + [len(a) for _, _, a, _ in rows]).cumsum(0),
            torch.tensor([x for _, _, a, _ in rows for x in a], dtype=torch.long))
    return MetaQATask("path-qa-metaqa", torch.tensor(triples).view(-1, 3), splits, len(entity),
                      len(relation), len(words), quick=quick)
