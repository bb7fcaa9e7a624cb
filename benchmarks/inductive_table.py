"""The inductive KG tables of docs/results.md from the runner's result files: filtered MRR
and Hits@10 against 50 negatives per split (mean ± std over the seeds run, in brackets), the
mean over the splits every row has, and the published figures beside.

    ./run python benchmarks/inductive_table.py      # writes benchmarks/results/inductive.md
                                                    # and the tables of docs/results.md
"""
import argparse
import json
import os
import sys

from qgfd_pyg.bench.io import atomic_write, default_dir

BEGIN = "<!-- inductive tables: benchmarks/inductive_table.py -->"
END = "<!-- /inductive tables -->"
SPLITS = [f"ind-{name}-v{k}" for name in ("fb237", "wn18rr", "nell") for k in range(1, 5)]
ROWS = [("qgfd", "QGFD"), ("attention", "attention (one step)"),
        ("nbfnet", "NBFNet (this runner, CPU budget)"), ("ppr", "*PPR (nothing learnt)*"),
        ("rule", "*mined rules (nothing learnt)*"), ("untrained", "*untrained QGFD*")]
# published figures (full training on GPUs): RED-GNN's README (filtered MRR), NBFNet's README
# (Hits@10 against 50 negatives; it reports no NELL-995 inductive figures)
RED_GNN_MRR = dict(zip(SPLITS, [.369, .469, .445, .442, .701, .690, .427, .651,
                                .637, .419, .436, .363], strict=True))
NBFNET_HITS50 = dict(zip(SPLITS[:8], [.834, .949, .951, .960, .948, .905, .893, .890],
                         strict=True))


def load(folder: str):
    found = {}
    for split in SPLITS:
        path = os.path.join(folder, f"{split}.json")
        if os.path.exists(path):
            with open(path) as f:
                found[split] = {row["model"]: row for row in json.load(f)["summary"]}
    return found


def cell(row, key: str) -> str:
    if row is None:
        return "-"
    value = row[key]
    std = f" ± {value['std']:.3f}" if row["seeds"] > 1 else ""
    return f"{value['mean']:.3f}{std} ({row['seeds']})"


def table(found, key: str, title: str, published) -> list:
    splits = [s for s in SPLITS if s in found]
    full = [s for s in splits if all(m in found[s] for m, _ in ROWS)]
    lines = [f"**{title}** (in brackets: seeds; mean over the {len(full)} splits every row "
             f"has)", "",
             "| model | " + " | ".join(s[4:] for s in splits) + " | mean |",
             "| --- | " + " | ".join("---" for _ in splits) + " | --- |"]
    for model, label in ROWS:
        cells = [cell(found[s].get(model), key) for s in splits]
        mean = (sum(found[s][model][key]["mean"] for s in full) / len(full)) if full else None
        lines.append(f"| {label} | " + " | ".join(cells)
                     + f" | {'-' if mean is None else f'{mean:.3f}'} |")
    for label, figures in published:
        cells = [f"{figures[s]:.3f}" if s in figures else "-" for s in splits]
        mean = sum(figures[s] for s in full) / len(full) if full and all(
            s in figures for s in full) else None
        lines.append(f"| *published: {label}* | " + " | ".join(cells)
                     + f" | {'-' if mean is None else f'{mean:.3f}'} |")
    return lines + [""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=default_dir("benchmarks/results"))
    parser.add_argument("--page", default=default_dir("docs/results.md"),
                        help="a page whose inductive tables to rewrite ('' for none)")
    args = parser.parse_args()
    found = load(args.results)
    if not found:
        print(f"no ind-*.json in {args.results}: run benchmarks/inductive.sh first",
              file=sys.stderr)
        return 2
    budget = sorted({f"{row['epochs']:.0f}" for rows in found.values()
                     for m, row in rows.items() if m == "nbfnet"})
    text = "\n".join([
        "# Inductive KG completion: GraIL's splits", "",
        "Written by `./run python benchmarks/inductive_table.py` from `ind-*.json` (each run: "
        "`bash benchmarks/inductive.sh`, at most 8 CPU minutes of training and validation, "
        "epochs of 20 random batches of 64 queries, early stopping after 10 epochs without a "
        "better validation MRR; the same for every model). NBFNet's median epochs per split: "
        f"{', '.join(budget)} (of 20 batches; its published 20 full epochs need a GPU).", "",
        *table(found, "test", "Test filtered MRR", [("RED-GNN", RED_GNN_MRR)]),
        *table(found, "hits@10_50", "Test Hits@10 against 50 negatives",
               [("NBFNet", NBFNET_HITS50)])])
    path = os.path.join(args.results, "inductive.md")
    atomic_write(path, text)
    if args.page:  # the tables between the page's markers
        with open(args.page) as f:
            page = f.read()
        head, found, rest = page.partition(BEGIN)
        _, ended, tail = rest.partition(END)
        if not (found and ended):
            print(f"{args.page} has no {BEGIN} ... {END} block", file=sys.stderr)
            return 2
        tables = text.split("\n\n", 2)[2]  # without the file's title and source line
        atomic_write(args.page, head + BEGIN + "\n" + tables + END + tail)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
