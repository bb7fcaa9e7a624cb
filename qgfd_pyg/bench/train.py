"""The one fit loop of the runner, shared by every task kind, and its helpers."""
import copy
import math
import random
import statistics
import time
import warnings
from typing import TYPE_CHECKING, Any, Dict, Optional

import numpy as np
import torch
from torch import Tensor
from torch.nn import Module

from .measure import PeakMemory
from .models import ModelSpec, count_parameters

if TYPE_CHECKING:
    from .tasks import Task


def as_model_input(x: Tensor, max_density: float = 0.1) -> Tensor:
    """Sparse features (bag-of-words: 1.3% non-zero on Cora) as a CSR tensor: every model's
    first layer, PyG's included, applies ``F.linear``, which multiplies CSR input several times
    faster with the same result; denser features stay dense."""
    if x.layout == torch.strided and x.dim() == 2 and x.numel() \
            and (x != 0).sum().item() <= max_density * x.numel():
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            return x.to_sparse_csr()
    return x


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: Module, spec: ModelSpec) -> Optional[torch.optim.Optimizer]:
    """Adam with the model's learning rate and weight decay (every kind, every model; a
    model with ``parameter_groups(weight_decay)`` sets its groups' own); ``None`` for a
    model with nothing to learn (a rule reference)."""
    if not any(True for _ in model.parameters()):
        return None
    groups = getattr(model, "parameter_groups", None)  # a model's own weight-decay groups
    params = groups(spec.weight_decay) if groups is not None else model.parameters()
    return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)


def stopping_rule(epochs: int, patience: int, metric: str, with_loss: bool) -> str:
    """:func:`fit`'s early-stopping rule in words, for the result files' protocol line:
    ``metric`` names the validation metric, ``with_loss`` whether the kind has a validation
    loss (then either improving resets the count)."""
    if with_loss:
        return (f"up to {epochs} epochs, early stopping after {patience} epochs in which "
                f"neither validation {metric} nor validation loss improved")
    return f"up to {epochs} epochs, early stopping after {patience} epochs without a better " \
           f"validation {metric}"


def fit(task: "Task", model_name: str, seed: int, options: Dict[str, Any], max_epochs: int,
        patience: int, device: torch.device, progress: bool = False,
        max_seconds: Optional[float] = None) -> Dict[str, Any]:
    """Trains ``model_name`` on ``task`` once; returns the record of the best validation epoch.

    The one fit loop of every task kind: after each training epoch the validation metrics are
    computed; training stops once neither the validation metric nor the validation loss (where
    the kind has one) has improved for ``patience`` epochs. The kept epoch is the one with the
    best validation metric (ties broken by the lower validation loss); the test metrics are
    computed once, with that epoch's parameters restored. With ``max_seconds``, training
    also stops after the first epoch that ends past that much wall-clock time (training and
    validation, counted from the start of the first epoch). A model with nothing to learn
    (the experiment's ``trains`` is false: a rule) takes one epoch.
    """
    seed_everything(seed)
    experiment = task.setup(model_name, seed, options, device)
    experiment.progress = progress
    model = experiment.model
    memory = PeakMemory(device)
    memory.reset()
    best: Dict[str, Any] = {"val": -float("inf"), "val_loss": float("inf")}
    best_state = None
    lowest_val_loss = float("inf")
    epoch_seconds, waited = [], 0
    bar = None
    started = time.perf_counter()
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=max_epochs, desc=f"{model_name} seed {seed}", leave=False,
                   mininterval=0.5, unit="ep")
    for epoch in range(1, max_epochs + 1):
        start = time.perf_counter()
        loss = experiment.train_epoch()
        if not math.isfinite(loss):
            raise FloatingPointError(f"{model_name} seed {seed}: loss is {loss} at epoch {epoch}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_seconds.append(time.perf_counter() - start)

        scores = experiment.evaluate("val")
        val, val_loss = scores["metric"], scores.get("loss", float("nan"))
        if val > best["val"] or (val == best["val"] and val_loss < best["val_loss"]):
            best = {"val": val, "val_loss": val_loss, "best_epoch": epoch, "train_loss": loss}
            best_state = copy.deepcopy(model.state_dict())
            waited = 0
        elif val_loss < lowest_val_loss:
            waited = 0
        else:
            waited += 1
        if not math.isnan(val_loss):
            lowest_val_loss = min(lowest_val_loss, val_loss)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(val=f"{best['val']:.3f}", refresh=False)
        if waited >= patience or not experiment.trains or (
                max_seconds is not None and time.perf_counter() - started >= max_seconds):
            break
    if bar is not None:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    test = experiment.evaluate("test")
    test.pop("loss", None)
    return {"model": model_name, "seed": seed, "val": best["val"], "val_loss": best["val_loss"],
            "best_epoch": best.get("best_epoch"), "test": test.pop("metric"), **test,
            "train_loss": best.get("train_loss"), "epochs": epoch,
            "sec_per_epoch": statistics.median(epoch_seconds),
            "peak_mem_mb": memory.read_mb(), "params": count_parameters(model)}
