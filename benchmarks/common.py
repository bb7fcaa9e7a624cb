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
