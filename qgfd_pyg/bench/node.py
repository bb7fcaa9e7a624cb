"""Node classification: data through PyG's / OGB's own dataset classes, official splits."""
import os
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data

from .data import fetch_file, missing_data, open_dataset, require_ogb, split_dict
from .metrics import accuracy, expected_calibration_error, roc_auc
from .models import MODELS
from .tasks import FullBatchExperiment, Task, register
from .train import as_model_input, make_optimizer


class NodeTask(Task):
    """A loaded node-classification task. ``split(seed)`` gives (train, val, test) indices.

    Args:
        name: the task's name.
        data: ``x``, ``edge_index`` and ``y`` ``[N]`` (long).
        num_classes: number of classes.
        metric: what ``evaluate`` measures.
        evaluate: ``(y_true [n], y_pred [n]) -> float``.
        masks: train / val / test boolean masks, ``[N]`` or ``[N, S]`` for ``S`` fixed splits.

    A two-class task measured by accuracy is scored by ROC-AUC instead (of the positive class
    ``1``'s probability), as its papers score it (Platonov et al.'s binary heterophilous sets):
    on an imbalanced set, accuracy is the majority rate for any model that predicts the larger
    class. Runs are then chosen on validation ROC-AUC; test accuracy stays as a column.
    """
    kind = "node"
    models = MODELS
    columns = (("ece", "ECE"),)
    val_loss = True

    def __init__(self, name: str, data: Data, num_classes: int, metric: str,
                 evaluate: Callable[[Tensor, Tensor], float], masks: Tuple[Tensor, ...]):
        self.name, self.data, self.num_classes = name, data, num_classes
        self.metric, self.evaluate, self.masks = metric, evaluate, masks
        self.binary = num_classes == 2 and metric == "accuracy"
        if self.binary:
            self.metric = "ROC-AUC"
            self.columns = (("accuracy", "test accuracy"), *type(self).columns)

    @property
    def num_splits(self) -> int:
        return 1 if self.masks[0].dim() == 1 else self.masks[0].size(1)

    def split(self, seed: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Index tensors of the split used with ``seed`` (datasets with several fixed splits
        rotate through them: split ``seed % num_splits``)."""
        column = seed % self.num_splits
        return tuple((m if m.dim() == 1 else m[:, column]).nonzero().view(-1) for m in self.masks)

    def setup(self, model: str, seed: int, options: Dict[str, Any],
              device: torch.device) -> "NodeExperiment":
        return NodeExperiment(self, model, seed, options, device)

    def training(self, config: Dict[str, Any]) -> str:
        return "Adam, full batch"

    def protocol_notes(self, config: Dict[str, Any]) -> str:
        return "ECE over 15 equal-width confidence bins"


class NodeExperiment(FullBatchExperiment):
    """Full-batch training with cross-entropy on the training nodes (GAT's protocol)."""

    def __init__(self, task: NodeTask, model: str, seed: int, options: Dict[str, Any],
                 device: torch.device):
        self.task = task
        self.idx = dict(zip(("train", "val", "test"), (i.to(device) for i in task.split(seed)),
                            strict=True))
        data = task.data.to(device)
        self.x, self.edge_index, self.y = as_model_input(data.x), data.edge_index, data.y
        spec = task.models[model]
        self.model = spec.build(self.x.size(1), task.num_classes, **options).to(device)
        self.optimizer = make_optimizer(self.model, spec)

    def training_loss(self) -> Tensor:
        idx = self.idx["train"]
        return F.cross_entropy(self.model(self.x, self.edge_index)[idx], self.y[idx])

    @torch.no_grad()
    def evaluate(self, split: str) -> Dict[str, float]:
        self.model.eval()
        idx = self.idx[split]
        out = self.model(self.x, self.edge_index)[idx]
        y = self.y[idx]
        if self.task.binary:  # ROC-AUC of class 1's probability; accuracy as a column
            result = {"metric": roc_auc(y, out.softmax(dim=1)[:, 1])}
            if split == "test":
                result["accuracy"] = accuracy(y, out.argmax(dim=1))
        else:
            result = {"metric": self.task.evaluate(y, out.argmax(dim=1))}
        result["loss"] = float(F.cross_entropy(out, y))
        if split == "test":
            result["ece"] = expected_calibration_error(out.softmax(dim=1), y)
        return result


_PLANETOID = {"cora": ("Cora", "140/500/1000", "ships in datasets/Cora"),
              "citeseer": ("CiteSeer", "120/500/1000", "ships in datasets/CiteSeer"),
              "pubmed": ("PubMed", "60/500/1000", "raw files go to --root/PubMed/raw")}


def _register_planetoid(task: str) -> None:
    name, sizes, where = _PLANETOID[task]
    register(task, NodeTask, f"Planetoid {name}, public split ({sizes}), row-normalised "
                           f"features; {where}")(lambda root, dataset, extra: planetoid(root, name))


for _task in _PLANETOID:
    _register_planetoid(_task)


def planetoid(root: str, name: str) -> NodeTask:
    """The standard Planetoid protocol: public split, row-normalised bag-of-words features."""
    import torch_geometric.transforms as T
    from torch_geometric.datasets import Planetoid

    dataset = open_dataset(Planetoid, root, name=name, split="public",
                           transform=T.NormalizeFeatures())
    data = dataset[0]
    return NodeTask(name.lower(), data, dataset.num_classes, "accuracy", accuracy,
                    (data.train_mask, data.val_mask, data.test_mask))


_WIKI = {"chameleon": "2,277 pages, 5 classes", "squirrel": "5,201 pages, 5 classes"}
_WIKI_NOTE = ("heterophilous; edges made undirected, raw binary features; "
              "the 10 fixed 60/20/20 splits (seed s uses split s % 10)")


def _register_wiki(task: str) -> None:
    register(task, NodeTask, f"Wikipedia {task} ({_WIKI[task]}), geom-gcn version read by "
                             f"PyG's WikipediaNetwork; {_WIKI_NOTE}; ships in "
                             f"datasets/wiki/{task}")(
        lambda root, dataset, extra: wikipedia(os.path.join(root, "wiki"), task))
    register(f"{task}-filtered", NodeTask,
             f"Wikipedia {task} without duplicate nodes (Platonov et al., ICLR 2023) and their "
             f"own splits; {_WIKI_NOTE}; ships in datasets/heterophilous/{task}_filtered.npz")(
        lambda root, dataset, extra: platonov_npz(
            os.path.join(root, "heterophilous", f"{task}_filtered.npz"), f"{task}-filtered",
            f"{PLATONOV_URL}/{task}_filtered.npz"))


for _task in _WIKI:
    _register_wiki(_task)


def wikipedia(root: str, name: str) -> NodeTask:
    """Chameleon / Squirrel through PyG's ``WikipediaNetwork(geom_gcn_preprocess=True)`` (its
    10 fixed splits), with the edges made undirected as in Platonov et al.'s evaluation."""
    import torch_geometric.transforms as T
    from torch_geometric.datasets import WikipediaNetwork

    dataset = open_dataset(WikipediaNetwork, root, name=name, geom_gcn_preprocess=True,
                           transform=T.ToUndirected())
    data = dataset[0]
    return NodeTask(name, data, dataset.num_classes, "accuracy", accuracy,
                    (data.train_mask, data.val_mask, data.test_mask))


PLATONOV_URL = "https://github.com/yandex-research/heterophilous-graphs/raw/main/data"


def platonov_npz(path: str, name: str, url: Optional[str] = None) -> NodeTask:
    """A graph in the numpy layout of Platonov et al.'s heterophilous benchmark (the files of
    PyG's ``HeterophilousGraphDataset``, which names only its own five sets): arrays
    ``node_features`` ``[N, F]``, ``node_labels`` ``[N]``, ``edges`` ``[E, 2]`` (made
    undirected) and ``train_masks`` / ``val_masks`` / ``test_masks`` ``[S, N]``. With
    ``--download`` a missing file is fetched from ``url``."""
    import numpy as np
    from torch_geometric.utils import to_undirected

    if url is not None:
        fetch_file(url, path)  # with --download only
    if not os.path.exists(path):
        raise missing_data(f"{name} data not found: put {os.path.basename(path)} (from "
                           f"github.com/yandex-research/heterophilous-graphs, data/) at {path}",
                           downloadable=url is not None)
    with np.load(path) as raw:
        missing = {"node_features", "node_labels", "edges", "train_masks", "val_masks",
                   "test_masks"} - set(raw.files)
        if missing:
            raise ValueError(f"{path} lacks the arrays {sorted(missing)}")
        x = torch.from_numpy(raw["node_features"]).float()
        y = torch.from_numpy(raw["node_labels"]).long()
        edges = torch.from_numpy(raw["edges"]).long()
        masks = tuple(torch.from_numpy(raw[key]).bool().t().contiguous()
                      for key in ("train_masks", "val_masks", "test_masks"))
    if edges.dim() != 2 or edges.size(1) != 2:
        raise ValueError(f"{path}: edges must be [E, 2] (got {list(edges.shape)})")
    n = x.size(0)
    if y.shape != (n,) or any(m.size(0) != n for m in masks):
        raise ValueError(f"{path}: node_labels and the masks must have one entry per node "
                         f"({n})")
    if edges.numel() and (int(edges.min()) < 0 or int(edges.max()) >= n):
        raise ValueError(f"{path}: edges point outside the {n} nodes")
    data = Data(x=x, y=y, edge_index=to_undirected(edges.t().contiguous(), num_nodes=n))
    return NodeTask(name, data, int(y.max()) + 1, "accuracy", accuracy, masks)


@register("ogbn-arxiv", NodeTask, "OGB ogbn-arxiv, time split, OGB Evaluator (accuracy); raw "
                                "files go to --root/ogbn_arxiv")
def ogbn(root: str, dataset: Optional[str] = None, extra=None, name: str = "ogbn-arxiv"
         ) -> NodeTask:
    require_ogb(name)
    from ogb.nodeproppred import Evaluator, PygNodePropPredDataset
    from torch_geometric.utils import to_undirected

    ogb_set = open_dataset(PygNodePropPredDataset, root, name=name)
    split = split_dict(ogb_set, "get_idx_split")
    data = ogb_set[0]
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

    return NodeTask(name, data, ogb_set.num_classes, f"{evaluator.eval_metric} (OGB Evaluator)",
                    evaluate, tuple(masks))


@register("pyg", NodeTask, "any torch_geometric.datasets class that provides train/val/test "
                         "masks: --dataset Class[:name] (e.g. WebKB:Texas, "
                         "WikipediaNetwork:chameleon, Planetoid:Cora); with S fixed splits, "
                         "seed s uses split s % S")
def pyg_dataset(root: str, spec: Optional[str], extra=None) -> NodeTask:
    import torch_geometric.datasets as datasets

    if not spec:
        raise ValueError("task 'pyg' needs --dataset Class[:name], e.g. --dataset WebKB:Texas")
    class_name, _, name = spec.partition(":")
    cls = getattr(datasets, class_name, None)
    if cls is None or not isinstance(cls, type):
        raise ValueError(f"torch_geometric.datasets has no dataset class {class_name!r}")
    dataset = (open_dataset(cls, root, name=name) if name
               else open_dataset(cls, os.path.join(root, class_name)))
    data = dataset[0]
    masks = [getattr(data, key, None) for key in ("train_mask", "val_mask", "test_mask")]
    if any(mask is None for mask in masks):
        raise ValueError(f"{spec} provides no train/val/test masks; the benchmark only uses "
                         f"splits that a dataset ships with")
    if masks[1].dim() != masks[0].dim():  # e.g. one val mask shared by several train masks
        masks = [m if m.dim() == 2 else m.view(-1, 1).expand_as(masks[0]) for m in masks]
    return NodeTask(spec, data, dataset.num_classes, "accuracy", accuracy, tuple(masks))
