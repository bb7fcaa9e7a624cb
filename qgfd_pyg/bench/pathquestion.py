r"""PathQuestion (Zhou, Huang & Zhu, COLING 2018): multi-hop questions in words over a small
Freebase KB, a ``qa``-kind task per file: ``pq-2h``, ``pq-3h`` (the PQ KBs) and ``pql-2h``,
``pql-3h`` (the larger PQL KBs).

A question is its words and its topic entity, the anchor (the gold path's first element, as
the published protocols give it); the words have the anchor's name replaced by ``<e>``. The
rest of the gold path (its relations and middle entities) is read only for the hop count and
never reaches a model. The answers are the line's answer set (any counts for Hits@1); the
anchor itself is an answer of some questions (a path that returns, e.g. 30% of PQL-2H), so no
model's anchor is suppressed. Every model sees the whole KB, as IRN's and TransferNet's
protocols do: the task is to read a question into a path, not to complete the KB. Questions
are split 8:1:1 at random per seed (paraphrases of one fact may land in different splits, as
in the published protocol). The vocabulary is every question's words; a word no training
question has keeps its initial embedding.

Models: ``qgfd`` (the package's :class:`~qgfd_pyg.RelationalQGFD` with its text controller:
a GRU over the words gives each step's relation weights and the hop weights), ``attention``
(the same with one step), ``gat`` / ``appnp`` (the encoders over the KB with the
composed-words scorer), and two references with nothing learnt: ``ppr`` (personalised
PageRank from the anchor over the KB) and ``untrained`` (the ``qgfd`` model at its
initialisation).
"""
import os
from dataclasses import replace
from typing import Any, Dict, List, Optional, Tuple

import torch

from .data import missing_data
from .kg import KG_MODELS, untrained_row
from .models import ModelSpec
from .qa import QA_MODELS, PathQATask, Questions, _tokens
from .tasks import QUICK, register

# task -> (questions file, KB file) under --root's PathQuestion/
FILES = {"pq-2h": ("PQ-2H.txt", "2H-kb.txt"), "pq-3h": ("PQ-3H.txt", "3H-kb.txt"),
         "pql-2h": ("PQL-2H.txt", "PQL2-KB.txt"), "pql-3h": ("PQL-3H.txt", "PQL3-KB.txt")}
_QGFD = QA_MODELS["qgfd"]
PQ_MODELS: Dict[str, ModelSpec] = {
    **{name: spec for name, spec in QA_MODELS.items() if name != "rule"},
    "ppr": KG_MODELS["ppr"],
    "untrained": untrained_row(replace(_QGFD, options={**_QGFD.options, "controller": "text"})),
}


class PathQuestionTask(PathQATask):
    """A PathQuestion file (see the module docstring): the qa kind's training and metrics,
    questions read by the text controller, the anchor not suppressed."""
    controller = "text"
    models = PQ_MODELS
    anchor_answers = True
    splits_note = "questions split 8:1:1 at random per seed; the whole KB is the graph"
    options = (QUICK,)

    def __init__(self, name: str, kb: torch.Tensor, questions: Questions, num_entities: int,
                 num_relations: int, words: List[str], quick: bool = False):
        super().__init__(name, kb, questions, num_entities, num_relations, quick)
        self.words, self.vocab = words, len(words)  # a question's word ids index words


def _read_kb(path: str) -> Tuple[List[Tuple[str, str, str]], int]:
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = [x.strip() for x in line.rstrip("\n").split("\t") if x.strip()]
            if len(fields) != 3:
                raise ValueError(f"{path}:{number}: expected subject<TAB>relation<TAB>object")
            rows.append(tuple(fields))
    return rows, len(rows)


def parse_line(line: str, where: str) -> Tuple[str, List[str], List[str], int]:
    """(question, answers, the gold path's entities and relations, hops) of one line
    ``question TAB answer(answer1/answer2/...) TAB subject#r1#e1#...#answer`` (PQ's paths end
    ``#<end>#answer``, which is dropped)."""
    fields = line.rstrip("\n").split("\t")
    if len(fields) != 3:
        raise ValueError(f"{where}: expected question<TAB>answer(answers)<TAB>path, got "
                         f"{len(fields)} fields")
    question, answer, gold = (x.strip() for x in fields)
    path = gold.split("#")
    if "<end>" in path:
        path = path[:path.index("<end>")]
    if len(path) < 3 or len(path) % 2 == 0:
        raise ValueError(f"{where}: the path {gold!r} is not subject#relation#entity...")
    main = path[-1]
    if not (answer.startswith(main + "(") and answer.endswith(")")):
        raise ValueError(f"{where}: the answer {answer!r} is not {main}(answer1/answer2/...)")
    answers = [a for a in answer[len(main) + 1:-1].split("/") if a]
    return question, answers, path, (len(path) - 1) // 2


def read_pathquestion(questions_file: str, kb_file: str, name: str,
                      quick: bool = False) -> PathQuestionTask:
    """Reads a PathQuestion file and its KB (see :func:`parse_line` for the line format); a
    ValueError names the file and line of a malformed line or of an entity the KB lacks."""
    missing = [p for p in (questions_file, kb_file) if not os.path.isfile(p)]
    if missing:
        raise missing_data(f"PathQuestion not found: {' and '.join(missing)} missing; put the "
                           f"files of github.com/zmtkeke/IRN's PathQuestion/ there",
                           downloadable=False)
    kb, _ = _read_kb(kb_file)
    entity: Dict[str, int] = {}
    relation: Dict[str, int] = {}
    triples = [(entity.setdefault(h, len(entity)), relation.setdefault(r, len(relation)),
                entity.setdefault(t, len(entity))) for h, r, t in kb]
    words: Dict[str, int] = {"<unk>": 0, "<e>": 1}
    rows = []
    with open(questions_file) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{questions_file}:{number}"
            question, answers, path, hops = parse_line(line, where)
            unknown = [x for x in [path[0]] + answers if x not in entity]
            if unknown:
                raise ValueError(f"{where}: entity {unknown[0]!r} is not in {kb_file}")
            tokens = []
            for word in question.split():  # the anchor's name as <e>, other words lowered
                tokens.extend(["<e>"] if word == path[0] else _tokens(word))
            rows.append((entity[path[0]], [words.setdefault(w, len(words)) for w in tokens],
                         sorted({entity[a] for a in answers}), hops))
    if not rows:
        raise ValueError(f"{questions_file}: no questions")
    if quick:
        rows = rows[::max(1, len(rows) // 300)]
    length = max(len(ids) for _, ids, _, _ in rows)
    questions = Questions(
        torch.tensor([a for a, _, _, _ in rows]),
        torch.tensor([ids + [-1] * (length - len(ids)) for _, ids, _, _ in rows]),
        torch.tensor([k for _, _, _, k in rows]),
        torch.tensor([0] + [len(a) for _, _, a, _ in rows]).cumsum(0),
        torch.tensor([x for _, _, a, _ in rows for x in a], dtype=torch.long))
    return PathQuestionTask(name, torch.tensor(triples).view(-1, 3), questions, len(entity),
                            len(relation), list(words), quick=quick)


def _loader(task: str):
    def load(root: str, dataset: Optional[str], extra: Dict[str, Any]) -> PathQuestionTask:
        questions, kb = FILES[task]
        folder = os.path.join(root, "PathQuestion")
        return read_pathquestion(os.path.join(folder, questions), os.path.join(folder, kb),
                                 task, quick=bool(extra.get("quick")))
    return load


for _task, (_questions, _kb) in FILES.items():
    register(_task, PathQuestionTask,
             f"PathQuestion {_questions[:-4]}: multi-hop questions in words over its KB "
             f"({_kb}); anchor = the topic entity; Hits@1 over the answer set, 8:1:1 per seed")(
        _loader(_task))
