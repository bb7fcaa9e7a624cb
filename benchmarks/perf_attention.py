"""Dense-sequence path: QGFDAttention against scaled_dot_product_attention alone and against the
dense p-form (the original reference formulation, p_t iterated as [B, H, L, L] matrices).

    ./run python benchmarks/perf_attention.py                    # CPU, L = 256 .. 4096
    ./run python benchmarks/perf_attention.py --device cuda      # on a GPU
    ./run python benchmarks/perf_attention.py --device cuda --dtype bfloat16 --causal \
        --lengths 1024,4096,16384

Forward time (median of --repeats after a warm-up) and peak memory of the attention core (same
projected q, k, v for all three), heads=8, d=64, T=4, k=8 by default. A configuration that runs
out of memory (or past --max-dense-bytes for the p-form) is recorded as such. Writes
benchmarks/results/perf_attention[_<device>].{json,md}, after every row.
"""
import argparse
import json
import math
import os

import torch
import torch.nn.functional as F
from qgfd_pyg.bench.measure import cell, ratio, timed, write_results

from qgfd_pyg.reference import pform
from qgfd_pyg.sequence import diffuse_sequence, sequence_transition


def qgfd(q, k, v, alpha, steps, knn, causal):
    P = sequence_transition(k, knn, is_causal=causal)
    z, _ = diffuse_sequence(v, P, alpha, steps)
    return F.scaled_dot_product_attention(q, k, z, is_causal=causal)


def knn_only(q, k, v, alpha, steps, knn, causal):
    """The kNN transition alone (QGFD's extra cost over SDPA besides the T products)."""
    return sequence_transition(k, knn, is_causal=causal)


def sdpa(q, k, v, alpha, steps, knn, causal):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def dense_pform(q, k, v, alpha, steps, knn, causal):
    """p0 [B, H, L, L], P dense [B, H, L, L] from the same kNN rule, p_t iterated
    (qgfd_pyg.reference.pform)."""
    B, H, L, d = k.shape
    P = sequence_transition(k, knn, is_causal=causal).to_dense().view(B, H, L, B, H, L)
    P = torch.stack([P[b, h, :, b, h] for b in range(B) for h in range(H)]).view(B, H, L, L)
    scores = q.float() @ k.float().transpose(-1, -2) / math.sqrt(d)
    if causal:
        scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool,
                                               device=q.device).triu(1), float("-inf"))
    return pform(torch.softmax(scores, dim=-1), P, alpha, steps) @ v.float()


def measure(fn, args, device, repeats):
    with torch.no_grad():
        return timed(lambda: fn(*args), device, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="256,512,1024,2048,4096")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=0.85)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--max-dense-bytes", type=float, default=8e9,
                        help="skip the dense p-form when its [B, H, L, L] tensors exceed this")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args()
    device = torch.device(args.device)
    name = "perf_attention" + ("" if device.type == "cpu" else f"_{device.type}")
    dtype = getattr(torch, args.dtype)
    rows = []
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device)
           if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
           "batch": args.batch, "heads": args.heads, "head_dim": args.head_dim,
           "steps": args.steps, "k": args.k, "alpha": args.alpha, "repeats": args.repeats,
           "dtype": args.dtype, "causal": args.causal}
    for L in map(int, args.lengths.split(",")):
        torch.manual_seed(0)
        shape = (args.batch, args.heads, L, args.head_dim)
        q, k, v = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
        row = {"L": L}
        for label, fn in (("sdpa", sdpa), ("qgfd", qgfd), ("knn", knn_only),
                          ("dense_pform", dense_pform)):
            dense_bytes = 4 * 4 * args.batch * args.heads * L * L  # p0, p, P, temporaries
            if label == "dense_pform" and dense_bytes > args.max_dense_bytes:
                row[label] = {"status": f"skipped: needs ~{dense_bytes / 2**30:.0f} GiB"}
                continue
            try:
                seconds, peak = measure(fn, (q, k, v, args.alpha, args.steps, args.k,
                                             args.causal), device,
                                        args.repeats if label != "dense_pform" else 2)
                row[label] = {"seconds": seconds, "peak_mb": peak, "status": "ok"}
            except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as error:
                row[label] = {"status": f"out of memory: {str(error).splitlines()[0][:80]}"}
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        s, g, p = row["sdpa"], row["qgfd"], row["dense_pform"]
        if s.get("seconds") and g.get("seconds"):
            row["qgfd_over_sdpa"] = g["seconds"] / s["seconds"]
        if p.get("seconds") and g.get("seconds"):
            row["pform_over_qgfd"] = p["seconds"] / g["seconds"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(args.out, name, env, rows)


def write(out, name, env, rows):
    lines = [f"# QGFDAttention vs SDPA vs dense p-form ({env['device']})", "",
             f"batch {env['batch']}, heads {env['heads']}, head dim {env['head_dim']}, "
             f"T={env['steps']}, k={env['k']}, alpha={env['alpha']}, "
             f"{env.get('dtype', 'float32')}{', causal' if env.get('causal') else ''}; forward "
             f"only, median of {env['repeats']} (p-form: 2); *kNN*: the transition alone; "
             f"torch {env['torch']}.", "",
             "| L | SDPA | QGFD | kNN | dense p-form | QGFD / SDPA | p-form / QGFD |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        cells = [cell(r.get(key, {"status": "not measured"}), 1000, "ms")
                 for key in ("sdpa", "qgfd", "knn", "dense_pform")]
        lines.append(f"| {r['L']} | {' | '.join(cells)} | {ratio(r, 'qgfd_over_sdpa')} | "
                     f"{ratio(r, 'pform_over_qgfd')} |")
    write_results(out, name, env, rows, lines)


if __name__ == "__main__":
    main()
