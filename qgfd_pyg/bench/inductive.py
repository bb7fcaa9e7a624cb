r"""Inductive knowledge-graph completion on GraIL's splits: the test queries are asked over a
graph of entities that training never saw, so no entity embedding can help.

Protocol (GraIL's splits, NBFNet's and RED-GNN's evaluation): ``NAME_vK/train.txt`` is the
training graph and its queries (each batch's own edges hidden from its flow, as in the
``kg`` kind); ``NAME_vK/valid.txt`` the validation queries over the training graph;
``NAME_vK_ind/test.txt`` the test queries over the graph ``NAME_vK_ind/train.txt``, whose
entities are new (the relations are the training graph's). Both directions of every triple
are asked (heads as inverse relations). The two graphs get disjoint entity ids (training
entities first); a query is ranked against every entity of its own graph, filtered by the
true answers that graph's files give (validation: training + validation triples; test: the
test graph + test triples), ties counted half. Besides MRR and Hits@1/3/10 over all entities,
``hits@10_50`` is GraIL's Hits@10 against 50 negatives: the expectation over drawing the 50
uniformly, with replacement, from the query's filtered candidates, in closed form
(:func:`sampled_hits`; NBFNet's code computes the same with 49).

Models: ``qgfd`` and its one-step control (the flow alone: no entity embedding term, so
nothing learnt is tied to an entity), ``nbfnet`` (:class:`~qgfd_pyg.bench.nbfnet.NBFNet`),
and the references ``ppr`` (PageRank personalised on the anchor, over the query's graph),
``rule`` (path rules mined on the training graph, applied to the test graph) and
``untrained`` (the qgfd model at its initialisation).
"""
import math
import os
from dataclasses import replace
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .data import missing_data
from .kg import KG_MODELS, Filter, KGTask, filtered_ranking, untrained_row
from .models import ModelSpec
from .nbfnet import NBFNET_MODELS, nbfnet_spec
from .relational import Triples
from .tasks import register

SPLITS = {"fb237": "fb237", "wn18rr": "WN18RR", "nell": "nell"}
VERSIONS = (1, 2, 3, 4)
_SAME = "the flow alone (no entity embeddings: the test entities are new), 128 dimensions, " \
        "batches of 64 queries"


def sampled_hits(pos: Tensor, neg: Tensor, k: int = 10, negatives: int = 50) -> Tensor:
    r"""Per query, the expected Hits@``k`` of ``pos`` ``[B]`` ranked against ``negatives``
    candidates drawn uniformly with replacement from the row's candidates ``neg`` ``[B, C]``
    (``-inf``: not a candidate): with :math:`f` the share of candidates scored above the
    positive (ties half), :math:`P[\mathrm{Binomial}(n, f) < k]`."""
    valid = torch.isfinite(neg)
    above = ((neg > pos.view(-1, 1)) & valid).sum(1).double()
    ties = ((neg == pos.view(-1, 1)) & valid).sum(1).double()
    f = ((above + 0.5 * ties) / valid.sum(1).clamp_min(1).double()).clamp(0, 1)
    out = torch.zeros_like(f)
    for i in range(k):
        out += math.comb(negatives, i) * f ** i * (1 - f) ** (negatives - i)
    return out


_FLOW = dict(hidden=128, steps=3, alpha=0.9, heads=2, controller="relation", dropout=0.2,
             normalization="relation", dangling="drop", embedding_scores=False)
INDUCTIVE_MODELS: Dict[str, ModelSpec] = {
    "qgfd": replace(KG_MODELS["qgfd"], options=_FLOW,
                    source="query-conditioned flow (a 3-step relation rule per query relation, "
                           "2 heads, learnt hop weights); " + _SAME),
    "attention": replace(KG_MODELS["attention"], options={**_FLOW, "steps": 1},
                         source="the qgfd model with one step: the one-hop control; " + _SAME),
    **NBFNET_MODELS,
    "ppr": KG_MODELS["ppr"],
    "rule": replace(KG_MODELS["rule"], source=KG_MODELS["rule"].source.replace(
        "training graph,", "training graph and applied to the test graph,")),
}
INDUCTIVE_MODELS["untrained"] = untrained_row(INDUCTIVE_MODELS["qgfd"])


class InductiveKGTask(KGTask):
    """A GraIL split: training graph and validation queries over training entities, test
    queries over a disjoint test graph (``test_graph`` ``[m, 3]``), entity ids ``0..N1-1``
    then ``N1..N1+N2-1``.

    Args:
        name: the task's name.
        triples: training graph / validation / test queries ``[n, 3]``.
        test_graph: the test graph's triples ``[m, 3]``.
        num_train_entities: ``N1``; every id of ``triples.train`` and ``triples.valid`` is
            below it, every id of ``test_graph`` and ``triples.test`` at or above it.
        num_entities, num_relations: ``N1 + N2`` and the relations (without inverses).
        quick: a short budget for tests and smoke runs.
        epoch_batches: an epoch is this many random batches (default: all queries).
    """
    models = INDUCTIVE_MODELS
    columns = (("hits@1", "Hits@1"), ("hits@10", "Hits@10"),
               ("hits@10_50", "Hits@10 (50 neg.)"))
    budget = (20, 5)
    options = KGTask.options[:2]  # --quick, --epoch-batches

    def __init__(self, name: str, triples: Triples, test_graph: Tensor,
                 num_train_entities: int, num_entities: int, num_relations: int,
                 quick: bool = False, epoch_batches: Optional[int] = None):
        super().__init__(name, triples, num_entities, num_relations, quick=quick,
                         batch_size=64, val_queries=0, epoch_batches=epoch_batches,
                         batches="mixed")
        self.test_graph, self.num_train_entities = test_graph, num_train_entities
        for part, ids, train_side in (("training graph", triples.train, True),
                                      ("validation", triples.valid, True),
                                      ("test graph", test_graph, False),
                                      ("test", triples.test, False)):
            ends = ids[:, [0, 2]]
            inside = (ends < num_train_entities) if train_side else (ends >= num_train_entities)
            if not bool(inside.all()) or bool((ends >= num_entities).any()):
                raise ValueError(f"{name}: the {part} triples must use the "
                                 f"{'training' if train_side else 'test'} graph's entity ids")
        self.filter = Filter(Triples(torch.cat([triples.train, triples.valid]),
                                     test_graph, triples.test), num_entities, num_relations)

    def eval_graph(self, split: str) -> Optional[Tensor]:
        return self.test_graph if split == "test" else None

    def negatives(self) -> Tensor:
        return torch.arange(self.num_entities) < self.num_train_entities

    def batch_metrics(self, entity: Tensor, relation: Tensor, answer: Tensor,
                      scores: Tensor) -> Any:
        true = self.filter.mask(entity, relation, self.num_entities)
        ids = torch.arange(self.num_entities, device=entity.device)
        other_graph = (ids.view(1, -1) >= self.num_train_entities) != (
            entity.view(-1, 1) >= self.num_train_entities)
        true = true | other_graph  # ranked against the entities of the query's own graph
        metrics = filtered_ranking(scores, answer, true)
        rows = torch.arange(answer.numel(), device=scores.device)
        neg = scores.float().masked_fill(true, -math.inf)
        neg[rows, answer] = -math.inf
        metrics["hits@10_50"] = float(sampled_hits(scores[rows, answer].float(), neg).mean())
        return answer.numel(), metrics

    def stored_config(self) -> Dict[str, Any]:
        return {**super().stored_config(), "inductive": True}

    def selection(self) -> str:
        return "filtered MRR on all validation queries (training graph)"

    def protocol_notes(self, config: Dict[str, Any]) -> str:
        return ("test queries (both directions) over the test graph of new entities, ranked "
                "against its entities, filtered by the test graph and test triples; Hits@10 "
                "(50 neg.): the expectation over 50 negatives drawn uniformly with replacement "
                "from the filtered candidates" + ("; --quick budget" if self.quick else ""))




class InductiveWNTask(InductiveKGTask):
    """A WN18RR split: NBFNet as its WN18RR configuration sets it (relation vectors free per
    layer, self-adversarial temperature 1)."""
    models = {**INDUCTIVE_MODELS, "nbfnet": nbfnet_spec(
        False, 1.0, "relation vectors per layer, temperature 1 (its WN18RR setting); the "
        "batch's own edges hidden, as for every model")}


def read_split(folder: str, files: Tuple[str, ...]) -> List[List[Tuple[str, str, str]]]:
    """The tab-separated (head, relation, tail) lines of ``files`` in ``folder``; a
    ValueError naming the file and line for a malformed one."""
    out = []
    for name in files:
        path = os.path.join(folder, name)
        rows = []
        with open(path) as f:
            for number, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = [x.strip() for x in line.split("\t")]
                if len(fields) != 3 or not all(fields):
                    raise ValueError(f"{path}:{number}: expected 3 tab-separated fields "
                                     f"(head, relation, tail), got {len(fields)}")
                rows.append(tuple(fields))
        out.append(rows)
    return out


def load_inductive(root: str, split: str, version: int, quick: bool = False,
                   epoch_batches: Optional[int] = None) -> InductiveKGTask:
    """GraIL's ``split`` (``fb237``, ``wn18rr``, ``nell``) version ``version`` from
    ``root/inductive-kg``: the four files the protocol reads."""
    base = os.path.join(root, "inductive-kg", f"{SPLITS[split]}_v{version}")
    need = [os.path.join(base, "train.txt"), os.path.join(base, "valid.txt"),
            os.path.join(base + "_ind", "train.txt"), os.path.join(base + "_ind", "test.txt")]
    missing = [p for p in need if not os.path.isfile(p)]
    if missing:
        raise missing_data(f"GraIL's inductive split not found: {', '.join(missing)} missing; "
                           f"put github.com/kkteru/grail's data/{SPLITS[split]}_v{version} "
                           f"and _ind folders under {os.path.join(root, 'inductive-kg')}",
                           downloadable=False)
    train, valid = read_split(base, ("train.txt", "valid.txt"))
    graph, test = read_split(base + "_ind", ("train.txt", "test.txt"))
    relations = sorted({r for _, r, _ in train})
    relation_id = {r: i for i, r in enumerate(relations)}
    ids: List[Dict[str, int]] = [{}, {}]  # training graph's entities, test graph's

    def index(rows: List[Tuple[str, str, str]], side: int, what: str, grow: bool) -> Tensor:
        names = ids[side]
        out = []
        for number, (h, r, t) in enumerate(rows, 1):
            if r not in relation_id:
                raise ValueError(f"{split}-v{version} {what} triple {number}: the relation "
                                 f"{r!r} is not in the training graph")
            for x in (h, t):
                if x not in names:
                    if not grow:
                        raise ValueError(f"{split}-v{version} {what} triple {number}: the "
                                         f"entity {x!r} is not in its graph")
                    names[x] = len(names)
            out.append((names[h], relation_id[r], names[t]))
        return torch.tensor(out, dtype=torch.long).view(-1, 3)

    train_t = index(train, 0, "training", True)
    valid_t = index(valid, 0, "validation", False)
    graph_t = index(graph, 1, "test-graph", True)
    test_t = index(test, 1, "test", False)
    n1 = len(ids[0])
    offset = torch.tensor([n1, 0, n1])
    kind = InductiveWNTask if split == "wn18rr" else InductiveKGTask
    return kind(f"ind-{split}-v{version}", Triples(train_t, valid_t, test_t + offset),
                           graph_t + offset, n1, n1 + len(ids[1]), len(relations), quick=quick,
                epoch_batches=epoch_batches)


def _register(split: str, version: int) -> None:
    kind = InductiveWNTask if split == "wn18rr" else InductiveKGTask

    @register(f"ind-{split}-v{version}", kind,
              f"inductive KG completion, GraIL's {SPLITS[split]}_v{version}: test queries over "
              f"a graph of new entities; filtered MRR, Hits@1/10 and Hits@10 against 50 "
              f"negatives; ships in datasets/inductive-kg")
    def load(root: str, dataset: Optional[str], extra: Dict[str, Any]) -> InductiveKGTask:
        return load_inductive(root, split, version, quick=bool(extra.get("quick")),
                              epoch_batches=extra.get("epoch_batches"))


for _split in SPLITS:
    for _version in VERSIONS:
        _register(_split, _version)

__all__ = ["InductiveKGTask", "INDUCTIVE_MODELS", "load_inductive", "sampled_hits"]
