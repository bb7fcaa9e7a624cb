r"""Multi-hop path questions over a knowledge graph (MetaQA-style): the QA task kind.

``path-qa --kg NAME`` generates questions deterministically from a knowledge graph: an anchor
entity and a relation path of 1-3 relations (inverse relations included); the answers are every
entity other than the anchor that the path reaches in the *full* graph (train + valid + test
triples), while the models see only the training triples. Questions are split 80/10/10 per
seed. Every model scores all entities for a question, trained with the cross-entropy against
the uniform distribution over its answers; reported: Hits@1 (the top entity is an answer) and
MRR (of the best-ranked answer), overall and per hop count.

Models (one budget): ``qgfd`` (:class:`PathQGFD`): the question attends over the entities,
anchor first, and reads their values diffused over a transition conditioned on the question's
relations; ``attention``: the same with ``alpha = 0`` (one hop); ``gat`` / ``appnp``: the
encoders over the training graph, with the same question scorer. The question vector composes
the path as DistMult does: :math:`q = e_a \odot w_{r_1} \odot \dots \odot w_{r_k}`.
"""
import math
import os
import random
from functools import partial
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Embedding, Linear, Module, Parameter
from torch_geometric.utils import softmax

from .._checks import check_alpha, check_positive_int, check_steps
from ..diffusion import diffuse
from ..spmm import sparse_matrix
from .kg import KGGraph, index_triples, read_triples
from .models import GAT, APPNPNet, ModelSpec
from .tasks import MiniBatchExperiment, Task, register

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


def compose(relation: Embedding, path: Tensor) -> Tensor:
    """``w_{r_1} * ... * w_{r_k}`` per question (padding ``-1`` contributes ones)."""
    weights = relation(path.clamp_min(0))
    weights = torch.where((path >= 0).unsqueeze(-1), weights, torch.ones_like(weights))
    return weights.prod(dim=1)


class PathQGFD(Module):
    r"""QGFD for path questions: the question :math:`q = e_a \odot \prod_i w_{r_i}` attends
    over all entities (an extra, learnt logit on the anchor), and reads the entity values
    diffused over a transition conditioned on the question's relations (edge logit
    :math:`\sum_i A_{r_i \rho}`, normalised over a node's out-edges and a self loop); every
    entity is scored against :math:`q + W_o\, p_0 Z_T`. Each question diffuses over its own
    transition: a batch is one block-diagonal graph.

    Args:
        num_entities, num_relations: entities and relations (inverse relations are added).
        hidden: embedding width.
        alpha: diffusion weight in ``[0, 1]`` (``0``: one-hop attention, no diffusion).
        steps: diffusion steps ``T``.
        dropout: dropout on the question and the read-out.
        vocab: size of the question vocabulary when questions are token ids (MetaQA) rather
            than relation paths.
    """

    dense_up_to = 2048  # entities up to which the transitions are dense [B, N, N]

    def __init__(self, num_entities: int, num_relations: int, hidden: int = 64,
                 alpha: float = 0.7, steps: int = 4, dropout: float = 0.1,
                 vocab: Optional[int] = None):
        super().__init__()
        self.alpha, self.steps, self.dropout = check_alpha(alpha), check_steps(steps), dropout
        hidden = check_positive_int("hidden", hidden)
        self.entity = Embedding(num_entities, hidden)
        # the question's words: its relations (path-qa) or its tokens (MetaQA, vocab)
        self.relation = Embedding(vocab or 2 * num_relations, hidden)
        self.value = Linear(hidden, hidden, bias=False)
        self.out = Linear(hidden, hidden, bias=False)
        self.anchor = Parameter(torch.empty(()))
        self.edge_logits = Parameter(torch.empty(vocab or 2 * num_relations,
                                                 2 * num_relations + 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.entity.weight)
        torch.nn.init.normal_(self.relation.weight, 1.0, 0.1)  # near-identity compositions
        self.value.reset_parameters()
        torch.nn.init.zeros_(self.out.weight)
        torch.nn.init.zeros_(self.edge_logits)
        torch.nn.init.constant_(self.anchor, math.log(self.entity.num_embeddings))

    def forward(self, anchor: Tensor, path: Tensor, graph: KGGraph) -> Tensor:
        """Scores ``[B, N]`` of every entity."""
        emb = self.entity.weight
        n, b = emb.size(0), anchor.numel()
        query = F.dropout(self.entity(anchor) * compose(self.relation, path), self.dropout,
                          self.training)
        logits = query @ emb.t() / math.sqrt(emb.size(1))
        rows = torch.arange(b, device=anchor.device)
        seed = logits.index_put((rows, anchor), logits[rows, anchor] + self.anchor).softmax(-1)
        values = self.value(emb)
        if self.alpha > 0.0 and self.steps > 0 and b:
            # per question: sum of A over its relations, for every edge and self loop
            loops = torch.arange(n, device=anchor.device)
            src, dst = torch.cat([graph.src, loops]), torch.cat([graph.dst, loops])
            rel = torch.cat([graph.rel, loops.new_full((n,), self.edge_logits.size(1) - 1)])
            mask = (path >= 0).unsqueeze(-1).to(emb.dtype)
            per_question = (self.edge_logits[path.clamp_min(0)] * mask).sum(1)  # [B, 2R+1]
            weight = softmax(per_question[:, rel], src, num_nodes=n, dim=1)  # [B, E + N]
            if n <= self.dense_up_to:  # one dense [N, N] transition per question
                P = values.new_zeros(b, n, n).index_put(
                    (rows.view(-1, 1).expand_as(weight), src.expand_as(weight),
                     dst.expand_as(weight)), weight, accumulate=True)
                z = diffuse(values.expand(b, n, -1), P, self.alpha, self.steps)
            else:  # a block-diagonal sparse batch
                offset = (rows * n).view(-1, 1)
                P = sparse_matrix((src.view(1, -1) + offset).view(-1),
                                  (dst.view(1, -1) + offset).view(-1), weight.reshape(-1), b * n)
                z = diffuse(values.repeat(b, 1), P, self.alpha, self.steps).view(b, n, -1)
            read = torch.einsum("bn,bnd->bd", seed, z)
        else:
            read = seed @ values
        read = F.dropout(read, self.dropout, self.training)
        return (query + self.out(read)) @ emb.t()


class EncoderPathScorer(Module):
    """Entity embeddings through a graph encoder, then the DistMult path scorer."""

    def __init__(self, encoder: Module, num_entities: int, num_relations: int, hidden: int,
                 vocab: Optional[int] = None):
        super().__init__()
        self.entity = Embedding(num_entities, hidden)
        self.relation = Embedding(vocab or 2 * num_relations, hidden)
        self.encoder = encoder
        torch.nn.init.xavier_uniform_(self.entity.weight)
        torch.nn.init.normal_(self.relation.weight, 1.0, 0.1)

    def forward(self, anchor: Tensor, path: Tensor, graph: KGGraph) -> Tensor:
        z = self.encoder(self.entity.weight, graph.edge_index)
        return (z[anchor] * compose(self.relation, path)) @ z.t()


def _encoder(kind: str, num_entities: int, num_relations: int, hidden: int = 64,
             vocab: Optional[int] = None, **options) -> EncoderPathScorer:
    if kind == "gat":
        heads = options.pop("heads", 4)
        net = GAT(hidden, hidden, hidden=hidden // heads, heads=heads, **options)
    else:
        net = APPNPNet(hidden, hidden, hidden=hidden, cached=True, **options)
    return EncoderPathScorer(net, num_entities, num_relations, hidden, vocab)


_SAME = "64 dimensions, batches of 128 questions"
QA_MODELS: Dict[str, ModelSpec] = {
    "qgfd": ModelSpec(PathQGFD, 0.005, 0.0, dict(hidden=64, alpha=0.7, steps=4, dropout=0.1),
                      "question attention over entities diffused over a question-conditioned "
                      "transition; " + _SAME),
    "attention": ModelSpec(PathQGFD, 0.005, 0.0, dict(hidden=64, alpha=0.0, steps=4,
                                                       dropout=0.1),
                           "the qgfd model with alpha = 0 (one hop), the control; " + _SAME),
    "gat": ModelSpec(partial(_encoder, "gat"), 0.005, 0.0, dict(hidden=64, heads=4, dropout=0.1),
                     "GAT encoder + path scorer; " + _SAME),
    "appnp": ModelSpec(partial(_encoder, "appnp"), 0.005, 0.0,
                       dict(hidden=64, dropout=0.1, K=10, alpha=0.1),
                       "APPNP encoder + path scorer; " + _SAME),
}


class PathQATask(Task):
    """Path questions over a knowledge graph (see the module docstring)."""
    kind = "qa"
    models = QA_MODELS
    metric = "Hits@1"
    columns = tuple((f"{m}_{k}hop", f"{label} {k}-hop") for k in (1, 2, 3)
                    for m, label in (("hits@1", "Hits@1"), ("mrr", "MRR"))) + (("mrr", "MRR"),)
    budget = (200, 20)
    vocab: Optional[int] = None  # token vocabulary of text questions (MetaQA)

    def __init__(self, name: str, graph_triples: Tensor, questions: Questions,
                 num_entities: int, num_relations: int, quick: bool = False,
                 batch_size: int = 128):
        self.name, self.questions, self.quick = name, questions, quick
        self.graph_triples = graph_triples
        self.num_entities, self.num_relations = num_entities, num_relations
        self.batch_size = batch_size

    @classmethod
    def default_budget(cls, extra: Dict[str, Any]) -> Tuple[int, int]:
        return (2, 1) if extra.get("quick") else cls.budget

    def stored_config(self) -> Dict[str, Any]:
        return {"quick": self.quick, "questions": int(self.questions.anchor.numel()),
                "batch_size": self.batch_size}

    check_options = Task.check_known_options

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

    def protocol(self, config: Dict[str, Any]) -> str:
        return (f"Adam, batches of {self.batch_size} questions, up to {config['epochs']} "
                f"epochs, early stopping after {config['patience']} epochs without a better "
                f"validation Hits@1; questions split 80/10/10 per seed"
                + ("; --quick budget" if self.quick else ""))


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
        self.model = spec.build(task.num_entities, task.num_relations, vocab=task.vocab,
                                **options).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=spec.lr,
                                          weight_decay=spec.weight_decay)
        self.graph = KGGraph.from_triples(task.graph_triples.to(device), task.num_relations)
        self.splits = task.split(seed)

    def _batches(self, questions: Questions, shuffle: bool) -> List[Tensor]:
        q = questions.anchor.numel()
        order = torch.randperm(q) if shuffle else torch.arange(q)
        batches = list(order.split(self.task.batch_size))
        return batches[:4] if self.task.quick and shuffle else batches

    def train_batches(self) -> List[Tensor]:
        return self._batches(self.splits["train"], shuffle=True)

    def batch_loss(self, idx: Tensor) -> Tensor:
        questions = self.splits["train"]
        target = answer_mask(questions, idx, self.task.num_entities).to(self.device)
        target = target.double() / target.sum(1, keepdim=True)
        scores = self.model(questions.anchor[idx].to(self.device),
                            questions.path[idx].to(self.device), self.graph)
        return -(target.to(scores.dtype) * scores.log_softmax(-1)).sum(1).mean()

    @torch.no_grad()
    def evaluate(self, split: str) -> Dict[str, float]:
        self.model.eval()
        questions = self.splits[split]
        hits, rr = [], []
        for idx in self._batches(questions, shuffle=False):
            scores = self.model(questions.anchor[idx].to(self.device),
                                questions.path[idx].to(self.device), self.graph).cpu()
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
          "MetaQA's kb.txt and qa_{train,dev,test}.txt instead")
def path_qa(root: str, dataset: Optional[str], extra: Dict[str, Any]) -> PathQATask:
    if extra.get("metaqa"):
        return read_metaqa(extra["metaqa"], quick=bool(extra.get("quick")))
    name = extra.get("kg") or "kinship"
    train, full, n, r = load_kg(root, name)
    quick = bool(extra.get("quick"))
    questions = generate_questions(full, n, r, per_hop=60 if quick else 1000)
    return PathQATask(f"path-qa-{name}", train, questions, n, r, quick=quick)


class MetaQATask(PathQATask):
    """MetaQA's own layout: ``kb.txt`` (``head|relation|tail``) and
    ``qa_{train,dev,test}.txt`` (a question with its anchor in ``[brackets]``, a tab, the
    answers joined by ``|``). A question is its anchor and its words (the anchor's replaced
    by ``<e>``), which take the place of the relation path in the same models; the files'
    splits are used as they are."""

    def __init__(self, name: str, graph_triples: Tensor, splits: Dict[str, Questions],
                 num_entities: int, num_relations: int, vocab: int, quick: bool = False):
        everything = splits["train"]
        super().__init__(name, graph_triples, everything, num_entities, num_relations, quick)
        self.fixed, self.vocab = splits, vocab

    def split(self, seed: int) -> Dict[str, Questions]:
        return self.fixed

    def protocol(self, config: Dict[str, Any]) -> str:
        return super().protocol(config).replace("questions split 80/10/10 per seed",
                                                "MetaQA's train/dev/test files")


def _tokens(text: str) -> List[str]:
    return [w for w in "".join(c.lower() if c.isalnum() else " " for c in text).split()]


def read_metaqa(folder: str, quick: bool = False) -> MetaQATask:
    """Reads MetaQA's ``kb.txt`` and ``qa_{train,dev,test}.txt`` from ``folder``; a
    ValueError naming the file and line for a malformed line or an entity the KB lacks."""
    from .data import MissingData

    files = ["kb.txt"] + [f"qa_{s}.txt" for s in ("train", "dev", "test")]
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise MissingData(f"MetaQA not found: {folder} lacks {', '.join(missing)}; put "
                          f"MetaQA's kb.txt and qa_*.txt there (nothing is downloaded)")
    entity: Dict[str, int] = {}
    relation: Dict[str, int] = {}
    triples = []
    path = os.path.join(folder, "kb.txt")
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("|")
            if len(fields) != 3 or not all(x.strip() for x in fields):
                raise ValueError(f"{path}:{number}: expected head|relation|tail")
            h, r, t = (x.strip() for x in fields)
            triples.append((entity.setdefault(h, len(entity)),
                            relation.setdefault(r, len(relation)),
                            entity.setdefault(t, len(entity))))
    words: Dict[str, int] = {"<unk>": 0}
    splits = {}
    for split, file in (("train", "qa_train.txt"), ("val", "qa_dev.txt"),
                        ("test", "qa_test.txt")):
        path = os.path.join(folder, file)
        rows = []
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                question, tab, answers = line.rstrip("\n").partition("\t")
                start, end = question.find("["), question.find("]")
                if not tab or start < 0 or end < start or not answers.strip():
                    raise ValueError(f"{path}:{number}: expected 'question with [anchor]<TAB>"
                                     f"answer|answer...'")
                names = [question[start + 1:end].strip()] + [
                    a.strip() for a in answers.split("|") if a.strip()]
                unknown = [x for x in names if x not in entity]
                if unknown:
                    raise ValueError(f"{path}:{number}: entity {unknown[0]!r} is not in kb.txt")
                tokens = _tokens(question[:start]) + ["<e>"] + _tokens(question[end + 1:])
                ids = [words.setdefault(w, len(words)) if split == "train" else
                       words.get(w, 0) for w in tokens]
                rows.append((entity[names[0]], ids, sorted({entity[a] for a in names[1:]})))
        if not rows:
            raise ValueError(f"{path}: no questions")
        if quick:
            rows = rows[:200]
        length = max(len(ids) for _, ids, _ in rows)
        splits[split] = Questions(
            torch.tensor([a for a, _, _ in rows]),
            torch.tensor([ids + [-1] * (length - len(ids)) for _, ids, _ in rows]),
            torch.zeros(len(rows), dtype=torch.long),
            torch.tensor([0] + [len(a) for _, _, a in rows]).cumsum(0),
            torch.tensor([x for _, _, a in rows for x in a], dtype=torch.long))
    return MetaQATask("path-qa-metaqa", torch.tensor(triples).view(-1, 3), splits, len(entity),
                      len(relation), len(words), quick=quick)
