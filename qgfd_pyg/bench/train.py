"""One training run under the shared protocol, and the metrics it reports."""
import random
import statistics
import time
import warnings
from typing import Any, Dict

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .data import NodeTask
from .measure import PeakMemory
from .models import MODELS, build_model, count_parameters


def expected_calibration_error(probs: Tensor, y: Tensor, bins: int = 15) -> float:
    """ECE with equal-width confidence bins: sum_b |acc_b - conf_b| * n_b / n."""
    if y.numel() == 0:
        return float("nan")
    confidence, prediction = probs.max(dim=1)
    correct = (prediction == y).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=probs.dtype, device=probs.device)
    which = torch.bucketize(confidence, edges[1:-1], right=True)  # bin b = (e_b, e_{b+1}]
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            gap = correct[members].mean() - confidence[members].double().mean()
            ece += float(gap.abs()) * int(members.sum()) / y.numel()
    return ece


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


def train_one(task: NodeTask, model_name: str, seed: int, overrides: Dict[str, Any],
              max_epochs: int, patience: int, device: torch.device,
              progress: bool = False) -> Dict[str, Any]:
    """Trains ``model_name`` once; returns the record of the best validation epoch.

    Protocol (the same for every model; GAT's): Adam, full-batch training, evaluation after
    each epoch, early stopping once neither the validation metric nor the validation loss has
    improved for ``patience`` epochs. The kept epoch is the one with the best validation metric
    (ties broken by lower validation loss); its test metric is reported.
    """
    spec = MODELS[model_name]
    seed_everything(seed)
    train_idx, val_idx, test_idx = (idx.to(device) for idx in task.split(seed))
    data = task.data.to(device)
    x, edge_index, y = as_model_input(data.x), data.edge_index, data.y
    model = build_model(model_name, x.size(1), task.num_classes, overrides).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    memory = PeakMemory(device)
    memory.reset()

    best: Dict[str, Any] = {"val": -float("inf"), "val_loss": float("inf")}
    lowest_val_loss = float("inf")
    epoch_seconds, waited = [], 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=max_epochs, desc=f"{model_name} seed {seed}", leave=False,
                   mininterval=0.5, unit="ep")
    for epoch in range(1, max_epochs + 1):
        start = time.perf_counter()
        model.train()
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x, edge_index)[train_idx], y[train_idx])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{model_name} seed {seed}: loss is {loss.item()} "
                                     f"at epoch {epoch}")
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_seconds.append(time.perf_counter() - start)

        model.eval()
        with torch.no_grad():
            out = model(x, edge_index)
        pred = out.argmax(dim=1)
        val = task.evaluate(y[val_idx], pred[val_idx])
        val_loss = float(F.cross_entropy(out[val_idx], y[val_idx]))
        if val > best["val"] or (val == best["val"] and val_loss < best["val_loss"]):
            probs = out[test_idx].softmax(dim=1)
            best = {"val": val, "val_loss": val_loss, "best_epoch": epoch,
                     "test": task.evaluate(y[test_idx], pred[test_idx]),
                     "ece": expected_calibration_error(probs, y[test_idx]),
                     "train_loss": float(loss.detach())}
            waited = 0
        elif val_loss < lowest_val_loss:
            waited = 0
        else:
            waited += 1
        lowest_val_loss = min(lowest_val_loss, val_loss)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(val=f"{best['val']:.3f}", refresh=False)
        if waited >= patience:
            break
    if bar is not None:
        bar.close()
    return {"model": model_name, "seed": seed, **best, "epochs": epoch,
            "sec_per_epoch": statistics.median(epoch_seconds),
            "peak_mem_mb": memory.read_mb(), "params": count_parameters(model)}
