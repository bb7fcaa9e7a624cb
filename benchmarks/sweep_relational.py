"""The search behind the relational QGFD model's settings (the kg and qa kinds).

    ./run python benchmarks/sweep_relational.py --seeds 2 --resume

For each task of a kind (path-qa on kinship / umls / nations; Countries S1-S3) and each
configuration (the runner's qgfd options with the grid's settings in place), the qgfd model is
trained with the runner's protocol (``fit``: the kind's
splits, epochs, early stopping). A kind's settings are the configuration with the best mean
*validation* metric over its tasks and seeds; test metrics are recorded, never used to choose.
Writes benchmarks/results/relational_search.{json,md} after every run; --resume skips the
finished ones.
"""
import argparse
import itertools
import json
import os
import statistics
import time

import torch

from qgfd_pyg.bench.io import atomic_write
from qgfd_pyg.bench.tasks import load_task
from qgfd_pyg.bench.train import fit

TASKS = {"qa": [("path-qa", {"kg": "kinship"}), ("path-qa", {"kg": "umls"}),
                ("path-qa", {"kg": "nations"})],
         "kg": [("countries-s1", {}), ("countries-s2", {}), ("countries-s3", {})]}
# how a step is normalised and what happens to mass with nowhere to go, with and without
# the embedding term
GRID = [dict(normalization=n, dangling=d, embedding_scores=e)
        for (n, d), e in itertools.product([("node", "keep"), ("node", "drop"),
                                            ("relation", "keep"), ("relation", "drop"),
                                            ("none", "drop")], [False, True])]


def key(task, extra, config, seed):
    return json.dumps([task, extra, config, seed], sort_keys=True)


def report(records, path):
    lines = ["# Relational QGFD: the settings search (validation picks, test for the record)",
             "", "`./run python benchmarks/sweep_relational.py --seeds 2` (the runner's "
             "protocol per task; mean over seeds)", ""]
    for kind, tasks in TASKS.items():
        names = [t + (f" {e['kg']}" if e else "") for t, e in tasks]
        lines += [f"## {kind}", "", "| normalization | dangling | embedding | mean val | "
                  + " | ".join(f"{n} val / test" for n in names) + " |",
                  "| --- " * (4 + len(names)) + "|"]
        rows = []
        for config in GRID:
            cells, vals = [], []
            for task, extra in tasks:
                runs = [r for r in records.values() if r["task"] == task
                        and r["extra"] == extra and r["config"] == config]
                if not runs:
                    cells.append("-")
                    continue
                v = statistics.mean(r["val"] for r in runs)
                t = statistics.mean(r["test"] for r in runs)
                vals.append(v)
                cells.append(f"{100 * v:.1f} / {100 * t:.1f}")
            mean = statistics.mean(vals) if len(vals) == len(tasks) else float("nan")
            rows.append((mean, config, cells))
        best = max((r for r in rows if r[0] == r[0]), key=lambda r: r[0], default=None)
        for mean, config, cells in rows:
            mark = " **(chosen)**" if best is not None and config == best[1] else ""
            lines.append(f"| {config['normalization']} | {config['dangling']} | "
                         f"{config['embedding_scores']} | {100 * mean:.1f}{mark} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    atomic_write(path, "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--kinds", default="qa,kg")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    path = os.path.join(args.out, "relational_search.json")
    records = {}
    if args.resume and os.path.exists(path):
        with open(path) as f:
            records = json.load(f)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for kind in args.kinds.split(","):
        for task_name, extra in TASKS[kind]:
            task = load_task(task_name, "datasets", None, extra)
            epochs, patience = task.default_budget(extra)
            for config, seed in itertools.product(GRID, range(args.seeds)):
                k = key(task_name, extra, config, seed)
                if k in records:
                    continue
                start = time.perf_counter()
                options = {**task.models["qgfd"].options, **config}  # the rest as the runner has it
                r = fit(task, "qgfd", seed, options, epochs, patience, torch.device("cpu"))
                records[k] = {"task": task_name, "extra": extra, "config": config, "seed": seed,
                              "val": r["val"], "test": r["test"], "epochs": r["epochs"],
                              "seconds": time.perf_counter() - start}
                print(task_name, extra, config, seed, f"val {r['val']:.3f} test "
                      f"{r['test']:.3f}", flush=True)
                atomic_write(path, json.dumps(records, indent=1))
                report(records, os.path.join(args.out, "relational_search.md"))


if __name__ == "__main__":
    main()
