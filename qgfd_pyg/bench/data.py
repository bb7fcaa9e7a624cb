"""Node-classification tasks: data through PyG's / OGB's own dataset classes, official splits.

Nothing is downloaded: raw files must already sit under ``--root`` (the small sets ship in
``datasets/``); a missing set is a :class:`MissingData` error that names the folder to fill.
"""
import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Tuple
from unittest import mock

import torch
from torch import Tensor
from torch_geometric.data import Data


@dataclass
class NodeTask:
    """A loaded node-classification task. ``split(seed)`` gives (train, val, test) indices."""
    name: str
    data: Data  # x, edge_index, y [N] (long)
    num_classes: int
    metric: str
    evaluate: Callable[[Tensor, Tensor], float]  # (y_true [n], y_pred [n]) -> metric
    masks: Tuple[Tensor, Tensor, Tensor]  # [N] or [N, S] boolean masks

    @property
    def num_splits(self) -> int:
        return 1 if self.masks[0].dim() == 1 else self.masks[0].size(1)

    def split(self, seed: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Index tensors of the split used with ``seed`` (datasets with several fixed splits
        rotate through them: split ``seed % num_splits``)."""
        column = seed % self.num_splits
        return tuple((m if m.dim() == 1 else m[:, column]).nonzero().view(-1) for m in self.masks)


class MissingData(ValueError):
    """A data set's files are not on disk (the runner downloads nothing)."""


@contextlib.contextmanager
def no_download() -> Iterator[None]:
    """Loads through PyG's / OGB's dataset classes without their downloads: a dataset whose raw
    files are missing raises :class:`MissingData` naming its raw folder, before the dataset
    class creates any folder for them."""
    from torch_geometric.data import Dataset
    from torch_geometric.data.dataset import files_exist

    def refuse(self) -> None:
        if files_exist(self.raw_paths):
            return
        missing = [os.path.basename(p) for p in self.raw_paths if not os.path.exists(p)]
        raise MissingData(f"{type(self).__name__} data not found: {self.raw_dir} lacks "
                          f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}; "
                          f"put the data set's raw files there (nothing is downloaded)")

    with mock.patch.object(Dataset, "_download", refuse):
        yield


def accuracy(y_true: Tensor, y_pred: Tensor) -> float:
    return float((y_true == y_pred).float().mean()) if y_true.numel() else float("nan")


TASKS: Dict[str, str] = {
    "cora": "Planetoid Cora, public split (140/500/1000), row-normalised features; "
            "ships in datasets/Cora",
    "citeseer": "Planetoid CiteSeer, public split (120/500/1000), row-normalised features; "
                "ships in datasets/CiteSeer",
    "pubmed": "Planetoid PubMed, public split (60/500/1000), row-normalised features; "
              "downloaded into --root",
    "ogbn-arxiv": "OGB ogbn-arxiv, time split, OGB Evaluator (accuracy); downloaded into --root",
    "pyg": ("any torch_geometric.datasets class that provides train/val/test masks: "
            "--dataset Class[:name] (e.g. WebKB:Texas, WikipediaNetwork:chameleon, "
            "Planetoid:Cora); with S fixed splits, seed s uses split s % S"),
}


def _planetoid(root: str, name: str) -> NodeTask:
    """The standard Planetoid protocol: public split, row-normalised bag-of-words features."""
    import torch_geometric.transforms as T
    from torch_geometric.datasets import Planetoid

    dataset = Planetoid(root, name, split="public", transform=T.NormalizeFeatures())
    data = dataset[0]
    return NodeTask(name.lower(), data, dataset.num_classes, "accuracy", accuracy,
                    (data.train_mask, data.val_mask, data.test_mask))


@contextlib.contextmanager
def _full_torch_load():
    """OGB 1.3.6 reads its own processed file with a bare ``torch.load``, which torch >= 2.6
    restricts to weights; the file is one this process wrote, so allow full unpickling."""
    original = torch.load

    def load(*args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return original(*args, **kwargs)

    with mock.patch.object(torch, "load", load):
        yield


def _ogb(root: str, name: str) -> NodeTask:
    from ogb.nodeproppred import Evaluator, PygNodePropPredDataset
    from torch_geometric.utils import to_undirected

    with _full_torch_load():
        dataset = PygNodePropPredDataset(name, root=root)
        split = dataset.get_idx_split()
    data = dataset[0]
    n = data.num_nodes
    data.edge_index = to_undirected(data.edge_index, num_nodes=n)  # as OGB's arxiv baselines
    data.x, data.y = data.x.float(), data.y.view(-1)
    masks = []
    for key in ("train", "valid", "test"):
        mask = torch.zeros(n, dtype=torch.bool)
        mask[split[key]] = True
        masks.append(mask)
    evaluator = Evaluator(name)

    def evaluate(y_true: Tensor, y_pred: Tensor) -> float:
        result = evaluator.eval({"y_true": y_true.view(-1, 1), "y_pred": y_pred.view(-1, 1)})
        return float(result[evaluator.eval_metric])

    return NodeTask(name, data, dataset.num_classes, f"{evaluator.eval_metric} (OGB Evaluator)",
                    evaluate, tuple(masks))


def _pyg(root: str, spec: Optional[str]) -> NodeTask:
    import torch_geometric.datasets as datasets

    if not spec:
        raise ValueError("task 'pyg' needs --dataset Class[:name], e.g. --dataset WebKB:Texas")
    class_name, _, name = spec.partition(":")
    cls = getattr(datasets, class_name, None)
    if cls is None or not isinstance(cls, type):
        raise ValueError(f"torch_geometric.datasets has no dataset class {class_name!r}")
    dataset = cls(root, name) if name else cls(os.path.join(root, class_name))
    data = dataset[0]
    masks = [getattr(data, key, None) for key in ("train_mask", "val_mask", "test_mask")]
    if any(mask is None for mask in masks):
        raise ValueError(f"{spec} provides no train/val/test masks; the benchmark only uses "
                         f"splits that a dataset ships with")
    if masks[1].dim() != masks[0].dim():  # e.g. one val mask shared by several train masks
        masks = [m if m.dim() == 2 else m.view(-1, 1).expand_as(masks[0]) for m in masks]
    return NodeTask(spec, data, dataset.num_classes, "accuracy", accuracy, tuple(masks))


def load_task(task: str, root: str, dataset: Optional[str] = None) -> NodeTask:
    """Loads ``task`` from ``root`` (raw files already there are used as they are; missing
    ones are a :class:`MissingData` error)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    with no_download():
        if task in ("cora", "citeseer", "pubmed"):
            names = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}
            return _planetoid(root, names[task])
        if task == "ogbn-arxiv":
            return _ogb(root, task)
        return _pyg(root, dataset)
