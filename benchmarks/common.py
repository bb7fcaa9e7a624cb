"""Helpers shared by the performance scripts: timing, memory, and result files."""
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from qgfd_pyg.bench.report import atomic_write  # noqa: E402
from qgfd_pyg.bench.train import PeakMemory  # noqa: E402


def timed(fn, device: torch.device, repeats: int, warmup: bool = True):
    """Median seconds of ``repeats`` calls (after one warm-up call), and the peak memory they
    add in MB (CUDA allocator peak, or the process's peak RSS on CPU, above what was held)."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    memory = PeakMemory(device)
    if warmup:
        fn()
        sync()
    base = memory.current_mb()
    memory.reset()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    peak = memory.read_mb()
    return statistics.median(times), None if peak is None or base is None else peak - base


def cell(entry, scale=1.0, unit="s", digits=4) -> str:
    """'1.234 s / 56 MB' for a measured entry, its status otherwise."""
    if entry.get("status") != "ok":
        return entry["status"]
    mem = "" if entry.get("peak_mb") is None else f" / {entry['peak_mb']:,.0f} MB"
    return f"{scale * entry['seconds']:.{digits}g} {unit}{mem}"


def ratio(row, key) -> str:
    return f"{row[key]:.2f}" if key in row else "n/a"


def write_results(out: str, name: str, environment, rows, markdown_lines) -> None:
    atomic_write(os.path.join(out, f"{name}.json"),
                 json.dumps({"environment": environment, "rows": rows}, indent=1) + "\n")
    atomic_write(os.path.join(out, f"{name}.md"), "\n".join(markdown_lines) + "\n")


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large tensor copy (read + write): the streaming bandwidth."""
    src = torch.empty(2**27, device=device)  # 512 MB
    dst = torch.empty_like(src)
    seconds, _ = timed(lambda: dst.copy_(src), device, 5)
    return 2 * src.numel() * 4 / seconds


def gather_bandwidth(device: torch.device, width: int = 64) -> float:
    """Bytes per second of gathering random ``width``-float rows from a 512 MB table (read the
    rows + write them out): what an SpMM over a random graph can at best get per row."""
    rows = 2**29 // (4 * width)
    table = torch.randn(rows, width, device=device)
    index = torch.randint(0, rows, (rows,), device=device)
    out = torch.empty_like(table)
    seconds, _ = timed(lambda: torch.index_select(table, 0, index, out=out), device, 5)
    return 2 * table.numel() * 4 / seconds
