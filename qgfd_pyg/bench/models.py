"""The compared models. Baselines are PyG's own layers with their papers' standard settings."""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict

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

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 16, dropout: float = 0.5):
        super().__init__()
        self.dropout = dropout
        self.input_dropout = InputDropout(dropout)
        self.conv1 = GCNConv(in_channels, hidden, cached=True)
        self.conv2 = GCNConv(hidden, num_classes, cached=True)

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


class APPNPNet(Module):
    """Gasteiger et al. (2019): MLP with 64 hidden, then K=10 steps of PPR, teleport 0.1."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 64,
                 dropout: float = 0.5, K: int = 10, alpha: float = 0.1):
        super().__init__()
        self.dropout = dropout
        self.input_dropout = InputDropout(dropout)
        self.lin1 = Linear(in_channels, hidden)
        self.lin2 = Linear(hidden, num_classes)
        self.prop = APPNP(K, alpha, cached=True)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        x = self.input_dropout(x)
        x = F.relu(self.lin1(x))
        x = F.dropout(x, self.dropout, self.training)
        return self.prop(self.lin2(x), edge_index)


class QGFDNet(Module):
    """Predict, diffuse, attend: an MLP layer, then one :class:`QGFDConv` whose values (the
    class scores) are diffused over the graph before the seed attention reads them.

    ``layers=2`` stacks two QGFDConv layers instead (the GAT shape, heads concatenated in the
    first), each diffusing over the same transition.
    """

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 64, heads: int = 1,
                 dropout: float = 0.5, attn_dropout: float = 0.0, alpha: float = 0.9,
                 steps: int = 10, transition: str = "graph", k: int = 8, layers: int = 1,
                 attention: str = "dot"):
        super().__init__()
        if layers not in (1, 2):
            raise ValueError(f"layers must be 1 or 2 (got {layers})")
        self.dropout = dropout
        self.input_dropout = InputDropout(dropout)
        options = dict(alpha=alpha, steps=steps, transition=transition, k=k,
                       dropout=attn_dropout, cached=transition == "graph", attention=attention)
        if layers == 1:
            self.first = Linear(in_channels, hidden)
        else:
            self.first = QGFDConv(in_channels, hidden // heads, heads=heads, **options)
        self.conv = QGFDConv(hidden, num_classes, heads=heads, concat=False, **options)

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


MODELS: Dict[str, ModelSpec] = {
    "qgfd": ModelSpec(QGFDNet, 0.01, 5e-4, dict(
        hidden=64, heads=1, dropout=0.5, attn_dropout=0.0, alpha=0.8, steps=10,
        transition="graph", k=8, layers=1, attention="dot"), "chosen on Cora validation accuracy "
                                            "(benchmarks/results/cora_search.md)"),
    "gat": ModelSpec(GAT, 0.005, 5e-4, dict(hidden=8, heads=8, dropout=0.6), "GAT paper"),
    "appnp": ModelSpec(APPNPNet, 0.01, 5e-4, dict(hidden=64, dropout=0.5, K=10, alpha=0.1),
                       "APPNP paper / PyG example"),
    "gcn": ModelSpec(GCN, 0.01, 5e-4, dict(hidden=16, dropout=0.5), "GCN paper"),
}


def build_model(name: str, in_channels: int, num_classes: int,
                overrides: Dict[str, Any] = None) -> Module:
    spec = MODELS[name]
    options = {**spec.options, **(overrides or {})}
    return spec.build(in_channels, num_classes, **options)


def count_parameters(model: Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
