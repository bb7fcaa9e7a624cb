"""Link prediction: an encoder of each model, a dot-product decoder, scored edges.

``cora-link`` / ``citeseer-link`` split the edges with PyG's :class:`RandomLinkSplit`
(85/5/10, undirected, fixed per seed); ``ogbl-collab`` / ``ogbl-ddi`` use OGB's own splits,
negatives and :class:`ogb.linkproppred.Evaluator`. Training: binary cross-entropy of the
training edges against as many negatives drawn anew every epoch
(:func:`torch_geometric.utils.negative_sampling`). Messages pass over the training edges for
training and validation, and over the training and validation edges for the test (PyG's
convention). Metrics on the scored positive and negative edges: AUC and AP (scikit-learn),
Hits@K (OGB's evaluator) and MRR (OGB's, each positive ranked among all negatives).
"""
from functools import partial
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Embedding, Module
from torch_geometric.data import Data
from torch_geometric.utils import negative_sampling, to_undirected

from .data import open_dataset, require_ogb, split_dict
from .metrics import link_metrics
from .models import GAT, GCN, MLP, APPNPNet, ModelSpec, QGFDNet
from .tasks import FullBatchExperiment, Task, register
from .train import as_model_input, make_optimizer

_BUDGET = "2 layers, 128 hidden, 64-dimensional embeddings, dot-product decoder"
LINK_MODELS: Dict[str, ModelSpec] = {
    "qgfd": ModelSpec(partial(QGFDNet, cached=False), 0.01, 0.0,
                      dict(hidden=128, dropout=0.5, alpha=0.8, steps=10, transition="graph",
                           attn_dropout=0.0), _BUDGET),
    "gat": ModelSpec(GAT, 0.01, 0.0, dict(hidden=16, heads=8, dropout=0.5), _BUDGET),
    "appnp": ModelSpec(partial(APPNPNet, cached=False), 0.01, 0.0,
                       dict(hidden=128, dropout=0.5, K=10, alpha=0.1), _BUDGET),
    "gcn": ModelSpec(partial(GCN, cached=False), 0.01, 0.0, dict(hidden=128, dropout=0.5),
                     _BUDGET),
    "mlp": ModelSpec(MLP, 0.01, 0.0, dict(hidden=128, dropout=0.5), _BUDGET + " (no graph)"),
}
EMBEDDING = 64


class LinkSplit(NamedTuple):
    """Edges of one split: the graph messages pass over, and the scored positives and
    negatives (``[2, *]``; ``neg`` is ``None`` for training, where it is drawn per epoch)."""
    edge_index: Tensor
    pos: Tensor
    neg: Optional[Tensor]


class LinkTask(Task):
    """A loaded link-prediction task.

    Args:
        name: the task's name.
        data: ``x`` (``None``: learnt node embeddings) and ``num_nodes``.
        splits: ``seed -> (train, val, test)`` :class:`LinkSplit`.
        metric: the main metric: a key of :func:`~qgfd_pyg.bench.metrics.link_metrics`
            (``"auc"``) or ``"hits@K"``.
    """
    kind = "link"
    models = LINK_MODELS
    percent = True
    val_loss = True

    def __init__(self, name: str, data: Data,
                 splits: Callable[[int], Tuple[LinkSplit, LinkSplit, LinkSplit]], metric: str,
                 hits: Tuple[int, ...] = (20, 50, 100)):
        self.name, self.data, self.splits, self.hits = name, data, splits, hits
        self.metric = metric
        keys = ["auc", "ap", *(f"hits@{k}" for k in hits), "mrr"]
        self.columns = tuple((key, key.upper() if key in ("auc", "ap", "mrr")
                              else key.replace("hits", "Hits")) for key in keys if key != metric)

    def setup(self, model: str, seed: int, options: Dict[str, Any],
              device: torch.device) -> "LinkExperiment":
        return LinkExperiment(self, model, seed, options, device)

    def training(self, config: Dict[str, Any]) -> str:
        return ("Adam, full batch, binary cross-entropy against as many fresh negatives per "
                "epoch")

    def protocol_notes(self, config: Dict[str, Any]) -> str:
        return _BUDGET


class LinkEncoder(Module):
    """Node features (or learnt embeddings when there are none) through a model's encoder."""

    def __init__(self, net: Module, embedding: Optional[Embedding] = None):
        super().__init__()
        self.net, self.embedding = net, embedding

    def forward(self, x: Optional[Tensor], edge_index: Tensor) -> Tensor:
        return self.net(self.embedding.weight if x is None else x, edge_index)


class LinkExperiment(FullBatchExperiment):
    def __init__(self, task: LinkTask, model: str, seed: int, options: Dict[str, Any],
                 device: torch.device):
        self.task, self.device = task, device
        self.splits = dict(zip(("train", "val", "test"), (
            LinkSplit(*(None if t is None else t.to(device) for t in s))
            for s in task.splits(seed)), strict=True))
        x = task.data.x
        self.x = None if x is None else as_model_input(x.to(device))
        embedding = Embedding(task.data.num_nodes, 128) if x is None else None
        spec = task.models[model]
        net = spec.build(128 if x is None else x.size(1), EMBEDDING, **options)
        self.model = LinkEncoder(net, embedding).to(device)
        self.optimizer = make_optimizer(self.model, spec)

    def _scores(self, z: Tensor, edges: Tensor) -> Tensor:
        return (z[edges[0]] * z[edges[1]]).sum(dim=-1)

    def _loss(self, z: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        pos_score, neg_score = self._scores(z, pos), self._scores(z, neg)
        return (F.binary_cross_entropy_with_logits(pos_score, torch.ones_like(pos_score))
                * pos_score.numel() + F.binary_cross_entropy_with_logits(
                    neg_score, torch.zeros_like(neg_score)) * neg_score.numel()
                ) / (pos_score.numel() + neg_score.numel())

    def training_loss(self) -> Tensor:
        split = self.splits["train"]
        neg = negative_sampling(split.edge_index, num_nodes=self.task.data.num_nodes,
                                num_neg_samples=split.pos.size(1))
        return self._loss(self.model(self.x, split.edge_index), split.pos, neg)

    @torch.no_grad()
    def evaluate(self, split: str) -> Dict[str, float]:
        self.model.eval()
        s = self.splits[split]
        z = self.model(self.x, s.edge_index)
        pos, neg = self._scores(z, s.pos), self._scores(z, s.neg)
        metrics = link_metrics(pos, neg, self.task.hits)
        return {"metric": metrics.pop(self.task.metric), "loss": float(self._loss(z, s.pos, s.neg)),
                **metrics}


def random_link_split(data: Data, seed: int) -> Tuple[LinkSplit, LinkSplit, LinkSplit]:
    """PyG's :class:`RandomLinkSplit`, 85/5/10, undirected, one fixed split per seed."""
    from torch_geometric.transforms import RandomLinkSplit

    transform = RandomLinkSplit(num_val=0.05, num_test=0.1, is_undirected=True,
                                add_negative_train_samples=False, split_labels=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        train, val, test = transform(Data(edge_index=data.edge_index, num_nodes=data.num_nodes))
    return (LinkSplit(train.edge_index, train.pos_edge_label_index, None),
            LinkSplit(val.edge_index, val.pos_edge_label_index, val.neg_edge_label_index),
            LinkSplit(test.edge_index, test.pos_edge_label_index, test.neg_edge_label_index))


def _register_planetoid(task: str, name: str) -> None:
    @register(task, LinkTask, f"Planetoid {name} links: RandomLinkSplit 85/5/10 per seed, "
                              f"AUC (selects), AP, Hits@20/50/100 and MRR against the split's "
                              f"negatives; ships in datasets/{name}")
    def load(root: str, dataset: Optional[str], extra: Dict[str, Any]) -> LinkTask:
        import torch_geometric.transforms as T
        from torch_geometric.datasets import Planetoid

        data = open_dataset(Planetoid, root, name=name, transform=T.NormalizeFeatures())[0]
        return LinkTask(task, Data(x=data.x, edge_index=data.edge_index,
                                   num_nodes=data.num_nodes),
                        lambda seed: random_link_split(data, seed), "auc")


_register_planetoid("cora-link", "Cora")
_register_planetoid("citeseer-link", "CiteSeer")


def ogbl(root: str, name: str) -> LinkTask:
    """An ``ogbl-*`` data set with its official split and negatives, and the main metric of
    its :class:`ogb.linkproppred.Evaluator` (hits@50 for collab, hits@20 for ddi)."""
    require_ogb(name)
    from ogb.linkproppred import Evaluator, PygLinkPropPredDataset

    dataset = open_dataset(PygLinkPropPredDataset, root, name=name)
    split = split_dict(dataset, "get_edge_split")
    data = dataset[0]
    n = data.num_nodes
    metric = Evaluator(name).eval_metric
    x = None if data.x is None else data.x.float()

    def edges(key: str, part: str = "edge") -> Tensor:
        return split[key][part].t().contiguous()

    train_graph = to_undirected(edges("train"), num_nodes=n)
    test_graph = to_undirected(torch.cat([edges("train"), edges("valid")], dim=1), num_nodes=n)
    splits = (LinkSplit(train_graph, edges("train"), None),
              LinkSplit(train_graph, edges("valid"), edges("valid", "edge_neg")),
              LinkSplit(test_graph, edges("test"), edges("test", "edge_neg")))
    k = int(metric.split("@")[1])
    return LinkTask(name, Data(x=x, num_nodes=n), lambda seed: splits, metric,
                    tuple(sorted({k, 20, 50, 100})))


for _name, _text in (("ogbl-collab", "OGB ogbl-collab (official split and negatives, "
                                     "Hits@50 by OGB's Evaluator); raw files go to "
                                     "--root/ogbl_collab"),
                     ("ogbl-ddi", "OGB ogbl-ddi (official split and negatives, Hits@20 by "
                                  "OGB's Evaluator; learnt node embeddings); raw files go to "
                                  "--root/ogbl_ddi")):
    register(_name, LinkTask, _text)(
        lambda root, dataset, extra, _n=_name: ogbl(root, _n))
