"""Measuring: peak memory, timing, bandwidth bounds and result files. Shared by the runner and
the performance scripts in ``benchmarks/``."""
import ctypes
import json
import os
import platform
import statistics
import time
from typing import Optional

import torch

from .io import atomic_write


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt's parameters (glibc's malloc.h)
FREED_MEMORY_KEPT = False  # whether keep_freed_memory applied in this process (it stays on)


def _glibc() -> Optional[ctypes.CDLL]:
    """The C library where it is glibc (Linux), else ``None``."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Makes glibc's malloc keep the memory of freed tensors for the next ones, for the rest
    of the process; returns whether it applied (glibc only).

    glibc serves every allocation above 32 MB with a fresh ``mmap`` and returns it to the
    system when freed, so each large CPU tensor (a flow's ``[B, N]`` states: 84-168 MB at
    WN18RR's size) costs its page faults, each page zeroed by the kernel, on every
    allocation: on WN18RR's training batches most of the time, and two processes side by side
    fault in turn. With ``mmap`` off and no trimming the freed memory stays in the heap
    (``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, INT_MAX)``; the same as the
    environment variables ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``). The
    process's resident memory then includes what it keeps; :func:`release_freed_memory`
    gives it back."""
    global FREED_MEMORY_KEPT
    libc = _glibc()
    if libc is not None and libc.mallopt(M_MMAP_MAX, 0) \
            and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1):
        FREED_MEMORY_KEPT = True
    return FREED_MEMORY_KEPT


def release_freed_memory() -> None:
    """Returns the free memory glibc's malloc holds to the system (``malloc_trim(0)``)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class PeakMemory:
    """Peak memory of one run: CUDA allocator peak, or the process's peak RSS on CPU (Linux
    resets it through /proc/self/clear_refs, after giving back the free memory malloc holds;
    it then includes the process's baseline, and the memory freed during the run that
    :func:`keep_freed_memory` keeps)."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            release_freed_memory()  # what an earlier run freed does not count in this one
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
