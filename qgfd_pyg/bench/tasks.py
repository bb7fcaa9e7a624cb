"""The task registry: what a task kind brings to the shared runner.

A task kind (node classification, link prediction, knowledge-graph completion) is a
:class:`Task` subclass: its data, its model table, how one model is trained for one epoch and
evaluated (:class:`Experiment`), and the metrics its table shows. Everything else (the CLI,
seeds, the fit loop with early stopping, progress bars, the result files, ``--resume``, the
summary table and ``--list``) is shared and lives in :mod:`~qgfd_pyg.bench.runner`,
:mod:`~qgfd_pyg.bench.train` and :mod:`~qgfd_pyg.bench.report`.

A new task is a loader registered with :func:`register`; a new task kind is data plus a small
:class:`Task` subclass.
"""
import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Type

import torch
from torch import Tensor
from torch.nn import Module

from .models import ModelSpec, QGFDOptions


class Experiment(ABC):
    """One model on one seed of a task: the trainable ``model``, a training epoch, evaluation.

    The shared fit loop (:func:`qgfd_pyg.bench.train.fit`) calls :meth:`train_epoch` and
    :meth:`evaluate` ``("val")`` once per epoch, keeps the parameters of the best validation
    epoch and finally reports :meth:`evaluate` ``("test")`` with them. ``progress`` is set
    when progress bars are drawn (for kinds whose epochs are long enough to need their own).
    """
    model: Module
    progress: bool = False
    trains: bool = True  # False: nothing to learn (a rule), the fit loop stops after one epoch

    @abstractmethod
    def train_epoch(self) -> float:
        """One epoch of training; returns the training loss."""

    @abstractmethod
    def evaluate(self, split: str) -> Dict[str, float]:
        """Metrics on ``split`` (``"val"`` or ``"test"``): ``"metric"`` (the task's main
        metric, higher is better), ``"loss"`` where the kind has a validation loss, and the
        further columns of :attr:`Task.columns`."""


class FullBatchExperiment(Experiment):
    """One optimiser step on the whole graph per epoch (node and link tasks)."""
    optimizer: torch.optim.Optimizer

    @abstractmethod
    def training_loss(self) -> Tensor:
        """The loss of one training step, with the model in training mode."""

    def train_epoch(self) -> float:
        self.model.train()
        self.optimizer.zero_grad()
        loss = self.training_loss()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


class MiniBatchExperiment(Experiment):
    """Several optimiser steps per epoch, one per batch of training items (KG queries,
    questions); a batch bar is drawn when ``progress`` is set."""
    optimizer: Optional[torch.optim.Optimizer]  # None: nothing to learn (a rule reference)

    @property
    def trains(self) -> bool:  # type: ignore[override]
        return self.optimizer is not None

    @abstractmethod
    def train_batches(self) -> List[Tensor]:
        """This epoch's batches: index tensors into the training items."""

    @abstractmethod
    def batch_loss(self, idx: Tensor) -> Tensor:
        """The mean loss of one batch, with the model in training mode. A kind whose model
        sets ``micro_batch`` takes ``hidden=``: the whole batch's items, whose own facts the
        part ``idx``'s flow must not see either."""

    def train_epoch(self) -> float:
        if not self.trains:
            return 0.0
        self.model.train()
        batches = self.train_batches()
        if self.progress:
            from tqdm import tqdm
            batches = tqdm(batches, desc="epoch", leave=False, mininterval=0.5, unit="batch")
        total, count = 0.0, 0
        part = getattr(self.model, "micro_batch", None)  # gradient in parts: memory only
        for idx in batches:
            self.optimizer.zero_grad()
            if part is None or idx.numel() <= part:
                loss = self.batch_loss(idx)
                loss.backward()
                loss = float(loss.detach())
            else:  # the batch's mean loss = the parts' mean losses weighed by their sizes
                loss = 0.0
                for chunk in idx.split(part):
                    share = self.batch_loss(chunk, hidden=idx) * (chunk.numel() / idx.numel())
                    share.backward()
                    loss += float(share.detach())
            self.optimizer.step()
            total, count = total + loss * idx.numel(), count + idx.numel()
        return total / max(count, 1)


@dataclass(frozen=True)
class TaskOption:
    """A command-line option that a task kind adds to the runner: ``--flag VALUE`` (or a
    switch when ``type`` is ``None``); its value reaches the kind's loaders in ``extra``
    under ``dest`` (the flag without dashes, ``-`` as ``_``)."""
    flag: str
    help: str
    type: Optional[Callable[[str], Any]] = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


QUICK = TaskOption("--quick", "a short budget for tests and smoke runs")


class Task(ABC):
    """A loaded task of one kind.

    Attributes:
        name: the task's name (the result files' stem).
        metric: what ``"metric"`` (the ``test`` / ``val`` columns) measures.
        kind: the kind's name (``"node"``, ``"link"``, ``"kg"``).
        models: the kind's model table (name -> :class:`ModelSpec`); ``"qgfd"`` takes the
            runner's QGFD options.
        columns: further record keys shown in the table, with their headers.
        percent: whether the table shows the metrics as percentages.
        budget: the kind's default (epochs, early-stopping patience).
        quick_budget: (epochs, patience) under ``--quick`` (``None``: the kind has no
            ``--quick``).
        options: the command-line options the kind adds (:class:`TaskOption`).
        val_loss: whether the kind's validation metrics include a loss (the fit loop then
            also counts an improving loss as progress).
    """
    kind: ClassVar[str]
    models: ClassVar[Dict[str, ModelSpec]]
    columns: ClassVar[Sequence[Tuple[str, str]]] = ()
    percent: ClassVar[bool] = True
    budget: ClassVar[Tuple[int, int]] = (500, 100)
    quick_budget: ClassVar[Optional[Tuple[int, int]]] = None
    options: ClassVar[Sequence[TaskOption]] = ()
    val_loss: ClassVar[bool] = False
    name: str
    metric: str

    @abstractmethod
    def setup(self, model: str, seed: int, options: Dict[str, Any],
              device: torch.device) -> Experiment:
        """Builds ``model`` with ``options`` (its spec's options with the user's overrides
        applied) for ``seed``'s split, on ``device``."""

    @classmethod
    def check_options(cls, model: str, options: Dict[str, Any]) -> None:
        """Raises a ValueError for options ``model`` cannot be built with (called before any
        data is loaded, so that a typo fails before anything is read, trained or written). By
        default the model is built once on a tiny input; the QGFD options are checked by name
        first."""
        if model == "qgfd":
            QGFDOptions.merged(options)
        cls.models[model].build(4, 2, **options)

    @classmethod
    def check_known_options(cls, model: str, options: Dict[str, Any]) -> None:
        """:meth:`check_options` for kinds whose models take only their spec's options: any
        other name is a ValueError; then the model is built once on a tiny graph."""
        known = set(cls.models[model].options)
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"options {unknown} do not apply to the {cls.kind} model "
                             f"{model!r} (it takes {', '.join(sorted(known))})")
        cls.models[model].build(3, 2, **options)

    @classmethod
    def default_budget(cls, extra: Dict[str, Any]) -> Tuple[int, int]:
        """(epochs, patience) where the user sets none; ``extra`` are the kind's options."""
        if extra.get("quick") and cls.quick_budget is not None:
            return cls.quick_budget
        return cls.budget

    def stored_config(self) -> Dict[str, Any]:
        """What, beyond the shared options, a resumed sweep must share with the stored one."""
        return {}

    def protocol(self, config: Dict[str, Any], rule: str) -> str:
        """One Markdown line on the training protocol (for the result file): how the kind
        trains (:meth:`training`), the fit loop's stopping ``rule`` (in words, as the runner
        gives it), and the kind's notes."""
        notes = self.protocol_notes(config)
        return f"{self.training(config)}, {rule}" + (f"; {notes}" if notes else "")

    def training(self, config: Dict[str, Any]) -> str:
        """How a model is trained, for the protocol line (before the stopping rule)."""
        return "Adam"

    def selection(self) -> str:
        """The validation metric the fit loop selects the epoch by, in words."""
        return self.metric

    def protocol_notes(self, config: Dict[str, Any]) -> str:
        """What the protocol line adds after the stopping rule (splits, test set)."""
        return ""


@dataclass
class TaskEntry:
    kind: Type[Task]
    description: str
    load: Callable[[str, Optional[str], Dict[str, Any]], Task]  # (root, dataset, extra)


TASKS: Dict[str, TaskEntry] = {}


def register(name: str, kind: Type[Task], description: str):
    """Decorator: registers ``load(root, dataset, extra) -> Task`` as the loader of ``name``."""
    def wrap(load):
        TASKS[name] = TaskEntry(kind, description, load)
        return load
    return wrap


def task_names() -> List[str]:
    _import_kinds()
    return list(TASKS)


def task_entry(name: str) -> TaskEntry:
    """The registered entry of ``name`` (a ValueError naming the known tasks otherwise)."""
    _import_kinds()
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def load_task(name: str, root: str, dataset: Optional[str] = None,
              extra: Optional[Dict[str, Any]] = None, download: bool = False) -> Task:
    """Loads the registered task ``name`` from ``root``. Without ``download`` (the default)
    nothing is downloaded and missing raw files are a
    :class:`~qgfd_pyg.bench.data.MissingData` error; with it, sets that can be fetched are."""
    from .data import downloads

    entry = task_entry(name)
    with downloads(download):
        return entry.load(root, dataset, extra or {})


def kinds() -> List[Type[Task]]:
    """The task kinds (each once, in registration order)."""
    _import_kinds()
    return list(dict.fromkeys(entry.kind for entry in TASKS.values()))


def task_options() -> List[TaskOption]:
    """Every option the kinds add to the command line, each flag once."""
    found: Dict[str, TaskOption] = {}
    for kind in kinds():
        for option in kind.options:
            if found.setdefault(option.flag, option) != option:
                raise ValueError(f"two task kinds declare {option.flag} differently")
    return list(found.values())


_INFRASTRUCTURE = {"catalog", "cli", "data", "measure", "metrics", "models", "relational", "report",
                   "runner", "synthetic", "tasks", "train"}


@functools.lru_cache(maxsize=None)  # once per process
def _import_kinds() -> None:
    """Imports every module of this package that is not part of the runner's machinery (each
    kind registers its tasks on import) and the kinds other packages declare under the entry
    point group ``qgfd_pyg.bench.kinds``: a new kind needs no change to a shared file."""
    import importlib
    import importlib.metadata
    import pkgutil

    package = __name__.rpartition(".")[0]
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if module.name not in _INFRASTRUCTURE and not module.name.startswith("_"):
            importlib.import_module(f"{package}.{module.name}")
    for entry in importlib.metadata.entry_points(group="qgfd_pyg.bench.kinds"):
        entry.load()
