"""Graph path: forward+backward time and peak memory of one layer, QGFDConv against GATConv,
APPNP (K = steps) and the dense p-form, on Cora and on synthetic graphs up to ogbn-products' size.

    ./run python benchmarks/perf_graph.py                          # CPU: cora, 1e4 .. 2.5e6 nodes
    ./run python benchmarks/perf_graph.py --device cuda            # on a GPU

All layers get the same inputs (hidden 64 = 4 heads x 16, steps 6, average degree ~20) in one
process; the median of --repeats forward+backward passes is reported after a warm-up. Also the
time of one diffusion step against the memory-bandwidth bound of one SpMM (bytes it must move at
least / measured copy bandwidth). Writes benchmarks/results/perf_graph[_<device>].{json,md,png}
after every graph, so a crash keeps the finished rows.
"""
import argparse
import json
import math
import os

import torch
from qgfd_pyg.bench.measure import cell, copy_bandwidth, ratio, timed, write_results
from torch_geometric.nn import APPNP, GATConv

from qgfd_pyg import QGFDConv, diffuse, graph_transition
from qgfd_pyg.bench.synthetic import random_graph
from qgfd_pyg.reference import pform


def dense_pform(x, edge_index, conv, P):
    """QGFDConv computed the original way: the seed p0 as dense [H, N, N] matrices, p_t
    iterated to p_T (qgfd_pyg.reference.pform, each step p_t P as the sparse product
    P^T p_t^T, the fastest way this form allows; a dense P would add O(H N^3) per step), then
    p_T V."""
    N, H, C = x.size(0), conv.heads, conv.out_channels
    q = conv.lin_query(x).view(N, H, C).transpose(0, 1)
    k = conv.lin_key(x).view(N, H, C).transpose(0, 1)
    v = conv.lin_value(x).view(N, H, C).transpose(0, 1)
    allowed = torch.zeros(N, N, dtype=torch.bool, device=x.device)
    allowed[edge_index[1], edge_index[0]] = True
    allowed.fill_diagonal_(True)
    p0 = torch.softmax((q @ k.transpose(1, 2) / math.sqrt(C)).masked_fill(~allowed, -math.inf), -1)
    pT = pform(p0, P, conv.alpha, conv.steps)  # [H, N, N]
    return (pT @ v).transpose(0, 1).reshape(N, H * C)


PFORM_COPIES = 6  # [H, N, N] tensors the p-form holds at its peak (forward + backward)


def measure_graph(name, x, edge_index, args, device, bandwidth):
    N, E = x.size(0), edge_index.size(1)
    steps, heads, width = args.steps, 4, 64
    torch.manual_seed(0)
    qgfd = QGFDConv(x.size(1), width // heads, heads=heads, alpha=0.85, steps=steps,
                    cached=True).to(device)
    gat = GATConv(x.size(1), width // heads, heads=heads).to(device)
    appnp = APPNP(K=steps, alpha=0.15, cached=True).to(device)  # teleport 0.15 = QGFD alpha 0.85
    x = x.to(device).requires_grad_()
    edge_index = edge_index.to(device)
    repeats = args.repeats if N <= 200_000 else max(2, args.repeats // 2)
    row = {"graph": name, "nodes": N, "edges": E, "features": x.size(1)}

    def step(module):
        def run():
            x.grad = None
            module.zero_grad(set_to_none=True) if hasattr(module, "zero_grad") else None
            module(x, edge_index).sum().backward()
        return run

    # PyG's GATConv keeps x_j, alpha * x_j and more per edge; APPNP on edge_index keeps the
    # messages per edge. Peak bytes per (edge, channel) measured at 10^5 nodes: about 4.2
    # (GAT) and 2.4 (APPNP) floats; a run past RAM gets the whole process killed.
    edge_bytes = {"gat": 4.5 * (E + N) * width * 4, "appnp": 2.6 * (E + N) * x.size(1) * 4}
    for label, fn in (("qgfd", step(qgfd)), ("gat", step(gat)), ("appnp", step(appnp))):
        if edge_bytes.get(label, 0) > args.max_edge_tensor_bytes:
            row[label] = {"status": f"not run: its per-edge tensors would need about "
                                    f"{edge_bytes[label] / 2**30:.0f} GiB"}
            continue
        try:
            seconds, extra = timed(fn, device, repeats)
            row[label] = {"seconds": seconds, "peak_mb": extra, "status": "ok"}
        except (MemoryError, RuntimeError) as error:
            row[label] = {"status": f"failed: {str(error).splitlines()[0][:80]}"}
    P = graph_transition(edge_index.flip(0), N)  # QGFDConv's own transition
    dense_bytes = PFORM_COPIES * 4 * heads * N * N
    if dense_bytes > args.max_dense_bytes:
        row["dense_pform"] = {"status": f"not run: its [H, N, N] tensors need "
                                        f"~{dense_bytes / 2**30:,.0f} GiB (--max-dense-bytes)"}
    else:
        try:
            seconds, extra = timed(lambda: dense_pform(x, edge_index, qgfd, P).sum().backward(),
                                   device, 1, warmup=False)
            with torch.no_grad():  # same numbers as the layer (its bias starts at zero)
                diff = (dense_pform(x, edge_index, qgfd, P) - qgfd(x, edge_index)).abs().max()
            row["dense_pform"] = {"seconds": seconds, "peak_mb": extra, "status": "ok",
                                  "max_abs_diff_to_qgfd": float(diff)}
        except (MemoryError, RuntimeError) as error:
            row["dense_pform"] = {"status": f"out of memory: {str(error).splitlines()[0][:60]}"}
    # One diffusion step against two memory-bandwidth bounds of one SpMM over [N, 64] values:
    # "stream" moves every array once (col + value, rowptr, read Z, write PZ); "gather" reads
    # one row of Z per non-zero, which is what a random graph whose Z exceeds the caches costs.
    values = torch.randn(N, width, device=device)
    seconds, _ = timed(lambda: diffuse(values, P, 0.85, steps), device, repeats)
    nnz = P.nnz()
    stream = nnz * (8 + 4) + (N + 1) * 8 + 2 * N * width * 4
    gather = stream + (nnz - N) * width * 4
    row["diffusion_step"] = {"seconds": seconds / steps, "bound_seconds": stream / bandwidth,
                             "ratio_to_bound": seconds / steps / (stream / bandwidth),
                             "gather_bound_seconds": gather / bandwidth,
                             "ratio_to_gather_bound": seconds / steps / (gather / bandwidth),
                             "z_bytes": N * width * 4}
    return add_ratios(row)


def add_ratios(row):
    """The row's time ratios, from the times it holds."""
    q, g, a = row["qgfd"], row["gat"], row["appnp"]
    if all(r.get("status") == "ok" for r in (q, g, a)):
        row["qgfd_over_gat_plus_appnp"] = q["seconds"] / (g["seconds"] + a["seconds"])
    elif q.get("status") == "ok" and a.get("status") == "ok":  # GAT skipped: an upper bound
        row["qgfd_over_appnp"] = q["seconds"] / a["seconds"]
    if row["dense_pform"].get("status") == "ok" and q.get("status") == "ok":
        row["pform_over_qgfd"] = row["dense_pform"]["seconds"] / q["seconds"]
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000,2500000")
    parser.add_argument("--degree", type=int, default=20)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-cora", action="store_true")
    parser.add_argument("--products", action="store_true",
                        help="add a graph of ogbn-products' size: 2,449,029 nodes, 61,859,140 "
                             "edges, 100 features")
    parser.add_argument("--root", default="datasets")
    parser.add_argument("--max-dense-bytes", type=float, default=16e9,
                        help="skip the dense p-form when its [H, N, N] tensors (about "
                             "PFORM_COPIES of them live at once) exceed this")
    parser.add_argument("--max-edge-tensor-bytes", type=float, default=16e9,
                        help="skip GATConv / APPNP when their per-edge tensors would exceed "
                             "this (a process past RAM gets killed)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows of an earlier run's JSON and skip those graphs")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the Markdown and plot from the recorded JSON")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = "perf_graph" + ("" if device.type == "cpu" else f"_{device.type}")
    if args.render:
        with open(os.path.join(args.out, f"{name}.json")) as f:
            recorded = json.load(f)
        for row in recorded["rows"]:
            add_ratios(row)
        write(args.out, name, recorded["environment"], recorded["rows"])
        return
    bandwidth = copy_bandwidth(device)
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device)
           if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
           "copy_bandwidth_gb_s": bandwidth / 1e9, "steps": args.steps, "hidden": "4 x 16",
           "degree": args.degree}
    graphs = []  # (label, nodes, edge_index or number of edges, features)
    if not args.no_cora:
        from torch_geometric.datasets import Planetoid
        data = Planetoid(args.root, "Cora")[0]
        graphs.append(("cora", data.num_nodes, data.edge_index, 64))
    graphs += [(f"random-{int(n):,}", int(n), args.degree * int(n), 64)
               for n in map(float, args.sizes.split(",")) if n > 0]
    if args.products:
        graphs.append(("products-size", 2_449_029, 61_859_140, 100))
    rows = []
    path = os.path.join(args.out, f"{name}.json")
    if args.resume and os.path.exists(path):
        with open(path) as f:
            rows = json.load(f)["rows"]
    done = {r["graph"] for r in rows}
    for label, n, edges, features in graphs:
        if label in done:
            continue
        edge_index = random_graph(n, edges) if isinstance(edges, int) else edges
        x = torch.randn(n, features)
        rows.append(measure_graph(label, x, edge_index, args, device, bandwidth))
        print(json.dumps(rows[-1]), flush=True)
        write(args.out, name, env, rows)
        del x, edge_index
        if device.type == "cuda":
            torch.cuda.empty_cache()


def combined(row) -> str:
    """QGFD / (GAT + APPNP), or the upper bound QGFD / APPNP where GAT could not run."""
    if "qgfd_over_appnp" in row:
        return f"< {row['qgfd_over_appnp']:.2f} (QGFD / APPNP; GAT not run)"
    return ratio(row, "qgfd_over_gat_plus_appnp")


def write(out, name, env, rows):
    lines = [f"# One layer, forward + backward ({env['device']})", "",
             f"hidden {env['hidden']}, steps {env['steps']}, average degree ~{env['degree']} "
             f"(synthetic); median time / peak extra memory; copy bandwidth "
             f"{env['copy_bandwidth_gb_s']:.1f} GB/s; torch {env['torch']}.", "",
             "| graph | nodes | edges | in | QGFDConv | GATConv | APPNP | dense p-form | "
             "QGFD / (GAT + APPNP) | p-form / QGFD | diffusion step | / stream bound | "
             "/ gather bound |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        d = r["diffusion_step"]
        cells = [cell(r[key]) for key in ("qgfd", "gat", "appnp", "dense_pform")]
        lines.append(f"| {r['graph']} | {r['nodes']:,} | {r['edges']:,} | {r['features']} | "
                     f"{' | '.join(cells)} | "
                     f"{combined(r)} | {ratio(r, 'pform_over_qgfd')} | "
                     f"{1000 * d['seconds']:.3g} ms | {d['ratio_to_bound']:.1f}x "
                     f"({1000 * d['bound_seconds']:.3g} ms) | "
                     f"{d['ratio_to_gather_bound']:.1f}x "
                     f"({1000 * d['gather_bound_seconds']:.3g} ms) |")
    write_results(out, name, env, rows, lines)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in ("qgfd", "gat", "appnp", "dense_pform"):
        pts = [(r["nodes"], r[model]["seconds"]) for r in rows if r[model].get("status") == "ok"]
        if pts:
            ax.loglog(*zip(*pts, strict=True), marker="o", label=model)
    ax.set_xlabel("nodes")
    ax.set_ylabel("forward + backward (s)")
    ax.set_title(f"One layer, {env['device']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = os.path.join(out, f".{name}.png.tmp")
    fig.savefig(tmp, format="png", dpi=120)
    os.replace(tmp, os.path.join(out, f"{name}.png"))
    plt.close(fig)


if __name__ == "__main__":
    main()
