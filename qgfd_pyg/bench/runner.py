"""The benchmark as a function: a :class:`RunConfig` in, the per-seed records out.

The CLI (``python -m qgfd_pyg.bench``) and the sweeps in ``benchmarks/`` both call
:func:`run_benchmark`; every model of a task is trained on the same splits, seeds, epoch budget
and early stopping, and the records are written to ``<out>/<name>.json`` / ``.md`` after every
run (``resume=True`` keeps the finished ones of an interrupted sweep).
"""
import datetime
import inspect
import json
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from .. import check_flow_backend, get_flow_backend, set_flow_backend
from . import measure
from .io import default_dir
from .report import ResultStore, table, table_columns
from .tasks import Task, load_task, task_entry
from .train import fit


@dataclass
class RunConfig:
    """One benchmark sweep: ``task`` x ``models`` x seeds ``0 .. seeds-1``.

    Args:
        task: a task name (``python -m qgfd_pyg.bench --list``).
        models: model names (default: all of the task's kind).
        seeds, epochs, patience: seeds, epoch budget and early-stopping patience per run
            (``None``: the task kind's budget, e.g. 500 / 100 for node and link tasks).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        threads: torch CPU threads (``None``: torch's default).
        root, out, name: data root, result folder (default: ``results`` in the working
            directory; the committed tables are written with ``out="benchmarks/results"``)
            and result file stem (default: the task).
        resume: keep the finished runs stored under the same options.
        overwrite: replace a result file that holds runs (without ``resume`` or
            ``overwrite`` such a file is a ValueError: a sweep never silently replaces runs
            it did not produce).
        progress: progress bars (drawn only when stderr is a terminal).
        dataset: ``Class[:name]`` for the task ``pyg``.
        qgfd: overrides of the options of the model ``qgfd`` (for node tasks the fields of
            :class:`~qgfd_pyg.bench.models.QGFDOptions`).
        extra: options of the task kind (e.g. ``{"quick": True}`` for knowledge graphs).
        command: how the sweep was started (recorded in the results).
        max_minutes: a wall-clock budget per run (training and validation): a run stops
            after the first epoch that ends past it, like early stopping (``None``: none).
        download: fetch a missing data set (PyG's and OGB's sets, and the few files the
            runner knows an address for) instead of failing with where to put it.
        lr: the learning rate of every model run (``None``: each model's own, see
            ``--list``); stored with the results.
        keep_freed_memory: on the CPU, glibc's malloc keeps freed tensors' memory for reuse
            (:func:`~qgfd_pyg.bench.measure.keep_freed_memory`: large tensors otherwise cost
            fresh pages on every allocation); recorded in the results' environment.
        flow_backend: how the query-conditioned flows' per-query steps run where numba's
            step does not (:func:`qgfd_pyg.set_flow_backend`: ``"torch"`` or ``"triton"``)
            during the sweep; recorded in the results' environment.
    """
    task: str
    models: Optional[Sequence[str]] = None
    seeds: int = 10
    epochs: Optional[int] = None
    patience: Optional[int] = None
    device: str = "cpu"
    threads: Optional[int] = None
    root: str = field(default_factory=lambda: default_dir("datasets"))
    out: str = "results"
    name: Optional[str] = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    dataset: Optional[str] = None
    qgfd: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)
    command: str = ""
    max_minutes: Optional[float] = None
    download: bool = False
    lr: Optional[float] = None
    keep_freed_memory: bool = True
    flow_backend: str = "torch"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep: ``kept`` finished runs are in ``path`` (each run is written when
    it ends), and the same command with ``--resume`` continues."""

    def __init__(self, kept: int, path: str):
        super().__init__(f"interrupted: {kept} finished run{'s' * (kept != 1)} kept in {path}; "
                         f"run the same command with --resume to continue")
        self.kept, self.path = kept, path


class Results(NamedTuple):
    """What a sweep produced: the summary rows, every per-seed record, and the files."""
    summary: List[Dict[str, Any]]
    runs: List[Dict[str, Any]]
    task: str
    metric: str
    json_path: str
    md_path: str
    columns: Sequence[Tuple[str, str]] = ()
    percent: bool = True


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


def _check(config: RunConfig) -> Tuple[List[str], int, int]:
    """The models to run and the epoch budget (the kind's where ``config`` leaves it open);
    a ValueError for bad options (before any data is loaded)."""
    kind = task_entry(config.task).kind
    known = kind.models
    budget = kind.default_budget(config.extra)
    epochs = budget[0] if config.epochs is None else config.epochs
    patience = budget[1] if config.patience is None else config.patience
    models = [m.strip() for m in (config.models or [m for m, s in known.items() if s.default])
              if m.strip()]
    unknown = [m for m in models if m not in known]
    if unknown or not models:
        raise ValueError(f"unknown models {unknown} for task {config.task}; choose from "
                         f"{', '.join(known)}")
    if min(config.seeds, epochs, patience) < 1:
        raise ValueError("seeds, epochs and patience must be positive")
    if config.max_minutes is not None and not config.max_minutes > 0:
        raise ValueError(f"max_minutes must be positive (got {config.max_minutes})")
    if config.lr is not None and not 0 < config.lr < float("inf"):
        raise ValueError(f"lr must be a positive number (got {config.lr})")
    if config.threads is not None and config.threads < 1:
        raise ValueError(f"threads must be positive (got {config.threads})")
    check_flow_backend(config.flow_backend)
    if _checks_without_data(kind):  # bad model options fail here, before any data is read
        for model in models:
            kind.check_options(model, {**known[model].options,
                                       **(config.qgfd if model == "qgfd" else {})})
    return models, epochs, patience


def _checks_without_data(kind: type) -> bool:
    """Whether ``kind.check_options`` is a classmethod (the package's kinds: it runs before
    the data is read); a kind from elsewhere may check on its loaded task instead."""
    return isinstance(inspect.getattr_static(kind, "check_options"), classmethod)


def model_options(task: Task, model: str, qgfd: Dict[str, Any]) -> Dict[str, Any]:
    """The options ``model`` is built with: its spec's, with the QGFD overrides for qgfd."""
    return {**task.models[model].options, **(qgfd if model == "qgfd" else {})}


def model_spec(task: Task, model: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """What a run of ``model`` was trained with (stored with the results, so that ``--resume``
    never keeps runs of a model whose settings have changed since)."""
    spec = task.models[model]
    return json.loads(json.dumps({"lr": spec.lr, "weight_decay": spec.weight_decay,
                                  "options": options}))


def run_benchmark(config: RunConfig) -> Results:
    """Trains every model of ``config`` on every seed under the shared protocol and returns
    the records (also written to ``<out>/<name>.json`` and ``.md`` after each run). Bad
    configurations and missing data are ValueErrors, raised before anything is written."""
    models, epochs, patience = _check(config)
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    task = load_task(config.task, config.root, config.dataset, config.extra, config.download)
    if not config.models:  # the defaults that apply to this data (MetaQA has no rule row)
        models = [m for m in models if m in task.models]
    missing = [m for m in models if m not in task.models]
    if missing:
        raise ValueError(f"models {missing} do not apply to {task.name}; choose from "
                         f"{', '.join(task.models)}")
    if config.lr is not None:  # this task's table, these models at the given rate
        task.models = {m: replace(spec, lr=config.lr) if m in models else spec
                       for m, spec in task.models.items()}
    options = {m: model_options(task, m, config.qgfd) for m in models}
    if not _checks_without_data(type(task)):
        for model in models:  # bad options fail here, before any run
            task.check_options(model, options[model])
    qgfd = model_options(task, "qgfd", config.qgfd) if "qgfd" in task.models else {}
    seeds = list(range(config.seeds))
    stored = {"task": task.name, "metric": task.metric, "models": models, "seeds": config.seeds,
              "seed_list": seeds, "epochs": epochs, "patience": patience,
              "device": device.type, "qgfd": qgfd, **task.stored_config(),
              "specs": {m: model_spec(task, m, options[m]) for m in models}}
    if config.max_minutes is not None:  # only when set: earlier result files still resume
        stored["max_minutes"] = config.max_minutes
    if config.keep_freed_memory and device.type == "cpu":
        measure.keep_freed_memory()
    kept = measure.FREED_MEMORY_KEPT  # process-wide: an earlier sweep may have set it
    environment = {"command": config.command or f"run_benchmark({asdict(config)})",
                   "torch": torch.__version__, "torch_geometric": _pyg_version(),
                   "device": str(device), "threads": torch.get_num_threads(),
                   "date": datetime.date.today().isoformat(),
                   "flow_backend": config.flow_backend,
                   "malloc": "glibc keeps freed memory for reuse (mallopt M_MMAP_MAX=0, "
                   "M_TRIM_THRESHOLD=INT_MAX)" if kept else "the system's default",
                   "memory_kind": "the CUDA allocator's peak" if device.type == "cuda"
                   else "the process's peak resident set (includes its ~baseline"
                   + (" and the memory freed during the run, kept for reuse)" if kept
                      else ")")}
    name = config.name or task.name.replace(":", "-")
    store = ResultStore(config.out, name, stored, config.resume, task, config.overwrite)
    skipped = sum(store.done(m, s) for m in models for s in seeds)
    if skipped:
        print(f"resuming: {skipped} finished runs kept from {store.json_path}", file=sys.stderr)
    bars = config.progress and sys.stderr.isatty()  # plain lines in logs and pipes
    try:
        with _flow_backend(config.flow_backend):
            for model, seed in [(m, s) for m in models for s in seeds if not store.done(m, s)]:
                record = fit(task, model, seed, options[model], epochs, patience, device, bars,
                             max_seconds=None if config.max_minutes is None
                             else 60.0 * config.max_minutes)
                store.add(record, environment)
                print(f"{model:>8} seed {seed}: test {record['test']:.4f}  "
                      f"val {record['val']:.4f}  epochs {record['epochs']}", file=sys.stderr)
    except KeyboardInterrupt:
        raise Interrupted(store.saved, store.json_path) from None  # what the file holds
    rows = store.save(environment, complete=True)
    return Results(rows, list(store.runs), task.name, task.metric, store.json_path,
                   store.md_path, table_columns(task), task.percent)


@contextmanager
def _flow_backend(name: str):
    """The flows' backend ``name`` while the block runs, the process's earlier one after."""
    before = get_flow_backend()
    set_flow_backend(name)
    try:
        yield
    finally:
        set_flow_backend(before)


def summary_text(config: RunConfig, results: Results) -> str:
    """The table the CLI prints."""
    return (f"\n{results.task} ({results.metric}), {config.seeds} seeds\n\n"
            f"{table(results.summary, results.columns, results.percent)}\n\n"
            f"written: {results.json_path}, {results.md_path}")


def _pyg_version() -> str:
    import torch_geometric

    return torch_geometric.__version__
