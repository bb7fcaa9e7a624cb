"""The compared models. Baselines are PyG's own layers with their papers' standard settings."""
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Module
from torch_geometric.nn import APPNP, GATConv, GCNConv

from ..conv import QGFDConv


class InputDropout(Module):
    """Dropout on the input features, drawn only over their non-zero entries.

    Dropping a zero leaves it zero, so for sparse bag-of-words features (Cora: 1.3% non-zero)
    this has exactly the distribution of :func:`torch.nn.functional.dropout` at a fraction of
    the cost of drawing a mask for every entry. Sparse CSR input (see
    :func:`qgfd_pyg.bench.train.as_model_input`) keeps its layout; for dense input the
    non-zero pattern of the last input is kept.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self._key = None
        self._index = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.layout == torch.sparse_csr:
            return torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(),
                                           F.dropout(x.values(), self.p, True), x.shape,
                                           check_invariants=False)  # x's own structure
        key = (x.data_ptr(), tuple(x.shape), x._version, x.device)
        if key != self._key:
            nonzero = x.nonzero(as_tuple=True)
            self._key, self._index = key, nonzero if nonzero[0].numel() < x.numel() // 2 else None
        if self._index is None:  # dense features: plain dropout
            return F.dropout(x, self.p, True)
        out = torch.zeros_like(x)
        out[self._index] = F.dropout(x[self._index], self.p, True)
        return out


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
    """The hyper-parameters of the runner's QGFD model (:class:`QGFDNet`): the one place they
    are declared. The CLI makes one ``--option`` of each; sweeps pass them as a dict."""
    hidden: int = _option(64, "hidden width (the MLP layer's output)")
    heads: int = _option(1, "attention heads of the QGFDConv layer(s)")
    dropout: float = _option(0.5, "dropout on the inputs and hidden features")
    attn_dropout: float = _option(0.5, "dropout on the seed attention")
    alpha: float = _option(0.9, "diffusion weight in [0, 1]")
    steps: int = _option(10, "diffusion steps T")
    transition: str = _option("attention", "what the values diffuse over",
                              ("graph", "sym", "knn", "attention"))
    k: int = _option(8, "kNN neighbours per key (transition=knn)")
    layers: int = _option(1, "1: MLP then QGFDConv; 2: two QGFDConv layers", (1, 2))
    attention: str = _option("dot", "seed score", ("dot", "additive"))
    learn_hop_weights: bool = _option(False, "learn the hop weights theta_0..theta_T "
                                             "(GPR-GNN), started at PageRank's")

    @classmethod
    def merged(cls, overrides: Dict[str, Any]) -> Dict[str, Any]:
        """The defaults with ``overrides`` applied; unknown names are a ValueError."""
        unknown = sorted(set(overrides) - set(asdict(cls())))
        if unknown:
            raise ValueError(f"unknown QGFD options {unknown}; known: {', '.join(asdict(cls()))}")
        return {**asdict(cls()), **overrides}


class QGFDNet(Module):
    """Predict, diffuse, attend: an MLP layer, then one :class:`QGFDConv` whose values (the
    class scores) are diffused over the graph before the seed attention reads them.

    ``layers=2`` stacks two QGFDConv layers instead (the GAT shape, heads concatenated in the
    first), each diffusing over the same transition. ``cached`` (default: for the graph
    transition) keeps the first call's transition, for training on one fixed graph.
    """

    def __init__(self, in_channels: int, num_classes: int, cached: Optional[bool] = None,
                 **options):
        super().__init__()
        o = QGFDOptions(**QGFDOptions.merged(options))
        if o.layers not in (1, 2):
            raise ValueError(f"layers must be 1 or 2 (got {o.layers})")
        self.dropout = o.dropout
        self.input_dropout = InputDropout(o.dropout)
        conv = dict(alpha=o.alpha, steps=o.steps, transition=o.transition, k=o.k,
                    dropout=o.attn_dropout,
                    cached=o.transition != "knn" if cached is None else cached,
                    attention=o.attention, learn_hop_weights=o.learn_hop_weights)
        if o.layers == 1:
            self.first = Linear(in_channels, o.hidden)
        else:
            self.first = QGFDConv(in_channels, o.hidden // o.heads, heads=o.heads, **conv)
        self.conv = QGFDConv(o.hidden, num_classes, heads=o.heads, concat=False, **conv)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        x = self.input_dropout(x)
        x = self.first(x) if isinstance(self.first, Linear) else self.first(x, edge_index)
        x = F.dropout(F.elu(x), self.dropout, self.training)
        return self.conv(x, edge_index)


@dataclass
class ModelSpec:
    build: Callable[..., Module]
    lr: float
    weight_decay: float
    options: Dict[str, Any] = field(default_factory=dict)
    source: str = ""
    default: bool = True  # run when no --models are given (else opt-in)


MODELS: Dict[str, ModelSpec] = {
    "qgfd": ModelSpec(QGFDNet, 0.01, 5e-4, asdict(QGFDOptions()),
                      "chosen on Cora validation accuracy "
                      "(benchmarks/results/cora_transitions.md)"),
    "gat": ModelSpec(GAT, 0.005, 5e-4, dict(hidden=8, heads=8, dropout=0.6), "GAT paper"),
    "appnp": ModelSpec(APPNPNet, 0.01, 5e-4, dict(hidden=64, dropout=0.5, K=10, alpha=0.1),
                       "APPNP paper / PyG example"),
    "gcn": ModelSpec(GCN, 0.01, 5e-4, dict(hidden=16, dropout=0.5), "GCN paper"),
    "mlp": ModelSpec(MLP, 0.01, 5e-4, dict(hidden=64, dropout=0.5),
                     "2 layers on the features, no graph"),
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
