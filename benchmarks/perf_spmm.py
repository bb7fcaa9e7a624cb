"""SpMM backends for the diffusion loop: torch_sparse.matmul against torch's own CSR product.

    ./run python benchmarks/perf_spmm.py

One diffusion step Z <- P Z over [N, 64] values, forward alone and forward + backward (gradient
w.r.t. the values), median of --repeats, for each backend of qgfd_pyg.set_spmm_backend, on the
same transition. Writes benchmarks/results/perf_spmm.{json,md}.
"""
import argparse
import json
import os

import torch
from common import timed, write_results

from qgfd_pyg import graph_transition, set_spmm_backend
from qgfd_pyg.diffusion import SPMM_BACKENDS, spmm

CPU = torch.device("cpu")


def measure(P, x, repeats):
    """Median seconds of one product, forward alone and forward + backward w.r.t. x."""
    def both():
        x.grad = None
        spmm(P, x).sum().backward()
    return {"forward_s": timed(lambda: spmm(P, x.detach()), CPU, repeats)[0],
            "forward_backward_s": timed(both, CPU, repeats)[0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--graphs", default="200000:4000000,1000000:20000000")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args()
    rows = []
    for spec in args.graphs.split(","):
        n, e = map(int, spec.split(":"))
        g = torch.Generator().manual_seed(0)
        P = graph_transition(torch.randint(0, n, (2, e), generator=g), n)
        x = torch.randn(n, args.width, requires_grad=True)
        row = {"nodes": n, "edges": e, "nnz": P.nnz()}
        for backend in SPMM_BACKENDS:
            set_spmm_backend(backend)
            row[backend] = measure(P, x, args.repeats)
        set_spmm_backend("torch")
        row["torch_sparse_over_torch"] = (row["torch_sparse"]["forward_s"]
                                          / row["torch"]["forward_s"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "width": args.width,
           "repeats": args.repeats}
    lines = [f"# SpMM backends, one diffusion step over [N, {args.width}] values (CPU, "
             f"{env['threads']} threads, torch {env['torch']})", "",
             "| nodes | nnz(P) | torch CSR fwd | torch_sparse fwd | torch CSR fwd+bwd | "
             "torch_sparse fwd+bwd | torch_sparse / torch (fwd) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        t, s = r["torch"], r["torch_sparse"]
        lines.append(f"| {r['nodes']:,} | {r['nnz']:,} | {1000 * t['forward_s']:.1f} ms | "
                     f"{1000 * s['forward_s']:.1f} ms | {1000 * t['forward_backward_s']:.1f} ms | "
                     f"{1000 * s['forward_backward_s']:.1f} ms | "
                     f"{r['torch_sparse_over_torch']:.2f} |")
    write_results(args.out, "perf_spmm", env, rows, lines)


if __name__ == "__main__":
    main()
