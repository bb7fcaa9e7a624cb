"""One step of the query-conditioned flow against the project's own SpMM at the same work.

    ./run python benchmarks/perf_flow.py
    python benchmarks/perf_flow.py --device cuda      # on a GPU: perf_flow_cuda.{json,md}

For a random typed graph (N nodes, E edges, R relations) and B queries, one step of
``relational_flow`` (each query its own mixture of relations, or one mixture shared by all
queries, as in a knowledge-graph batch of one query relation; the time of a flow of --steps
steps divided by the steps, so that the seeds' and the result's transposes, done once per
flow, count as they do in use) is timed against one
``qgfd_pyg.spmm`` product of the same graph's transition with ``[N, B]`` values, i.e. the same
``nnz * B`` multiply-adds (the perf_spmm product). Forward alone and forward + backward
(a dense random gradient of the output, as in training; gradients w.r.t. the seeds and the
relation weights; for the SpMM, w.r.t. the values),
median of --repeats rounds (every call of a graph in turn, so that the machine's drift slows
them alike), for the numba and the torch (pair gathers and CSR products: GPUs, no numba)
paths of the flow and for numba's and torch's CSR products; on CUDA with Triton also the
``triton`` path (``set_flow_backend("triton")``, the per-query product in Triton kernels;
the shared-weight steps and the SpMM as on the torch path). Writes
benchmarks/results/perf_flow.{json,md}.
"""
import argparse
import importlib.util
import json
import os

import torch
from qgfd_pyg.bench.measure import keep_freed_memory, timed_interleaved, write_results

from qgfd_pyg import RelationalGraph, diffuse, graph_transition, relational_flow, \
    set_flow_backend, set_spmm_backend
from qgfd_pyg import _numba
from qgfd_pyg.spmm import spmm

TRITON = importlib.util.find_spec("triton") is not None

def flow_calls(graph, p0, a, normalization):
    """(forward, forward + backward) of a flow of ``len(a)`` steps."""
    def forward():
        with torch.no_grad():
            relational_flow(p0, graph, a, normalization=normalization, validate=False)

    grad = torch.rand_like(p0)  # a dense gradient, as training's (a sum's is one broadcast)

    def both():
        p0.grad = a.grad = None
        relational_flow(p0, graph, a, normalization=normalization,
                        validate=False).backward(grad)
    return forward, both


def spmm_calls(P, x):
    grad = torch.rand_like(x)

    def both():
        x.grad = None
        diffuse(x, P, 1.0, 1).backward(grad)
    return (lambda: spmm(P, x.detach())), both


def on_path(path, fn):
    """``fn`` run on one path: numba's routines, the torch ops (numba switched off for the
    flow, torch's CSR product for the SpMM), or the Triton kernels for the flow's per-query
    product (``set_flow_backend("triton")``; CUDA; the SpMM as on the torch path)."""
    def call():
        original = _numba.usable
        if path != "numba":
            _numba.usable = lambda *t: False
        set_spmm_backend("numba" if path == "numba" else "torch")
        set_flow_backend("triton" if path == "triton" else "torch")
        try:
            fn()
        finally:
            _numba.usable = original
            set_spmm_backend("auto")
            set_flow_backend("torch")
    return call


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--graphs", default="40943:215000:23,14541:559000:475,200000:4000000:20")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="steps of the timed flow")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    # as the runner does: large temporaries reuse freed memory instead of faulting in fresh
    # pages on every call (which would time the kernel's page zeroing, not the step)
    kept = args.device == "cpu" and keep_freed_memory()
    device = torch.device(args.device)
    rows = []
    for spec in args.graphs.split(","):
        n, e, r = map(int, spec.split(":"))
        g = torch.Generator().manual_seed(0)
        edge_index = torch.randint(0, n, (2, e), generator=g)
        edge_type = torch.randint(0, r, (e,), generator=g)
        graph = RelationalGraph(edge_index.to(device), edge_type.to(device), r, n)
        p0 = torch.softmax(torch.randn(args.batch, n, generator=g), 1).to(device)
        a = torch.softmax(torch.randn(args.steps, args.batch, r, generator=g), -1).to(device)
        shared = a[:, :1].clone().requires_grad_()
        p0, a = p0.requires_grad_(), a.requires_grad_()
        P = graph_transition(edge_index.to(device), n, add_self_loops=False)
        x = torch.randn(n, args.batch, generator=g).to(device).requires_grad_()
        row = {"nodes": n, "edges": e, "relations": r, "batch": args.batch}
        paths = (["numba"] if _numba.routines() is not None and device.type == "cpu"
                 else []) + ["torch"] + (["triton"] if device.type == "cuda" and TRITON
                                         else [])
        calls = {}
        for path in paths:
            for norm in ("node", "relation"):
                for mode, weights in (("flow", a), ("shared", shared)):
                    fwd, both = flow_calls(graph, p0, weights, norm)
                    calls[(f"{mode}_{norm}_{path}", 0)] = on_path(path, fwd)
                    calls[(f"{mode}_{norm}_{path}", 1)] = on_path(path, both)
            fwd, both = spmm_calls(P, x)
            calls[(f"spmm_{path}", 0)], calls[(f"spmm_{path}", 1)] = \
                on_path(path, fwd), on_path(path, both)
        # every call in turn, repeats rounds: the ratios hold while the machine's speed drifts
        seconds = timed_interleaved(calls, device, args.repeats)
        for (key, part), value in seconds.items():
            per_step = 1 if key.startswith("spmm") else args.steps
            row.setdefault(key, [None, None])[part] = value / per_step
        rows.append(row)
        print(json.dumps(row), flush=True)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "malloc": "glibc keeps freed memory" if kept else "the system's default",
           "batch": args.batch, "repeats": args.repeats, "steps": args.steps,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    paths = [p for p in ("numba", "torch", "triton") if f"spmm_{p}" in rows[0]]
    where = env["device"] if device.type == "cuda" else f"CPU, {env['threads']} threads"
    lines = [f"# One query-conditioned flow step against one SpMM at the same nnz * B ({where}, "
             f"torch {env['torch']}, B = {args.batch})", "",
             f"`relational_flow` per step of a {args.steps}-step flow (every query its own "
             "relation weights; the flow's time over its steps) and one "
             "`qgfd_pyg.spmm` product of the same graph's random walk with [N, B] values; "
             "forward / forward + backward (a dense random gradient of the output, as in "
             "training), median of "
             f"{args.repeats} rounds in which every flow and product of a graph is called in "
             "turn (so that the machine's drift slows them alike). Ratio = flow / SpMM on "
             "the same path (numba: the compiled CPU routines; torch: gathers over the "
             "(source, relation) pairs and CSR products for the flow, torch's CSR product "
             "for the SpMM). Shared relation weights (one "
             "mixture for every query, [T, 1, R]: a "
             "knowledge-graph batch of one query relation) make each step of the torch path "
             "one sparse product with per-edge values; the numba path runs them through its "
             "per-query step. Memory: " + ("glibc's malloc keeps freed memory for reuse "
             "(as the runner does; otherwise every large temporary costs fresh pages)"
             if kept else "the system's malloc") + ". Target: ratio <= 2.", "",
             "| nodes | edges | relations | path | relation weights | normalization | "
             "flow fwd | SpMM fwd | ratio fwd | flow fwd+bwd | SpMM fwd+bwd | ratio fwd+bwd |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        for path in paths:
            s_fwd, s_both = r[f"spmm_{path}"]
            for mode, weights in (("flow", "per query"), ("shared", "shared")):
                for norm in ("node", "relation"):
                    if f"{mode}_{norm}_{path}" not in r:
                        continue
                    f_fwd, f_both = r[f"{mode}_{norm}_{path}"]
                    lines.append(
                        f"| {r['nodes']:,} | {r['edges']:,} | {r['relations']} | {path} | "
                        f"{weights} | {norm} | {1000 * f_fwd:.1f} ms | {1000 * s_fwd:.1f} ms | "
                        f"{f_fwd / s_fwd:.2f} | {1000 * f_both:.1f} ms | "
                        f"{1000 * s_both:.1f} ms | {f_both / s_both:.2f} |")
    write_results(args.out, "perf_flow" if device.type == "cpu" else f"perf_flow_{device.type}",
                  env, rows, lines)


if __name__ == "__main__":
    main()
