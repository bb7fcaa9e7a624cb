"""The compared models. Baselines are PyG's own layers with their papers' standard settings."""
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Module
from torch_geometric.nn import APPNP, GATConv, GCNConv

from .. import QGFD, InputDropout


class GCN(Module):
    """Kipf & Welling (2017): 2 layers, 16 hidden, dropout 0.5."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 16, dropout: float = 0.5,
                 cached: bool = True):
        super().__init__()
        self.dropout = dropout
        self.input_dropout = InputDropout(dropout)
        self.conv1 = GCNConv(in_channels, hidden, cached=cached)
        self.conv2 = GCNConv(hidden, num_classes, cached=cached)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        x = self.input_dropout(x)
        x = F.relu(self.conv1(x, edge_index))
        x = F.dropout(x, self.dropout, self.training)
        return self.conv2(x, edge_index)


class GAT(Module):
    """Velickovic et al. (2018): 8 heads x 8 hidden, ELU, dropout 0.6 on inputs and attention."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 8, heads: int = 8,
                 dropout: float = 0.6):
        super().__init__()
        self.dropout = dropout
        self.input_dropout = InputDropout(dropout)
        self.conv1 = GATConv(in_channels, hidden, heads=heads, dropout=dropout)
        self.conv2 = GATConv(hidden * heads, num_classes, heads=1, concat=False, dropout=dropout)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        x = self.input_dropout(x)
        x = F.elu(self.conv1(x, edge_index))
        x = F.dropout(x, self.dropout, self.training)
        return self.conv2(x, edge_index)


class MLP(Module):
    """Two linear layers on the features, no graph: the sanity baseline."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 64,
                 dropout: float = 0.5):
        super().__init__()
        self.dropout = dropout
        self.input_dropout = InputDropout(dropout)
        self.lin1 = Linear(in_channels, hidden)
        self.lin2 = Linear(hidden, num_classes)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        x = F.relu(self.lin1(self.input_dropout(x)))
        return self.lin2(F.dropout(x, self.dropout, self.training))


class GCNII(Module):
    """Chen et al. (2020), PyG's ``GCN2Conv``: a linear layer, ``layers`` GCNII layers with
    initial residual ``alpha`` and identity mapping ``theta / l``, a linear layer; the
    paper's Cora settings (64 layers of 64, dropout 0.6, weight decay 0.01 on the convolutions
    and 5e-4 on the linear layers)."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 64, layers: int = 64,
                 alpha: float = 0.1, theta: float = 0.5, dropout: float = 0.6,
                 conv_weight_decay: float = 0.01, cached: bool = True):
        super().__init__()
        from torch_geometric.nn import GCN2Conv

        self.dropout, self.conv_weight_decay = dropout, conv_weight_decay
        self.input_dropout = InputDropout(dropout)
        self.lin1, self.lin2 = Linear(in_channels, hidden), Linear(hidden, num_classes)
        self.convs = torch.nn.ModuleList(
            GCN2Conv(hidden, alpha, theta, layer + 1, shared_weights=True, cached=cached)
            for layer in range(layers))

    def parameter_groups(self, weight_decay: float):
        """Optimiser groups: the paper's own weight decay on the convolutions."""
        return [{"params": list(self.convs.parameters()), "weight_decay": self.conv_weight_decay},
                {"params": list(self.lin1.parameters()) + list(self.lin2.parameters()),
                 "weight_decay": weight_decay}]

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        x = x0 = F.relu(self.lin1(self.input_dropout(x)))
        for conv in self.convs:
            x = F.relu(conv(F.dropout(x, self.dropout, self.training), x0, edge_index))
        return self.lin2(F.dropout(x, self.dropout, self.training))


class APPNPNet(Module):
    """Gasteiger et al. (2019): MLP with 64 hidden, then K=10 steps of PPR, teleport 0.1."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 64,
                 dropout: float = 0.5, K: int = 10, alpha: float = 0.1, cached: bool = True):
        super().__init__()
        self.dropout = dropout
        self.input_dropout = InputDropout(dropout)
        self.lin1 = Linear(in_channels, hidden)
        self.lin2 = Linear(hidden, num_classes)
        self.prop = APPNP(K, alpha, cached=cached)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        x = self.input_dropout(x)
        x = F.relu(self.lin1(x))
        x = F.dropout(x, self.dropout, self.training)
        return self.prop(self.lin2(x), edge_index)


def _option(default, help: str, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class QGFDOptions:
    """The hyper-parameters of the runner's QGFD model (:class:`QGFDNet`, the package's
    :class:`~qgfd_pyg.QGFD` network): the one place they are declared. The CLI makes one
    ``--option`` of each; sweeps pass them as a dict. The defaults were chosen on validation
    accuracy in three stages (``benchmarks/results/network_search.md``, ``network2_search.md``,
    ``network3_search.md``)."""
    hidden: int = _option(64, "width of the blocks")
    heads: int = _option(1, "attention heads per layer (concatenated in blocks)")
    layers: int = _option(1, "QGFDConv layers: layers - 1 blocks, then the output QGFDConv")
    dropout: float = _option(0.5, "dropout on the inputs and after every sublayer")
    attn_dropout: float = _option(0.5, "dropout on the seed attention (and so the transition)")
    alpha: float = _option(0.9, "diffusion weight in [0, 1] (1 - APPNP's teleport)")
    steps: int = _option(10, "diffusion steps T")
    transition: str = _option("attention", "what the values diffuse over",
                              ("graph", "sym", "knn", "attention"))
    k: int = _option(8, "kNN neighbours per key (transition=knn)")
    attention: str = _option("dot", "seed score", ("dot", "additive"))
    learn_hop_weights: bool = _option(True, "learn the hop weights theta_0..theta_T "
                                            "(GPR-GNN), started at PageRank's")
    norm: str = _option("none", "normalisation before every sublayer",
                        ("layer_norm", "batch_norm", "none"))
    residual: bool = _option(True, "residual connections around every sublayer")
    feed_forward: bool = _option(True, "a feed-forward sublayer in every block")
    redraw_dropout: bool = _option(False, "a new attention-dropout mask of the transition at "
                                          "every diffusion step")

    @classmethod
    def merged(cls, overrides: Dict[str, Any]) -> Dict[str, Any]:
        """The defaults with ``overrides`` applied; unknown names are a ValueError."""
        unknown = sorted(set(overrides) - set(asdict(cls())))
        if unknown:
            raise ValueError(f"unknown QGFD options {unknown}; known: {', '.join(asdict(cls()))}")
        return {**asdict(cls()), **overrides}


def QGFDNet(in_channels: int, num_classes: int, cached: Optional[bool] = None,
            **options) -> QGFD:
    """The runner's ``qgfd`` model: the package's :class:`~qgfd_pyg.QGFD` network built from
    :class:`QGFDOptions`. ``cached`` (default: every transition but kNN) keeps the first
    call's graph structure, for training on one fixed graph."""
    o = QGFDOptions(**QGFDOptions.merged(options))
    return QGFD(in_channels, o.hidden, o.layers, num_classes, heads=o.heads, dropout=o.dropout,
                attn_dropout=o.attn_dropout, alpha=o.alpha, steps=o.steps,
                transition=o.transition, k=o.k, attention=o.attention,
                learn_hop_weights=o.learn_hop_weights,
                norm=None if o.norm == "none" else o.norm, residual=o.residual,
                feed_forward=o.feed_forward, redraw_dropout=o.redraw_dropout,
                cached=o.transition != "knn" if cached is None else cached)


@dataclass
class ModelSpec:
    build: Callable[..., Module]
    lr: float
    weight_decay: float
    options: Dict[str, Any] = field(default_factory=dict)
    source: str = ""
    default: bool = True  # run when no --models are given (else opt-in)


def one_hop_control(qgfd: ModelSpec, source: str, **cut: Any) -> ModelSpec:
    """The ``attention`` row of a kind's table: its ``qgfd`` model, built and trained the same
    way, with the flow cut to one hop by the options ``cut`` (what that takes for the model:
    ``alpha=0`` with fixed hop weights, or one step), so that the table shows what the
    diffusion adds over the seed attention alone."""
    return ModelSpec(qgfd.build, qgfd.lr, qgfd.weight_decay, {**qgfd.options, **cut}, source,
                     qgfd.default)


MODELS: Dict[str, ModelSpec] = {
    "qgfd": ModelSpec(QGFDNet, 0.01, 5e-4, asdict(QGFDOptions()),
                      "the QGFD network; settings chosen on validation accuracy "
                      "(benchmarks/results/network3_search.md)"),
    "gat": ModelSpec(GAT, 0.005, 5e-4, dict(hidden=8, heads=8, dropout=0.6), "GAT paper"),
    "appnp": ModelSpec(APPNPNet, 0.01, 5e-4, dict(hidden=64, dropout=0.5, K=10, alpha=0.1),
                       "APPNP paper / PyG example"),
    "gcn": ModelSpec(GCN, 0.01, 5e-4, dict(hidden=16, dropout=0.5), "GCN paper"),
    "mlp": ModelSpec(MLP, 0.01, 5e-4, dict(hidden=64, dropout=0.5),
                     "2 layers on the features, no graph"),
    "qgfd-ln": ModelSpec(QGFDNet, 0.01, 5e-4,
                         {**asdict(QGFDOptions()), "layers": 2, "heads": 4,
                          "norm": "layer_norm", "learn_hop_weights": False, "dropout": 0.7,
                          "attn_dropout": 0.3, "redraw_dropout": False},
                         "the network chosen on Cora and Chameleon-filtered validation together "
                         "(network search stages 1-2: a LayerNorm block of 4 heads, then the "
                         "output layer); opt-in", default=False),
    "gcn2": ModelSpec(GCNII, 0.01, 5e-4, dict(hidden=64, layers=64, alpha=0.1, theta=0.5,
                                              dropout=0.6), "GCNII paper (Cora); opt-in",
                      default=False),
}


def build_model(name: str, in_channels: int, num_classes: int,
                overrides: Dict[str, Any] = None) -> Module:
    spec = MODELS[name]
    options = {**spec.options, **(overrides or {})}
    return spec.build(in_channels, num_classes, **options)


def count_parameters(model: Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
