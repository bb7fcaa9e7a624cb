"""The benchmark as a function: a :class:`RunConfig` in, the per-seed records out.

The CLI (``python -m qgfd_pyg.bench``) and the sweeps in ``benchmarks/`` both call
:func:`run_benchmark`; every model of a task is trained on the same splits, seeds, epoch budget
and early stopping, and the records are written to ``<out>/<name>.json`` / ``.md`` after every
run (``resume=True`` keeps the finished ones of an interrupted sweep).
"""
import datetime
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import torch

from .data import load_task
from .models import MODELS, QGFDOptions
from .report import ResultStore, table
from .train import train_one

_REPO = Path(__file__).resolve().parents[2]


def default_dir(name: str) -> str:
    """``datasets/`` / ``benchmarks/results`` of the source checkout, else of the cwd."""
    return str(_REPO / name) if (_REPO / "datasets").is_dir() else os.path.join(os.getcwd(), name)


@dataclass
class RunConfig:
    """One benchmark sweep: ``task`` x ``models`` x seeds ``0 .. seeds-1``.

    Args:
        task: a task name (``python -m qgfd_pyg.bench --list``).
        models: model names (default: all).
        seeds, epochs, patience: seeds, epoch budget and early-stopping patience per run.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        threads: torch CPU threads (``None``: torch's default).
        root, out, name: data root, result folder and result file stem (default: the task).
        resume: keep the finished runs stored under the same options.
        progress: progress bars (drawn only when stderr is a terminal).
        dataset: ``Class[:name]`` for the task ``pyg``.
        qgfd: overrides of :class:`QGFDOptions` for the model ``qgfd``.
        command: how the sweep was started (recorded in the results).
    """
    task: str
    models: Sequence[str] = tuple(MODELS)
    seeds: int = 10
    epochs: int = 500
    patience: int = 100
    device: str = "cpu"
    threads: Optional[int] = None
    root: str = field(default_factory=lambda: default_dir("datasets"))
    out: str = field(default_factory=lambda: default_dir(os.path.join("benchmarks", "results")))
    name: Optional[str] = None
    resume: bool = False
    progress: bool = True
    dataset: Optional[str] = None
    qgfd: Dict[str, Any] = field(default_factory=dict)
    command: str = ""


class Results(NamedTuple):
    """What a sweep produced: the summary rows, every per-seed record, and the files."""
    summary: List[Dict[str, Any]]
    runs: List[Dict[str, Any]]
    task: str
    metric: str
    json_path: str
    md_path: str


def resolve_device(name: str) -> torch.device:
    """``name`` as a device this machine has; a ValueError that says why otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but this machine has no usable CUDA "
                             f"device (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} does not exist: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"device {name!r} is not supported (use cpu, cuda, cuda:N or auto)")
    return device


def _check(config: RunConfig) -> List[str]:
    models = [m.strip() for m in config.models if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    if min(config.seeds, config.epochs, config.patience) < 1:
        raise ValueError("seeds, epochs and patience must be positive")
    if config.threads is not None and config.threads < 1:
        raise ValueError(f"threads must be positive (got {config.threads})")
    if "qgfd" in models:  # bad QGFD options fail here, before any run
        MODELS["qgfd"].build(4, 2, **QGFDOptions.merged(config.qgfd))
    return models


def run_benchmark(config: RunConfig) -> Results:
    """Trains every model of ``config`` on every seed under the shared protocol and returns
    the records (also written to ``<out>/<name>.json`` and ``.md`` after each run). Bad
    configurations and missing data are ValueErrors, raised before anything is written."""
    models = _check(config)
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    qgfd = QGFDOptions.merged(config.qgfd)
    task = load_task(config.task, config.root, config.dataset)
    seeds = list(range(config.seeds))
    stored = {"task": task.name, "metric": task.metric, "models": models, "seeds": config.seeds,
              "seed_list": seeds, "epochs": config.epochs, "patience": config.patience,
              "device": device.type, "qgfd": qgfd}
    environment = {"command": config.command or f"run_benchmark({asdict(config)})",
                   "torch": torch.__version__, "torch_geometric": _pyg_version(),
                   "device": str(device), "threads": torch.get_num_threads(),
                   "date": datetime.date.today().isoformat(),
                   "memory_kind": "the CUDA allocator's peak" if device.type == "cuda"
                   else "the process's peak resident set (includes its ~baseline)"}
    name = config.name or task.name.replace(":", "-")
    store = ResultStore(config.out, name, stored, config.resume)
    skipped = sum(store.done(m, s) for m in models for s in seeds)
    if skipped:
        print(f"resuming: {skipped} finished runs kept from {store.json_path}", file=sys.stderr)
    bars = config.progress and sys.stderr.isatty()  # plain lines in logs and pipes
    for model in models:
        for seed in seeds:
            if store.done(model, seed):
                continue
            record = train_one(task, model, seed, qgfd if model == "qgfd" else {},
                               config.epochs, config.patience, device, bars)
            store.add(record, environment)
            print(f"{model:>6} seed {seed}: test {100 * record['test']:.1f}  "
                  f"val {100 * record['val']:.1f}  epochs {record['epochs']}", file=sys.stderr)
    rows = store.save(environment, complete=True)
    return Results(rows, list(store.runs), task.name, task.metric, store.json_path,
                   store.md_path)


def summary_text(config: RunConfig, results: Results) -> str:
    """The table the CLI prints."""
    return (f"\n{results.task} ({results.metric}), {config.seeds} seeds\n\n"
            f"{table(results.summary, 'metric')}\n\n"
            f"written: {results.json_path}, {results.md_path}")


def _pyg_version() -> str:
    import torch_geometric

    return torch_geometric.__version__
