"""PathQuestion's memorisation reference: nothing learnt, no graph read. A test question is
answered by the answers of the training questions about the same topic entity (the anchor),
the most frequent first, ties broken by how often an entity answers any training question;
on the runner's splits (``PathQuestionTask.split(seed)``) and with its Hits@1 / MRR
(``qa.path_metrics``). Also: the share of test questions whose topic entity and gold relation
path a training question has (a paraphrase of it). Written to
``benchmarks/results/pq_lookup.md``.

    ./run python benchmarks/pq_lookup.py --seeds 5
"""
import argparse
import os
import statistics
import time
from collections import Counter

import torch

from qgfd_pyg.bench.io import atomic_write
from qgfd_pyg.bench.pathquestion import parse_line
from qgfd_pyg.bench.qa import answer_mask, path_metrics
from qgfd_pyg.bench.runner import default_dir
from qgfd_pyg.bench.tasks import load_task

FILES = {"pq-2h": "PQ-2H.txt", "pq-3h": "PQ-3H.txt", "pql-2h": "PQL-2H.txt",
         "pql-3h": "PQL-3H.txt"}


def lookup_scores(task, train, test) -> torch.Tensor:
    N = task.num_entities
    by_anchor = {}
    overall = Counter()
    for i in range(train.anchor.numel()):
        answers = list(train.answers(i))
        by_anchor.setdefault(int(train.anchor[i]), Counter()).update(answers)
        overall.update(answers)
    prior = torch.zeros(N, dtype=torch.float64)
    for e, c in overall.items():
        prior[e] = c
    prior = prior / (prior.max() + 1)  # below 1: breaks ties among equal anchor counts only
    scores = prior.repeat(test.anchor.numel(), 1)
    for row in range(test.anchor.numel()):
        for e, c in by_anchor.get(int(test.anchor[row]), {}).items():
            scores[row, e] += c
    return scores


def paraphrased(name: str, root: str, order: list, n: int) -> float:
    """Share of the test questions whose anchor and relation path a training question has."""
    path = os.path.join(root, "PathQuestion", FILES[name])
    with open(path) as f:
        rows = [parse_line(line, path) for line in f if line.strip()]
    keys = [(p[0],) + tuple(p[1::2]) for _, _, p, _ in rows]
    cut = [int(0.8 * n), int(0.9 * n)]
    seen = {keys[i] for i in order[:cut[0]]}
    test = order[cut[1]:]
    return sum(keys[i] in seen for i in test) / len(test)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--root", default=default_dir("datasets"))
    parser.add_argument("--out", default=default_dir("benchmarks/results"))
    args = parser.parse_args()
    lines = ["# PathQuestion: the memorisation reference", "",
             f"`./run python benchmarks/pq_lookup.py --seeds {args.seeds}` "
             f"({time.strftime('%Y-%m-%d')}): the runner's splits, seeds 0-{args.seeds - 1}; "
             "'anchor lookup' answers a test question with the answers of the training "
             "questions about the same topic entity (most frequent first; ties by how often "
             "an entity answers any training question), nothing learnt, no graph read; "
             "'paraphrased' is the share of test questions whose topic entity and gold "
             "relation path a training question has.", "",
             "| task | anchor lookup Hits@1 (%) | MRR (%) | paraphrased test questions (%) |",
             "| --- | --- | --- | --- |"]
    for name in FILES:
        task = load_task(name, args.root)
        hits, mrr, para = [], [], []
        for seed in range(args.seeds):
            splits = task.split(seed)
            train, test = splits["train"], splits["test"]
            scores = lookup_scores(task, train, test)
            idx = torch.arange(test.anchor.numel())
            h, r = path_metrics(scores, answer_mask(test, idx, task.num_entities))
            hits.append(100 * float(h.mean()))
            mrr.append(100 * float(r.mean()))
            n = task.questions.anchor.numel()
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
            para.append(100 * paraphrased(name, args.root, order, n))

        def cell(x):
            return f"{statistics.mean(x):.1f} ± {statistics.stdev(x) if len(x) > 1 else 0:.1f}"
        lines.append(f"| {name} | {cell(hits)} | {cell(mrr)} | {cell(para)} |")
        print(lines[-1], flush=True)
    path = os.path.join(args.out, "pq_lookup.md")
    atomic_write(path, "\n".join(lines) + "\n")
    print("written:", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
