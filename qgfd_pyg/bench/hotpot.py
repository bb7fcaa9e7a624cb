r"""HotpotQA (distractor setting): rank a question's 10 paragraphs, the 2 supporting first.

Per question, the sentences of its paragraphs are the nodes of a graph: consecutive sentences
of a paragraph are joined, and a sentence that mentions another paragraph's title (its
parenthetical stripped) or shares a multi-word name with a sentence of another paragraph is
joined to it (to the mentioned paragraph's first sentence for titles). The seed is the
question's TF-IDF cosine with each sentence (scikit-learn, fitted on the file's sentences),
:math:`p_0 = \mathrm{softmax}(\cos / \tau)`; QGFD diffuses it over the sentence graph's
random-walk transition, :math:`p_{t+1} = (1-\alpha) p_0 + \alpha p_t P`, and a paragraph's
score is its sentences' mass in :math:`p_T`. Controls: ``attention`` (:math:`\alpha = 0`: the
mass of :math:`p_0`) and ``tfidf`` (the question's TF-IDF cosine with the whole paragraph, the
seed alone). Nothing is trained: each model's hyper-parameters (grids below) are chosen on
validation questions, a random part of the file per seed, and the rest is the test split.
Metrics: Recall@2 of the supporting paragraphs, exact match of the pair (both in the top 2),
and Recall@2 per question type (bridge, comparison).
"""
import itertools
import json
import os
import re
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import Module

from .. import diffuse, graph_transition
from .data import fetch_file, missing_data
from .models import ModelSpec, one_hop_control
from .tasks import QUICK, Experiment, Task, register

DEV_FILE = "hotpot_dev_distractor_v1.json"
DEV_URL = f"http://curtis.ml.cmu.edu/datasets/hotpot/{DEV_FILE}"
SUBSET_FILE = "hotpot_dev_distractor_subset.json"  # what ships in datasets/HotpotQA
_NAME = re.compile(r"\b[A-Z][\w'.-]+(?:\s+[A-Z][\w'.-]+)+")  # two or more capitalised words


class Question(NamedTuple):
    """One question, ready to rank: the seed, the sentence graph and the answer key."""
    seed: Tensor  # [N] cosine of the question with each sentence
    transition: Tensor  # [N, N] dense, row-stochastic (self loops included)
    member: Tensor  # [N] paragraph of each sentence
    paragraph_seed: Tensor  # [M] cosine of the question with each whole paragraph
    supporting: Tuple[int, int]  # the two supporting paragraphs
    kind: str  # "bridge" or "comparison"


def read_hotpot(path: str) -> List[Dict[str, Any]]:
    """HotpotQA's JSON (a list of questions with ``question``, ``type``, ``context``: [title,
    [sentences]] pairs and ``supporting_facts``: [title, sentence] pairs), checked: a
    ValueError names the first malformed question."""
    try:
        with open(path) as f:
            items = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON: {error}") from error
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a non-empty JSON list of questions")
    for i, item in enumerate(items):
        where = f"{path}, question {i}"
        if not isinstance(item, dict) or not {"question", "context",
                                              "supporting_facts"} <= set(item):
            raise ValueError(f"{where}: needs question, context and supporting_facts")
        context = item["context"]
        if not isinstance(context, list) or len(context) < 2 or not all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                and isinstance(p[1], list) and p[1] for p in context):
            raise ValueError(f"{where}: context must be [title, [sentences]] pairs")
        titles = [p[0] for p in context]
        support = {fact[0] for fact in item["supporting_facts"]}
        if len(support) != 2 or not support <= set(titles):
            raise ValueError(f"{where}: supporting_facts must name two of its context titles "
                             f"(got {sorted(support)})")
    return items


def _title_key(title: str) -> str:
    return re.sub(r"\s*\(.*\)$", "", title).strip().lower()


def sentence_graph(paragraphs: Sequence[Sequence[str]], titles: Sequence[str]
                   ) -> Tuple[Tensor, Tensor]:
    """``(edge_index, member)`` of the sentence graph (see the module docstring)."""
    member, first, text = [], [], []
    for j, sentences in enumerate(paragraphs):
        first.append(len(member))
        member += [j] * len(sentences)
        text += list(sentences)
    edges = set()
    for i in range(len(member) - 1):  # reading order inside a paragraph
        if member[i] == member[i + 1]:
            edges.add((i, i + 1))
    keys = [_title_key(t) for t in titles]
    names = [{m.rstrip(".'-") for m in _NAME.findall(s)} for s in text]
    for i, sentence in enumerate(text):
        lower = sentence.lower()
        for j, key in enumerate(keys):
            if j != member[i] and len(key) >= 3 and key in lower:
                edges.add((i, first[j]))
        for k in range(i + 1, len(text)):
            if member[k] != member[i] and names[i] & names[k]:
                edges.add((i, k))
    pairs = torch.tensor(sorted(edges), dtype=torch.long).view(-1, 2).t()
    return torch.cat([pairs, pairs.flip(0)], dim=1), torch.tensor(member)


def prepare(items: List[Dict[str, Any]]) -> List[Question]:
    """Seeds and graphs of every question (TF-IDF fitted on all sentences of ``items``)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(stop_words="english", sublinear_tf=True)
    vectorizer.fit([s for item in items for _, sentences in item["context"] for s in sentences])
    out = []
    for item in items:
        titles = [p[0] for p in item["context"]]
        paragraphs = [p[1] for p in item["context"]]
        sentences = [s for p in paragraphs for s in p]
        query = vectorizer.transform([item["question"]])
        seed = torch.tensor((vectorizer.transform(sentences) @ query.T).toarray().ravel(),
                            dtype=torch.float)
        whole = vectorizer.transform([" ".join(p) for p in paragraphs])
        paragraph_seed = torch.tensor((whole @ query.T).toarray().ravel(), dtype=torch.float)
        edge_index, member = sentence_graph(paragraphs, titles)
        P = graph_transition(edge_index, len(sentences)).to_dense()
        support = sorted({titles.index(fact[0]) for fact in item["supporting_facts"]})
        out.append(Question(seed, P, member, paragraph_seed, tuple(support),
                            item.get("type", "bridge")))
    return out


class ParagraphRanker(Module):
    """Scores a question's paragraphs: the mass of the diffused seed on their sentences
    (``level="sentence"``), or the paragraph-level seed itself (``level="paragraph"``). The
    chosen hyper-parameters are buffers, so the fit loop keeps them like parameters."""

    def __init__(self, alpha: float = 0.0, steps: int = 0, temperature: float = 0.1,
                 level: str = "sentence"):
        super().__init__()
        self.level = level
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.register_buffer("steps", torch.tensor(int(steps)))
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, question: Question) -> Tensor:
        if self.level == "paragraph":
            return question.paragraph_seed
        p0 = torch.softmax(question.seed / self.temperature, dim=0)
        # p_T = p0 M is M^T p0^T: the values p0 diffused over P^T
        p = diffuse(p0.view(-1, 1), question.transition.t(), float(self.alpha),
                    int(self.steps)).view(-1)
        num = int(question.member.max()) + 1
        return torch.zeros(num).index_add_(0, question.member, p)


def ranking_metrics(scores: Sequence[Tensor], questions: Sequence[Question]
                    ) -> Dict[str, float]:
    """Recall@2 of the supporting pair (overall and per question type) and the pair's exact
    match; ties in the scores go to the earlier paragraph."""
    hits, per_kind = [], {"bridge": [], "comparison": []}
    for score, question in zip(scores, questions, strict=True):
        top = set(torch.sort(score, descending=True, stable=True).indices[:2].tolist())
        found = len(top & set(question.supporting))
        hits.append(found)
        per_kind.setdefault(question.kind, []).append(found)
    mean = lambda xs: sum(xs) / (2 * len(xs)) if xs else float("nan")  # noqa: E731
    return {"metric": mean(hits), "em": sum(h == 2 for h in hits) / len(hits),
            **{f"recall@2_{k}": mean(v) for k, v in per_kind.items()}}


# lists, not tuples: the options are stored as JSON and compared on --resume
_GRID = {"alpha": [0.3, 0.5, 0.7, 0.9], "steps": [1, 2, 4, 8],
         "temperature": [0.02, 0.05, 0.1, 0.2]}
_QGFD = ModelSpec(ParagraphRanker, 0.0, 0.0, dict(_GRID),
                  "sentence seed diffused over the sentence graph; alpha, steps and "
                  "temperature chosen on the validation questions")
HOTPOT_MODELS: Dict[str, ModelSpec] = {
    "qgfd": _QGFD,
    "attention": one_hop_control(_QGFD, "alpha = 0: the sentence seed's mass per paragraph "
                                 "(one hop)", alpha=[0.0], steps=[0]),
    "tfidf": ModelSpec(ParagraphRanker, 0.0, 0.0, dict(level="paragraph"),
                       "the question's TF-IDF cosine with each paragraph: the seed alone"),
}


class HotpotTask(Task):
    """Supporting-paragraph ranking on HotpotQA's distractor questions (see the module).

    Args:
        items: the questions as HotpotQA's JSON holds them.
        val_questions: validation questions per seed (drawn at random; the rest is test).
    """
    kind = "paragraphs"
    models = HOTPOT_MODELS
    metric = "supporting-paragraph Recall@2"
    columns = (("em", "EM (pair)"), ("recall@2_bridge", "Recall@2 bridge"),
               ("recall@2_comparison", "Recall@2 comparison"))
    budget = (1, 1)  # nothing is trained: one pass chooses the hyper-parameters
    options = (QUICK,)  # 20 validation questions per seed

    def __init__(self, name: str, items: List[Dict[str, Any]], val_questions: int = 1000):
        self.name = name
        self.questions = prepare(items)
        self.val_questions = min(val_questions, len(self.questions) // 2)

    def stored_config(self) -> Dict[str, Any]:
        return {"questions": len(self.questions), "val_questions": self.val_questions}

    @classmethod
    def check_options(cls, model: str, options: Dict[str, Any]) -> None:
        known = set(cls.models[model].options)
        if set(options) - known:
            raise ValueError(f"options {sorted(set(options) - known)} do not apply to the "
                             f"{cls.kind} model {model!r} (it takes {', '.join(sorted(known))})")

    def split(self, seed: int) -> Tuple[List[Question], List[Question]]:
        order = torch.randperm(len(self.questions), generator=torch.Generator().manual_seed(seed))
        chosen = [self.questions[i] for i in order.tolist()]
        return chosen[:self.val_questions], chosen[self.val_questions:]

    def setup(self, model: str, seed: int, options: Dict[str, Any],
              device: torch.device) -> "HotpotExperiment":
        return HotpotExperiment(self, seed, options)

    def protocol(self, config: Dict[str, Any], rule: str) -> str:
        return (f"no training: hyper-parameters chosen by Recall@2 (then EM) on "
                f"{self.val_questions} random validation questions per seed, test on the other "
                f"{len(self.questions) - self.val_questions}; grids: alpha {_GRID['alpha']}, "
                f"steps {_GRID['steps']}, temperature {_GRID['temperature']}")


class HotpotExperiment(Experiment):
    def __init__(self, task: HotpotTask, seed: int, options: Dict[str, Any]):
        self.val, self.test = task.split(seed)
        self.grid = {k: v for k, v in options.items() if isinstance(v, (tuple, list))}
        fixed = {k: v for k, v in options.items() if k not in self.grid}
        self.model = ParagraphRanker(**fixed,
                                     **{k: v[0] for k, v in self.grid.items()})

    def _run(self, questions: List[Question]) -> Dict[str, float]:
        with torch.no_grad():
            return ranking_metrics([self.model(q) for q in questions], questions)

    def train_epoch(self) -> float:
        """Chooses the grid point with the best validation Recall@2 (ties: EM, then the
        earlier point); returns 0 (no loss is trained)."""
        best, best_key = None, None
        names = list(self.grid)
        for values in itertools.product(*(self.grid[n] for n in names)):
            for name, value in zip(names, values, strict=True):
                getattr(self.model, name).fill_(value)
            scores = self._run(self.val)
            key = (scores["metric"], scores["em"])
            if best_key is None or key > best_key:
                best, best_key = values, key
        for name, value in zip(names, best or (), strict=True):
            getattr(self.model, name).fill_(value)
        return 0.0

    def evaluate(self, split: str) -> Dict[str, float]:
        return self._run(self.val if split == "val" else self.test)


@register("hotpotqa", HotpotTask, f"HotpotQA distractor dev set: rank the 10 paragraphs, the "
                                  f"2 supporting first (Recall@2, EM); reads --root/HotpotQA/"
                                  f"{DEV_FILE} (the full set), else the 967-question "
                                  f"{SUBSET_FILE} that ships in datasets/ (--download fetches "
                                  f"the full set)")
def hotpotqa(root: str, dataset: Optional[str], extra: Dict[str, Any]) -> HotpotTask:
    folder = os.path.join(root, "HotpotQA")
    fetch_file(DEV_URL, os.path.join(folder, DEV_FILE))  # with --download only
    paths = [os.path.join(folder, name) for name in (DEV_FILE, SUBSET_FILE)]
    found = [p for p in paths if os.path.exists(p)]
    if not found:
        raise missing_data(f"HotpotQA not found: put {DEV_FILE} (the distractor dev set) or "
                           f"{SUBSET_FILE} in {folder}")
    items = read_hotpot(found[0])
    return HotpotTask("hotpotqa", items, 20 if extra.get("quick") else 1000)
