"""SpMM backends for the diffusion loop: numba's CSR kernel, torch's own CSR product and
torch_sparse.matmul.

    ./run python benchmarks/perf_spmm.py

One product P Z over [N, 64] values (forward), and one diffusion step forward + backward
(gradient w.r.t. the values, through qgfd_pyg.diffuse, whose backward multiplies by the cached
CSR form of P^T), median of --repeats, for each backend of qgfd_pyg.set_spmm_backend on the same
transition. Writes benchmarks/results/perf_spmm.{json,md}.
"""
import argparse
import json
import os

import torch
from qgfd_pyg.bench.measure import copy_bandwidth, gather_bandwidth, timed, write_results

from qgfd_pyg import diffuse, graph_transition, set_spmm_backend
from qgfd_pyg._numba import routines
from qgfd_pyg.spmm import SPMM_BACKENDS, spmm

CPU = torch.device("cpu")


def measure(P, x, repeats):
    """Median seconds of one product (forward) and of one diffusion step forward + backward."""
    def both():
        x.grad = None
        diffuse(x, P, 0.85, 1).sum().backward()
    return {"forward_s": timed(lambda: spmm(P, x.detach()), CPU, repeats)[0],
            "forward_backward_s": timed(both, CPU, repeats)[0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--graphs", default="200000:4000000,1000000:20000000")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args()
    backends = [b for b in SPMM_BACKENDS if b != "auto"
                and (b != "numba" or routines() is not None)]
    copy_bw, gather_bw = copy_bandwidth(CPU), gather_bandwidth(CPU, args.width)
    rows = []
    for spec in args.graphs.split(","):
        n, e = map(int, spec.split(":"))
        g = torch.Generator().manual_seed(0)
        P = graph_transition(torch.randint(0, n, (2, e), generator=g), n)
        x = torch.randn(n, args.width, requires_grad=True)
        row = {"nodes": n, "edges": e, "nnz": P.nnz()}
        for backend in backends:
            set_spmm_backend(backend)
            row[backend] = measure(P, x, args.repeats)
        set_spmm_backend("auto")
        # bytes one product moves: every array once ("stream"), or in addition one row of Z
        # per off-diagonal non-zero ("gather", random graphs whose Z exceeds the caches)
        stream = row["nnz"] * 12 + (n + 1) * 8 + 2 * n * args.width * 4
        row["stream_bytes"] = stream
        row["gather_bytes"] = stream + (row["nnz"] - n) * args.width * 4
        best = min(row[b]["forward_s"] for b in backends)
        row["best_over_copy_bound"] = best / (row["gather_bytes"] / copy_bw)
        row["best_over_gather_bound"] = best / (row["gather_bytes"] / gather_bw)
        rows.append(row)
        print(json.dumps(row), flush=True)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "width": args.width,
           "repeats": args.repeats, "copy_bandwidth_gb_s": copy_bw / 1e9,
           "gather_bandwidth_gb_s": gather_bw / 1e9}
    lines = [f"# SpMM backends over [N, {args.width}] values (CPU, {env['threads']} threads, "
             f"torch {env['torch']})", "",
             "One product P Z (forward) and one diffusion step forward + backward; median of "
             f"{args.repeats}. The default backend, `auto`, is `numba` when numba is installed. "
             f"Bounds for the fastest forward: the bytes of a product with one {4 * args.width}"
             f"-byte row of Z gathered per non-zero, at the measured copy bandwidth "
             f"({copy_bw / 1e9:.1f} GB/s) and at the measured random-row gather bandwidth "
             f"({gather_bw / 1e9:.1f} GB/s, torch.index_select from a 512 MB table).",
             "", "| nodes | nnz(P) | " + " | ".join(f"{b} fwd | {b} fwd+bwd" for b in backends)
             + " | torch / numba (fwd) | torch_sparse / numba (fwd) | best / copy bound | "
             "best / gather bound |",
             "| --- | --- |" + " --- | --- |" * len(backends) + " --- | --- | --- | --- |"]
    for r in rows:
        cells = " | ".join(f"{1000 * r[b]['forward_s']:.1f} ms | "
                           f"{1000 * r[b]['forward_backward_s']:.1f} ms" for b in backends)
        ratios = " | ".join(f"{r[b]['forward_s'] / r['numba']['forward_s']:.2f}"
                            if "numba" in r else "n/a" for b in ("torch", "torch_sparse"))
        lines.append(f"| {r['nodes']:,} | {r['nnz']:,} | {cells} | {ratios} | "
                     f"{r['best_over_copy_bound']:.1f}x | {r['best_over_gather_bound']:.1f}x |")
    write_results(args.out, "perf_spmm", env, rows, lines)


if __name__ == "__main__":
    main()
