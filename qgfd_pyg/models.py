"""Ready QGFD networks, in the style of PyG's ``torch_geometric.nn.models``."""
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import LayerNorm, Linear, Module, ModuleList
from torch_geometric.nn.resolver import activation_resolver
from torch_geometric.typing import Adj, OptTensor

from .checks import check_positive_int
from .conv import QGFDConv

NORMS = ("layer_norm", "batch_norm", None)


class InputDropout(Module):
    """Dropout on the input features, drawn only over their non-zero entries.

    Dropping a zero leaves it zero, so for sparse bag-of-words features (Cora: 1.3% non-zero)
    this has exactly the distribution of :func:`torch.nn.functional.dropout` at a fraction of
    the cost of drawing a mask for every entry. Sparse CSR input keeps its layout; for dense
    input the non-zero pattern of the last input is kept.

    Args:
        p (float): the dropout probability.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must lie in [0, 1) (got {p})")
        self.p = p
        self._key = None
        self._index = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if torch.compiler.is_compiling() and x.layout == torch.strided:
            return F.dropout(x, self.p, True)  # traced: the same distribution, no cache
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


def _norm(norm: Optional[str], channels: int) -> Module:
    if norm == "layer_norm":  # per node, as in a transformer (PyG's LayerNorm is per graph)
        return LayerNorm(channels)
    if norm == "batch_norm":
        return torch.nn.BatchNorm1d(channels)
    return torch.nn.Identity()


class QGFD(Module):
    r"""A QGFD network for node-level tasks, as PyG's ``GAT`` model is for ``GATConv``: an
    input layer, ``num_layers - 1`` pre-normalised blocks of multi-head
    :class:`~qgfd_pyg.QGFDConv` and a feed-forward sublayer, each sublayer with a residual
    connection, and a ``QGFDConv`` output layer with a linear skip from its input.

    .. math::
        \mathbf{H}^{(0)} &= \mathbf{W}_{in} \mathbf{X} \\
        \mathbf{H}^{(l)\prime} &= \mathbf{H}^{(l)} +
            \mathrm{QGFDConv}_l\big(\mathrm{Norm}(\mathbf{H}^{(l)})\big) \\
        \mathbf{H}^{(l+1)} &= \mathbf{H}^{(l)\prime} +
            \mathbf{W}_2\, \sigma\big(\mathbf{W}_1 \mathrm{Norm}(\mathbf{H}^{(l)\prime})\big) \\
        \mathbf{G} &= \sigma\big(\mathrm{Norm}(\mathbf{H}^{(L-1)})\big), \quad
        \mathbf{Y} = \mathrm{QGFDConv}_{out}(\mathbf{G}) + \mathbf{W}_{skip} \mathbf{G}

    (dropout on the input and after every sublayer). The block convolutions have ``heads``
    heads of ``hidden_channels // heads`` channels, concatenated; the output convolution's
    heads are averaged. The residuals and the skip are the network's self path: where the
    graph does not help (heterophilous graphs) it can rely on a node's own features, and with
    every convolution's output at zero it is an MLP. With ``learn_hop_weights=True`` (the
    default) each convolution learns its hop weights :math:`\theta_0..\theta_T` (GPR-GNN's
    form) in place of PageRank's fixed ones. Without ``out_channels`` all ``num_layers`` are
    blocks and the network returns :math:`\mathrm{Norm}(\mathbf{H}^{(L)})`.

    Args:
        in_channels (int): size of each input sample.
        hidden_channels (int): width of the blocks (a multiple of ``heads``).
        num_layers (int): number of ``QGFDConv`` layers (``num_layers - 1`` blocks and the
            output layer; ``num_layers`` blocks without ``out_channels``).
        out_channels (int, optional): size of each output sample; ``None`` returns the
            normalised hidden features. (default: :obj:`None`)
        heads (int, optional): attention heads per convolution. (default: :obj:`4`)
        dropout (float, optional): dropout on the input features and on the output of every
            sublayer. (default: :obj:`0.5`)
        attn_dropout (float, optional): dropout on the seed attention, and so on the
            transition when ``transition="attention"``. (default: :obj:`0.5`)
        alpha (float, optional): the diffusion weight :math:`\alpha` of the convolutions
            (:math:`1 - \alpha` is APPNP's teleport probability); with learnt hop weights, the
            PageRank weights they start from. (default: :obj:`0.9`)
        steps (int, optional): diffusion steps :math:`T`. (default: :obj:`10`)
        transition (str, optional): the convolutions' transition, see
            :class:`~qgfd_pyg.QGFDConv`. (default: :obj:`"attention"`)
        learn_hop_weights (bool, optional): learn each convolution's hop weights.
            (default: :obj:`True`)
        norm (str, optional): ``"layer_norm"`` (per node), ``"batch_norm"`` or ``None``.
            (default: :obj:`"layer_norm"`)
        residual (bool, optional): add each sublayer's input to its output, and the skip
            to the output layer.
            (default: :obj:`True`)
        feed_forward (bool, optional): add the feed-forward sublayer (width
            ``2 * hidden_channels``) to every block. (default: :obj:`True`)
        act (str or Callable, optional): the activation. (default: :obj:`"gelu"`)
        cached (bool, optional): the convolutions cache their graph structure (transductive
            use on one fixed graph). (default: :obj:`False`)
        **kwargs (optional): further arguments of :class:`~qgfd_pyg.QGFDConv`.

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F_{in})` (dense or sparse CSR),
          edge indices :math:`(2, |\mathcal{E}|)` or a sparse ``adj_t``, edge weights
          :math:`(|\mathcal{E}|)` *(optional)*, edge features :math:`(|\mathcal{E}|, D)`
          *(optional)*, batch vector :math:`(|\mathcal{V}|)` *(optional)*
        - **output:** :math:`(|\mathcal{V}|, F_{out})`, or
          :math:`(|\mathcal{V}|, \text{hidden\_channels})` without ``out_channels``

    Example:
        >>> from qgfd_pyg import QGFD
        >>> model = QGFD(1433, 64, num_layers=2, out_channels=7)
        >>> out = model(data.x, data.edge_index)  # [N, 7] class scores
    """

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int,
                 out_channels: Optional[int] = None, heads: int = 4, dropout: float = 0.5,
                 attn_dropout: float = 0.5, alpha: float = 0.9, steps: int = 10,
                 transition: str = "attention", learn_hop_weights: bool = True,
                 norm: Optional[str] = "layer_norm", residual: bool = True,
                 feed_forward: bool = True, act: Any = "gelu", cached: bool = False,
                 **kwargs):
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.hidden_channels = check_positive_int("hidden_channels", hidden_channels)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.heads = check_positive_int("heads", heads)
        if hidden_channels % heads:
            raise ValueError(f"hidden_channels ({hidden_channels}) must be a multiple of heads "
                             f"({heads}): the heads are concatenated")
        if out_channels is not None:
            check_positive_int("out_channels", out_channels)
        self.out_channels = out_channels
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1) (got {dropout})")
        if norm not in NORMS:
            raise ValueError(f"norm must be 'layer_norm', 'batch_norm' or None (got {norm!r})")
        self.norm = norm
        self.dropout, self.residual, self.feed_forward = dropout, residual, feed_forward
        self.act = activation_resolver(act)

        self.input_dropout = InputDropout(dropout)
        self.lin_in = Linear(in_channels, hidden_channels)
        conv = dict(alpha=alpha, steps=steps, transition=transition, dropout=attn_dropout,
                    learn_hop_weights=learn_hop_weights, cached=cached, **kwargs)
        blocks = num_layers if out_channels is None else num_layers - 1
        self.convs = ModuleList(
            QGFDConv(hidden_channels, hidden_channels // heads, heads=heads, concat=True, **conv)
            for _ in range(blocks))
        self.conv_norms = ModuleList(_norm(norm, hidden_channels) for _ in range(blocks))
        if feed_forward:
            self.ffs = ModuleList(
                torch.nn.Sequential(Linear(hidden_channels, 2 * hidden_channels), self.act,
                                    torch.nn.Dropout(dropout),
                                    Linear(2 * hidden_channels, hidden_channels))
                for _ in range(blocks))
            self.ff_norms = ModuleList(_norm(norm, hidden_channels) for _ in range(blocks))
        else:
            self.ffs = self.ff_norms = None
        self.out_norm = _norm(norm, hidden_channels)
        if out_channels is None:
            self.conv_out = self.lin_skip = None
        else:  # the output layer: QGFDConv to the outputs, heads averaged, plus a skip
            self.conv_out = QGFDConv(hidden_channels, out_channels, heads=heads, concat=False,
                                     **conv)
            self.lin_skip = Linear(hidden_channels, out_channels, bias=False) if residual \
                else None
        self.reset_parameters()

    def reset_parameters(self):
        r"""Resets all learnable parameters of the module."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def _sublayer(self, h: Tensor, update: Tensor) -> Tensor:
        update = F.dropout(update, self.dropout, self.training)
        return h + update if self.residual else update

    def forward(self, x: Tensor, edge_index: Adj, edge_weight: OptTensor = None,
                edge_attr: OptTensor = None, batch: OptTensor = None) -> Tensor:
        r"""Runs the network.

        Args:
            x (torch.Tensor): node features ``[N, F_in]`` (dense, or sparse CSR).
            edge_index (torch.Tensor or SparseTensor): edges ``[2, E]`` (source, target) or
                ``adj_t``.
            edge_weight (torch.Tensor, optional): edge weights ``[E]`` of the graph
                transition. (default: :obj:`None`)
            edge_attr (torch.Tensor, optional): edge features ``[E, edge_dim]`` of the seed
                attention, for a network built with ``edge_dim=`` (passed on to every
                :class:`~qgfd_pyg.QGFDConv`). (default: :obj:`None`)
            batch (torch.Tensor, optional): the graph of each node ``[N]`` (kNN transitions
                then join keys of one graph only). (default: :obj:`None`)
        """
        if not isinstance(x, Tensor) or x.dim() != 2:
            raise ValueError(f"x must be a node feature matrix [N, F] "
                             f"(got {getattr(x, 'shape', type(x).__name__)})")
        if x.size(1) != self.in_channels:
            raise ValueError(f"x has {x.size(1)} features but the network expects "
                             f"in_channels={self.in_channels}")
        h = self.lin_in(self.input_dropout(x))
        for layer, conv in enumerate(self.convs):
            h = self._sublayer(h, conv(self.conv_norms[layer](h), edge_index, edge_attr,
                                       edge_weight=edge_weight, batch=batch))
            if self.ffs is not None:
                h = self._sublayer(h, self.ffs[layer](self.ff_norms[layer](h)))
        h = self.out_norm(h)
        if self.conv_out is None:
            return h
        h = F.dropout(self.act(h), self.dropout, self.training)
        out = self.conv_out(h, edge_index, edge_attr, edge_weight=edge_weight, batch=batch)
        return out if self.lin_skip is None else out + self.lin_skip(h)

    def hop_weights(self) -> Optional[Tensor]:
        r"""The learnt hop weights ``[num_layers, steps + 1]`` (``None`` when fixed)."""
        convs = list(self.convs) + ([] if self.conv_out is None else [self.conv_out])
        if convs[0].hop_weights is None:
            return None
        return torch.stack([conv.hop_weights for conv in convs])

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.hidden_channels}, "
                f"num_layers={self.num_layers}, out_channels={self.out_channels}, "
                f"heads={self.heads})")

