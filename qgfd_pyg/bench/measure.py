"""Measuring: peak memory, timing, bandwidth bounds and result files. Shared by the runner and
the performance scripts in ``benchmarks/``."""
import json
import os
import statistics
import time
from typing import Optional

import torch

from .report import atomic_write


class PeakMemory:
    """Peak memory of one run: CUDA allocator peak, or the process's peak RSS on CPU (Linux
    resets it through /proc/self/clear_refs; it then includes the process's baseline)."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass

    def read_mb(self) -> Optional[float]:
        """Peak since the last reset."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return self._status("VmHWM:")

    def current_mb(self) -> Optional[float]:
        """What is held now (allocated on CUDA, resident on CPU)."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / 2**20
        return self._status("VmRSS:")

    @staticmethod
    def _status(field: str) -> Optional[float]:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(field):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None


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


def timed_interleaved(fns, device: torch.device, repeats: int):
    """Median seconds per call of each closure in ``fns`` (name -> closure), called in turn for
    ``repeats`` rounds after one warm-up round: a machine whose speed drifts during the
    measurement slows them all alike, so that their ratios hold."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    times = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


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
