"""Cost of the inductive models side by side: seconds per training epoch (a full pass over the
training queries, timed on a few batches and scaled) and test queries per second, for each
model on one split, one process, the same threads; written to
``benchmarks/results/inductive_cost.md``.

    ./run python benchmarks/inductive_cost.py --tasks ind-fb237-v1,ind-wn18rr-v1 --threads 1
"""
import argparse
import os
import time

import torch


def measure(task, model: str, batches: int, queries: int) -> tuple:
    from qgfd_pyg.bench.train import seed_everything

    seed_everything(0)
    experiment = task.setup(model, 0, task.models[model].options, torch.device("cpu"))
    order = experiment.batches()
    experiment.model.train()
    experiment.batch_loss(order[0]).backward()  # a first batch: allocations, compiled kernels
    start = time.perf_counter()
    for idx in order[1:1 + batches]:
        experiment.optimizer.zero_grad()
        experiment.batch_loss(idx).backward()
        experiment.optimizer.step()
    per_batch = (time.perf_counter() - start) / batches
    epoch = per_batch * len(order)
    items = experiment.eval_queries["test"][:queries]
    experiment.eval_queries["test"] = items
    start = time.perf_counter()
    experiment.evaluate("test")
    return epoch, per_batch, items.size(0) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="ind-fb237-v1")
    parser.add_argument("--models", default="qgfd,attention,nbfnet")
    parser.add_argument("--batches", type=int, default=5, help="timed training batches")
    parser.add_argument("--queries", type=int, default=256, help="timed test queries")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="default: benchmarks/results")
    args = parser.parse_args()
    # numba's thread count is per thread; a process whose first numba call comes from another
    # thread can run its kernels on every core, oversubscribed beside other processes (seen:
    # 0.8 s against 0.04 s per qgfd batch): fix it before numba loads
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    from qgfd_pyg.bench.io import atomic_write
    from qgfd_pyg.bench.runner import default_dir
    from qgfd_pyg.bench.tasks import load_task
    lines = ["# Inductive models: cost per epoch and per test query", "",
             f"`./run python benchmarks/inductive_cost.py --tasks {args.tasks} --models "
             f"{args.models} --threads {args.threads}`: {args.batches} training batches of 64 "
             f"queries timed after a first one and scaled to a full pass over the training "
             f"queries; {args.queries} test queries ranked (both directions); one process, "
             f"{args.threads} thread(s) for torch and numba, CPU, "
             f"{time.strftime('%Y-%m-%d')}; another benchmark ran on the second core.", "",
             "| task | model | s / training epoch | s / batch | test queries / s |",
             "| --- | --- | --- | --- | --- |"]
    for name in args.tasks.split(","):
        task = load_task(name, default_dir("datasets"))
        for model in args.models.split(","):
            epoch, batch, qps = measure(task, model, args.batches, args.queries)
            lines.append(f"| {name} | {model} | {epoch:.0f} | {batch:.2f} | {qps:.1f} |")
            print(lines[-1], flush=True)
    path = os.path.join(args.out or default_dir("benchmarks/results"), "inductive_cost.md")
    atomic_write(path, "\n".join(lines) + "\n")
    print("written:", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
