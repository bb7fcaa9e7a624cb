"""A new graph every call: QGFDConv with cached=False (what mini-batch training pays) against
cached=True and GATConv, the share of the structure build, and a NeighborLoader epoch.

    ./run python benchmarks/perf_uncached.py                  # CPU
    ./run python benchmarks/perf_uncached.py --device cuda    # on a GPU

Part 1, one layer (4 heads x 16, steps 6), forward + backward, median of --repeats (10x that
below 50,000 nodes) after a warm-up, the layers timed in turn within each repeat, all on the
same inputs in one process: Cora and random graphs of average degree
20. "structure" is the build of the attention edges, P and their grouping alone (what
cached=True skips).
Part 2, one training epoch over --batches mini-batches of a NeighborLoader (fan-out --fanout per
hop, steps + 1 hops) on a products-like random graph (--loader-nodes nodes, average degree
--loader-degree, 100 features, 47 classes): forward, cross-entropy on the seeds, backward and an
Adam step. Models of the same width (4 x 16): QGFD with one layer (steps + 1 hops of reach, what
the loader samples) and with steps + 1 layers, GAT with steps + 1 layers; the sampling time
alone is listed too. The loader needs pyg-lib or torch-sparse (a row says so where neither is).
Writes benchmarks/results/perf_uncached[_<device>].{json,md} after every row; --resume keeps
the finished rows.
"""
import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch_geometric.nn import GATConv

from qgfd_pyg import QGFDConv
from qgfd_pyg.bench.measure import cell, timed, write_results
from qgfd_pyg.bench.synthetic import random_graph

HEADS, CHANNELS = 4, 16


def layer_row(name, x, edge_index, args, device):
    """Forward + backward of one layer: QGFDConv uncached / cached, GATConv; the structure."""
    N = x.size(0)
    torch.manual_seed(0)
    make = dict(heads=HEADS, alpha=0.85, steps=args.steps)
    models = {"qgfd_uncached": QGFDConv(x.size(1), CHANNELS, **make),
              "qgfd_cached": QGFDConv(x.size(1), CHANNELS, cached=True, **make),
              "gat": GATConv(x.size(1), CHANNELS, heads=HEADS)}
    x = x.to(device).requires_grad_()
    edge_index = edge_index.to(device)
    row = {"graph": name, "nodes": N, "edges": edge_index.size(1)}
    conv = models["qgfd_uncached"]

    def structure():  # what the uncached call builds: the edges, P, both groupings
        layout = conv._structure(edge_index, None, N)[2]
        if getattr(layout, "fast_groups", False):
            layout.groups("src")

    def step(module):
        def run():
            x.grad = None
            module.zero_grad(set_to_none=True)
            module(x, edge_index).sum().backward()
        return run

    runs = {label: step(module.to(device)) for label, module in models.items()}
    runs["structure"] = structure
    # round robin: every repeat times each in turn, so a load change on a shared machine
    # hits all of them alike; small graphs get more repeats (milliseconds are noisy)
    repeats = args.repeats if N > 50_000 else 10 * args.repeats
    times = {label: [] for label in runs}
    for fn in runs.values():  # warm-up (numba compiles, caches fill)
        fn()
    for _ in range(repeats):
        for label, fn in runs.items():
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[label].append(time.perf_counter() - start)
    for label in runs:
        row[label] = {"seconds": statistics.median(times[label]), "status": "ok",
                      "repeats": repeats}
    if device.type == "cuda":  # peak memory, one more call each (the CPU's peak RSS would
        for label in models:     # only show the largest model run so far)
            row[label]["peak_mb"] = timed(runs[label], device, 1, warmup=False)[1]
    seconds = row["structure"]["seconds"]
    row["uncached_over_gat"] = row["qgfd_uncached"]["seconds"] / row["gat"]["seconds"]
    row["structure_share"] = seconds / row["qgfd_uncached"]["seconds"]
    return row


class Net(torch.nn.Module):
    """``layers`` convolutions of width 4 x 16 (ELU between), then a linear classifier."""

    def __init__(self, kind, layers, in_channels, classes, steps):
        super().__init__()
        self.convs = torch.nn.ModuleList()
        for i in range(layers):
            width = in_channels if i == 0 else HEADS * CHANNELS
            if kind == "qgfd":
                self.convs.append(QGFDConv(width, CHANNELS, heads=HEADS, alpha=0.85,
                                           steps=steps))
            else:
                self.convs.append(GATConv(width, CHANNELS, heads=HEADS))
        self.head = torch.nn.Linear(HEADS * CHANNELS, classes)

    def forward(self, x, edge_index):
        for conv in self.convs:
            x = F.elu(conv(x, edge_index))
        return self.head(x)


def loader_rows(args, device, done):
    """One epoch of NeighborLoader training per model (and the sampling alone)."""
    from torch_geometric.data import Data
    from torch_geometric.loader import NeighborLoader

    n, hops, classes = args.loader_nodes, args.steps + 1, 47
    graph = f"products-like-{n:,}"
    g = torch.Generator().manual_seed(0)
    data = Data(x=torch.randn(n, 100, generator=g), edge_index=random_graph(
        n, args.loader_degree * n), y=torch.randint(0, classes, (n,), generator=g))
    seeds = torch.randperm(n, generator=g)[:args.batches * args.batch_size]
    try:
        loader = NeighborLoader(data, num_neighbors=[args.fanout] * hops, input_nodes=seeds,
                                batch_size=args.batch_size, shuffle=False)
        next(iter(loader))
    except (ImportError, RuntimeError) as error:
        yield {"graph": graph, "model": "all", "status": f"not run: {str(error)[:100]}"}
        return
    if "sampling" not in done:
        start, nodes, edges = time.perf_counter(), 0, 0
        for batch in loader:
            nodes, edges = nodes + batch.num_nodes, edges + batch.num_edges
        yield {"graph": graph, "model": "sampling", "status": "ok",
               "seconds": time.perf_counter() - start, "nodes_per_batch": nodes / args.batches,
               "edges_per_batch": edges / args.batches}
    for label, kind, layers in (("qgfd-1", "qgfd", 1), (f"qgfd-{hops}", "qgfd", hops),
                                (f"gat-{hops}", "gat", hops)):
        if label in done:
            continue
        torch.manual_seed(0)
        model = Net(kind, layers, 100, classes, args.steps).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        start = time.perf_counter()
        for batch in loader:
            batch = batch.to(device)
            optimizer.zero_grad()
            out = model(batch.x, batch.edge_index)[:batch.batch_size]
            F.cross_entropy(out, batch.y[:batch.batch_size]).backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        yield {"graph": graph, "model": label, "layers": layers, "status": "ok",
               "seconds": time.perf_counter() - start}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="20000,200000")
    parser.add_argument("--degree", type=int, default=20)
    parser.add_argument("--steps", type=int, default=6, help="diffusion steps of part 1")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loader-steps", type=int, default=2,
                        help="diffusion steps in part 2 (the loader samples steps + 1 hops)")
    parser.add_argument("--loader-nodes", type=int, default=200_000)
    parser.add_argument("--loader-degree", type=int, default=50)
    parser.add_argument("--fanout", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--no-loader", action="store_true", help="part 1 only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--root", default="datasets")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args()
    if args.batches < 1 or args.batch_size < 1 or args.fanout < 1:
        parser.error("--batches, --batch-size and --fanout must be positive")
    device = torch.device(args.device)
    name = "perf_uncached" + ("" if device.type == "cpu" else f"_{device.type}")
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device)
           if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
           "steps": args.steps, "degree": args.degree, "loader_steps": args.loader_steps,
           "fanout": args.fanout, "batch_size": args.batch_size, "batches": args.batches}
    path = os.path.join(args.out, f"{name}.json")
    layers, epochs = [], []
    if args.resume and os.path.exists(path):
        with open(path) as f:
            recorded = json.load(f)
        layers, epochs = recorded["rows"]["layer"], recorded["rows"]["loader"]

    def save():
        write_results(args.out, name, env, {"layer": layers, "loader": epochs},
                      markdown(env, layers, epochs))

    from torch_geometric.datasets import Planetoid
    graphs = [("cora", lambda: Planetoid(args.root, "Cora")[0].edge_index, 2708)]
    graphs += [(f"random-{int(n):,}", lambda n=int(n): random_graph(n, args.degree * n), int(n))
               for n in map(float, args.sizes.split(",")) if n > 0]
    for label, edges, n in graphs:
        if label in {r["graph"] for r in layers}:
            continue
        layers.append(layer_row(label, torch.randn(n, 64), edges(), args, device))
        print(json.dumps(layers[-1]), flush=True)
        save()
    if args.no_loader:
        return
    loader_args = argparse.Namespace(**{**vars(args), "steps": args.loader_steps})
    for row in loader_rows(loader_args, device, {r["model"] for r in epochs}):
        epochs.append(row)
        print(json.dumps(row), flush=True)
        save()


def markdown(env, layers, epochs):
    lines = [f"# A new graph every call ({env['device']}, torch {env['torch']})", "",
             f"One layer, 4 heads x 16, steps {env['steps']}, forward + backward (median time"
             "; peak extra memory on a GPU). *structure*: building the attention edges, P and "
             "their grouping alone, what `cached=True` skips.", "",
             "| graph | nodes | edges | QGFDConv uncached | QGFDConv cached | GATConv | "
             "uncached / GAT | structure | structure / uncached |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in layers:
        lines.append(f"| {r['graph']} | {r['nodes']:,} | {r['edges']:,} | "
                     f"{cell(r['qgfd_uncached'])} | {cell(r['qgfd_cached'])} | {cell(r['gat'])}"
                     f" | {r['uncached_over_gat']:.2f} | {r['structure']['seconds']:.4f} s | "
                     f"{100 * r['structure_share']:.0f}% |")
    hops = env["loader_steps"] + 1
    lines += ["", f"One epoch of {env['batches']} NeighborLoader batches ({env['batch_size']} "
              f"seeds, fan-out {env['fanout']} per hop, {hops} hops; QGFD steps "
              f"{env['loader_steps']}), width 4 x 16, Adam; seconds include the sampling.", "",
              "| graph | model | epoch | per batch |", "| --- | --- | --- | --- |"]
    for r in epochs:
        if r["status"] != "ok":
            lines.append(f"| {r['graph']} | {r['model']} | {r['status']} | |")
            continue
        extra = (f" ({r['nodes_per_batch']:,.0f} nodes, {r['edges_per_batch']:,.0f} edges "
                 f"per batch)" if r["model"] == "sampling" else "")
        lines.append(f"| {r['graph']} | {r['model']}{extra} | {r['seconds']:.2f} s | "
                     f"{r['seconds'] / env['batches']:.3f} s |")
    return lines


if __name__ == "__main__":
    main()
