"""Compiled against eager on the CPU: a training step (forward + backward) of QGFDConv, the
QGFD network and relational_flow, each ``torch.compile(fullgraph=True)`` (inductor) against
the eager module (numba's kernels where installed), same process, same inputs.

    ./run python benchmarks/compile_perf.py            # writes benchmarks/results/perf_compile.md

Cora (2,708 nodes, 10,556 edges) for the layers; a 2,000-node typed graph (8 relations,
20,000 edges), 64 queries and 3 steps for the flow. Median of ``--repeats`` steps after
``--warmup`` (the compiled module's first call, its compilation, is timed on its own).
"""
import argparse
import os
import statistics
import sys
import time

import torch

from qgfd_pyg import QGFD, QGFDConv, RelationalGraph, relational_flow
from qgfd_pyg.bench.io import atomic_write, default_dir


def step_seconds(fn, inputs, params, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        torch.autograd.grad(fn(*inputs).square().sum(), params)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.autograd.grad(fn(*inputs).square().sum(), params)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cases():
    from torch_geometric.datasets import Planetoid

    data = Planetoid(default_dir("datasets"), "Cora")[0]
    conv = QGFDConv(data.num_features, 8, heads=8, alpha=0.85, steps=6)
    net = QGFD(data.num_features, 64, num_layers=2, out_channels=7, heads=4, dropout=0.0,
               attn_dropout=0.0)
    torch.manual_seed(0)
    graph = RelationalGraph(torch.randint(0, 2000, (2, 20000)), torch.randint(0, 8, (20000,)),
                            8, 2000)

    class Flow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.rand(3, 64, 8))
            self.hop = torch.nn.Parameter(torch.rand(4))

        def forward(self, p0):
            return relational_flow(p0, graph, self.a.softmax(-1), hop_weights=self.hop)

    p0 = torch.zeros(64, 2000)
    p0[torch.arange(64), torch.randint(0, 2000, (64,))] = 1.0
    return [("QGFDConv (graph, 8 heads, 6 steps), Cora", conv, (data.x, data.edge_index)),
            ("QGFD network (2 layers, attention transition), Cora", net,
             (data.x, data.edge_index)),
            ("relational_flow (64 queries, 3 steps), 2,000 nodes", Flow(), (p0,))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=default_dir("benchmarks/results"))
    args = parser.parse_args()
    rows = []
    for name, model, inputs in cases():
        params = list(model.parameters())
        eager = step_seconds(model, inputs, params, args.warmup, args.repeats)
        compiled = torch.compile(model, fullgraph=True)
        start = time.perf_counter()
        torch.autograd.grad(compiled(*inputs).square().sum(), params)
        first = time.perf_counter() - start
        fast = step_seconds(compiled, inputs, params, args.warmup, args.repeats)
        rows.append(f"| {name} | {1000 * eager:.1f} | {1000 * fast:.1f} | {eager / fast:.2f} "
                    f"| {first:.0f} |")
        print(rows[-1], file=sys.stderr)
    text = "\n".join([
        "# torch.compile against eager (CPU)", "",
        f"`./run python benchmarks/compile_perf.py` on {os.cpu_count()} CPU cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; a training step "
        f"(forward + backward), median of {args.repeats} after {args.warmup} warm-up steps. "
        "Compiled: `torch.compile(module, fullgraph=True)` (inductor; no graph break), whose "
        "graph structure is one opaque operator and whose products are gathers and index_adds; "
        "eager: the numba kernels.", "",
        "| case | eager (ms) | compiled (ms) | speed-up | first call, compiling (s) |",
        "| --- | --- | --- | --- | --- |", *rows, ""])
    atomic_write(os.path.join(args.out, "perf_compile.md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
