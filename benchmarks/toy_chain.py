"""Accuracy against the number of hops between a query and its answer (the ``chain`` toy).

For every ``h`` in ``--hops`` it runs ``python -m qgfd_pyg.bench chain --hops h`` (one result
file per ``h`` under ``<out>/toy_chain/``, resumed when rerun), then writes the accuracy table
``<out>/toy_chain.md`` / ``.json`` and the plot ``<out>/toy_chain.png``.

    python benchmarks/toy_chain.py                       # hops 1-4, 6, 8, 10-12, 14; 5 seeds
    python benchmarks/toy_chain.py --hops 1,2,3 --seeds 2 --out /tmp/toy
"""
import argparse
import json
import os
import sys

from qgfd_pyg.bench.io import atomic_write
from qgfd_pyg.bench.runner import RunConfig, default_dir, run_benchmark

MODELS = ("qgfd", "attention", "gat", "appnp", "gcn")
# learnt hop weights: their own result files (chain-H-hops), so the rows above resume as they are
HOPS_MODELS = ("qgfd-hops",)
REACH = {"qgfd": "1 + T = 11", "attention": "1", "gat": "2", "appnp": "K = 10", "gcn": "2",
         "qgfd-hops": "1 + T = 11"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hops", default="1,2,3,4,6,8,10,11,12,14")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=default_dir("benchmarks/results"))
    args = parser.parse_args()
    hops = [int(h) for h in args.hops.split(",")]
    runs = os.path.join(args.out, "toy_chain")
    rows = {}
    for h in hops:
        rows[h] = {}
        for models, name in ((MODELS, f"chain-{h}"), (HOPS_MODELS, f"chain-{h}-hops")):
            results = run_benchmark(RunConfig("chain", models=list(models), seeds=args.seeds,
                                              out=runs, name=name, resume=True,
                                              progress=False, threads=args.threads,
                                              extra={"hops": h},
                                              command=" ".join(["python"] + sys.argv)))
            rows[h].update({r["model"]: r["test"] for r in results.summary})
    atomic_write(os.path.join(args.out, "toy_chain.json"),
                 json.dumps({"hops": hops, "seeds": args.seeds, "test_accuracy": rows},
                            indent=1) + "\n")
    lines = ["# chain toy: test accuracy (%) against the hops from anchor to label", "",
             "| model | reach (hops) | " + " | ".join(f"h={h}" for h in hops) + " |",
             "| --- | --- | " + " | ".join("---" for _ in hops) + " |"]
    for model in MODELS + HOPS_MODELS:
        cells = [f"{100 * rows[h][model]['mean']:.1f} ± {100 * rows[h][model]['std']:.1f}"
                 for h in hops]
        lines.append(f"| {model} | {REACH[model]} | " + " | ".join(cells) + " |")
    lines += ["", f"Mean ± std over seeds 0-{args.seeds - 1}; 400 paths per h, 4 classes "
              f"(chance 25%); per-h result files in toy_chain/. Command: "
              f"`python {' '.join(sys.argv)}`", ""]
    atomic_write(os.path.join(args.out, "toy_chain.md"), "\n".join(lines))
    plot(rows, hops, os.path.join(args.out, "toy_chain.png"))
    print("\n".join(lines))
    return 0


def plot(rows, hops, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for model in MODELS + HOPS_MODELS:
        mean = [100 * rows[h][model]["mean"] for h in hops]
        std = [100 * rows[h][model]["std"] for h in hops]
        ax.errorbar(hops, mean, yerr=std, marker="o", capsize=3,
                    label=f"{model} (reach {REACH[model]})")
    ax.axhline(25, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("hops from anchor to label")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
