"""PyG's RotatE on WN18RR: its margin and learning rate chosen on validation filtered MRR.

Each configuration trains seed 0 for a fixed wall-clock budget (epochs of 40 random batches
of 512 queries, the wn18rr table's protocol) and reports the best validation MRR (2,000 fixed
validation queries) and the test MRR at that epoch; the runner's ``rotate`` model takes the
margin with the best validation MRR. Configurations are ``lr,margin,hidden``:

    ./run python benchmarks/sweep_kge.py --minutes 4 0.005,9,128 0.005,6,128 0.005,3,128 \
        0.005,1,128 0.01,1,128 0.05,1,128
"""
import argparse
import dataclasses

import torch

from qgfd_pyg.bench import kg
from qgfd_pyg.bench.tasks import load_task
from qgfd_pyg.bench.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="lr,margin,hidden")
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task("wn18rr", "datasets", None, {"epoch_batches": 40})
    print("| lr | margin | hidden | val MRR | test MRR | epochs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for config in args.configs:
        lr, margin, hidden = config.split(",")
        kg.KG_MODELS["rotate"] = dataclasses.replace(kg.KG_MODELS["rotate"], lr=float(lr))
        run = fit(task, "rotate", 0, dict(hidden=int(hidden), margin=float(margin)), 10**6,
                  10**6, torch.device("cpu"), max_seconds=60 * args.minutes)
        print(f"| {lr} | {margin} | {hidden} | {run['val']:.4f} | {run['test']:.4f} | "
              f"{run['epochs']} |", flush=True)


if __name__ == "__main__":
    main()
