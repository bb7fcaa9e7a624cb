import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Parameter
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.inits import glorot, zeros
from torch_geometric.typing import Adj, OptTensor, PairTensor, Size
from torch_geometric.utils import is_torch_sparse_tensor, scatter, softmax, to_dense_batch
from torch_geometric.typing import SparseTensor

from .checks import (check_alpha, check_choice, check_edge_index, check_edge_weight,
                      check_values,
                      check_positive_float, check_positive_int, check_steps)
from .diffusion import diffuse, ppr_hop_weights
from .edge_ops import EdgeLayout, edge_aggregate, edge_dot, edge_softmax
from .spmm import Transition, sparse_matrix
from .structure import graph_structure
from .transition import graph_transition, knn_transition


TRANSITIONS = ("graph", "sym", "knn", "attention")
# fill_value of a self-loop's edge features: the reduction of the node's incoming edges' (PyG's)
FILL_REDUCE = {"mean": "mean", "add": "sum", "max": "max", "min": "min", "mul": "mul"}


class QGFDConv(MessagePassing):
    r"""Query-Graph-Flow Diffusion: graph attention whose seed distribution is diffused over a
    row-stochastic transition :math:`\mathbf{P}` before it reads the values.

    Every node :math:`i` is a query. Its seed distribution is the edge softmax over its
    neighbours (and itself),

    .. math::
        p^{(0)}_{ij} = \mathrm{softmax}_{j \in \mathcal{N}(i) \cup \{i\}}
        \left(\frac{(\mathbf{W}_Q \mathbf{x}_i)^\top (\mathbf{W}_K \mathbf{x}_j)}{\sqrt{d}}\right),

    or, with ``attention="additive"``, GAT's score :math:`\mathrm{LeakyReLU}(\mathbf{a}_d^\top
    \mathbf{v}_i + \mathbf{a}_s^\top \mathbf{v}_j)` on the values :math:`\mathbf{v} =
    \mathbf{W}_V \mathbf{x}` (no query/key projections; kNN then runs over the values). It
    diffuses as :math:`p^{(t+1)} = (1-\alpha)\, p^{(0)} + \alpha\, p^{(t)} \mathbf{P}` for
    :math:`T` steps; the output is :math:`\mathbf{x}'_i = \sum_j p^{(T)}_{ij} \mathbf{W}_V
    \mathbf{x}_j`. It is computed without ever forming :math:`p^{(t)}`, by diffusing the values
    instead (:func:`qgfd_pyg.diffuse`):

    .. math::
        \mathbf{Z}^{(0)} = \mathbf{V}, \quad
        \mathbf{Z}^{(t+1)} = (1-\alpha)\mathbf{V} + \alpha \mathbf{P}\mathbf{Z}^{(t)}, \quad
        \mathbf{x}'_i = \sum_{j \in \mathcal{N}(i) \cup \{i\}} p^{(0)}_{ij}\, \mathbf{Z}^{(T)}_j,

    at the cost of :math:`T` sparse products plus one attention. ``alpha=0`` is plain
    neighbour attention; the receptive field is :math:`T + 1` hops. With
    ``transition="graph"``, :math:`\mathbf{P}` is the random walk that follows messages
    backwards (row :math:`j` spreads over the sources of the edges into :math:`j`, weighted by
    ``edge_weight``; see :func:`qgfd_pyg.graph_transition`); ``"sym"`` is its symmetric
    normalisation :math:`D^{-1/2} A D^{-1/2}` (APPNP's; :math:`p^{(T)}` is then no longer a
    distribution); with ``"knn"`` it joins each key to its ``k`` most similar keys
    (:func:`qgfd_pyg.knn_transition`, per head); with ``"attention"`` it is the layer's own seed
    attention, :math:`\mathbf{P}_{ij} = p^{(0)}_{ij}` per head, so that
    :math:`p^{(T)} = \sum_k \theta_k (p^{(0)})^{k+1}` is the attention diffusion of MAGNA
    (Wang et al., 2021), learnt through :math:`\mathbf{P}` as well.

    With ``edge_dim``, edge features :math:`\mathbf{e}_{ij}` enter the seed's scores: the key
    becomes :math:`\mathbf{W}_K \mathbf{x}_j + \mathbf{W}_E \mathbf{e}_{ij}` (the form of
    ``TransformerConv``), or GAT's score gains :math:`\mathbf{a}_e^\top \mathbf{W}_E
    \mathbf{e}_{ij}` with ``attention="additive"`` (``GATConv``'s). The transition does not use
    them (its weights are ``edge_weight``). The arguments up to ``residual`` are ``GATConv``'s,
    in its order; QGFD's own follow as keywords.

    Args:
        in_channels (int or tuple): size of each input sample, ``-1`` to infer it on first
            use, or a pair ``(source, target)`` of them for bipartite graphs.
        out_channels (int): size of each output sample (per head).
        heads (int, optional): number of attention heads. (default: :obj:`1`)
        concat (bool, optional): concatenate the heads (else average them).
            (default: :obj:`True`)
        negative_slope (float, optional): LeakyReLU slope of ``attention="additive"``'s score;
            the dot-product seed has none (another value is a ValueError). (default: :obj:`0.2`)
        dropout (float, optional): dropout probability of the seed attention coefficients
            (with ``transition="attention"`` also of the transition, renormalised over each
            row's kept edges). (default: :obj:`0.0`)
        add_self_loops (bool, optional): add self-loops to the attention and to the graph
            transition. (default: :obj:`True`)
        edge_dim (int, optional): edge feature dimensionality; ``None`` uses no edge features
            (a 1-D ``edge_attr`` is then the transition's edge weights). (default: :obj:`None`)
        fill_value (float or torch.Tensor or str, optional): the edge features of an added
            self-loop: a value, or ``"mean"``, ``"add"``, ``"max"``, ``"min"``, ``"mul"`` of
            the node's incoming edges' features (``GATConv``'s). (default: :obj:`"mean"`)
        bias (bool, optional): learn an additive bias. (default: :obj:`True`)
        residual (bool, optional): add a linear projection of the (target) node's input
            features to the output, as ``GATConv`` does. (default: :obj:`False`)
        alpha (float, optional): the weight of the diffusion :math:`\alpha \in [0, 1]`, the
            probability of taking one more step (QGFD's ``alpha=0.85`` is APPNP's teleport
            ``alpha=0.15``); ``0`` is plain neighbour attention. (default: :obj:`0.85`)
        steps (int, optional): diffusion steps :math:`T \ge 0`. (default: :obj:`6`)
        transition (str, optional): ``"graph"``, ``"sym"``, ``"knn"`` or ``"attention"``.
            (default: :obj:`"graph"`)
        k (int, optional): neighbours per key for ``transition="knn"``. (default: :obj:`8`)
        attention (str, optional): seed score, ``"dot"`` (scaled dot product) or
            ``"additive"`` (GAT's). (default: :obj:`"dot"`)
        tol (float, optional): stop diffusing once :math:`\max|Z^{(t+1)} - Z^{(t)}| <`
            ``tol``. (default: :obj:`None`)
        cached (bool, optional): cache the self-loop edges and graph transition of the first
            call (transductive use on one fixed graph only). (default: :obj:`False`)
        learn_hop_weights (bool, optional): learn the hop weights :math:`\theta_0..\theta_T` of
            :math:`\mathbf{Z} = \sum_k \theta_k \mathbf{P}^k \mathbf{V}` (GPR-GNN's form),
            started at the PageRank weights of ``alpha``. (default: :obj:`False`)
        redraw_dropout (bool, optional): with ``transition="attention"``, draw a new dropout
            mask of the transition at every diffusion step while training (MAGNA's recipe)
            instead of one for all steps. (default: :obj:`False`)
        checkpoint (bool, optional): with ``transition="knn"`` or ``"attention"`` (learnt
            transitions), keep no per-step copy of the values for the backward pass and run
            the diffusion again during it (a fixed graph transition keeps none anyway; see
            :func:`qgfd_pyg.diffuse`). (default: :obj:`False`)
        **kwargs: arguments of :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F_{in})` or
          :math:`((|\mathcal{V}_s|, F_{s}), (|\mathcal{V}_t|, F_{t}))` if bipartite,
          edge indices :math:`(2, |\mathcal{E}|)` or a sparse ``adj_t``
          :math:`(|\mathcal{V}_t|, |\mathcal{V}_s|)`,
          edge features :math:`(|\mathcal{E}|, D)` *(optional)*,
          edge weights :math:`(|\mathcal{E}|)` *(optional)*,
          batch vector :math:`(|\mathcal{V}|)` *(optional)*
        - **output:** node features :math:`(|\mathcal{V}|, H \cdot F_{out})` or
          :math:`(|\mathcal{V}_t|, H \cdot F_{out})` if bipartite (:math:`F_{out}` in place
          of :math:`H \cdot F_{out}` if ``concat=False``); with
          ``return_attention_weights=True`` also ``(edge_index, p0)`` with :math:`p^{(0)}` of
          shape :math:`(|\mathcal{E}'|, H)` (the adjacency with :math:`p^{(0)}` as its values
          for sparse input: a SparseTensor, or a torch sparse :math:`(N, N, H)` tensor)
    """
    _cached: Optional[Tuple[Tensor, Optional[Transition], EdgeLayout]]

    def __init__(self, in_channels: Union[int, Tuple[int, int]], out_channels: int,
                 heads: int = 1, concat: bool = True, negative_slope: float = 0.2,
                 dropout: float = 0.0, add_self_loops: bool = True,
                 edge_dim: Optional[int] = None, fill_value: Union[float, Tensor, str] = "mean",
                 bias: bool = True, residual: bool = False, *, alpha: float = 0.85,
                 steps: int = 6, transition: str = "graph", k: int = 8, attention: str = "dot",
                 tol: Optional[float] = None, cached: bool = False,
                 learn_hop_weights: bool = False, redraw_dropout: bool = False,
                 checkpoint: bool = False, **kwargs):
        # the layer aggregates with its own attention weights, along the edges' direction
        if kwargs.get("aggr", "add") != "add":
            raise ValueError(f"QGFDConv sums over its attention weights; aggr="
                             f"{kwargs['aggr']!r} is not supported")
        if kwargs.get("flow", "source_to_target") != "source_to_target":
            raise ValueError(f"QGFDConv supports flow='source_to_target' only (got "
                             f"{kwargs['flow']!r}); flip edge_index instead")
        kwargs.setdefault("aggr", "add")
        super().__init__(node_dim=0, **kwargs)
        sizes = tuple(in_channels) if isinstance(in_channels, (tuple, list)) else (in_channels,)
        if len(sizes) not in (1, 2) or not all(
                isinstance(c, int) and (c >= 1 or c == -1) for c in sizes):
            raise ValueError(f"in_channels must be a positive integer or -1, or a pair of "
                             f"them (source, target) (got {in_channels})")
        if len(sizes) == 2 and attention != "dot":
            raise ValueError("bipartite in_channels need attention='dot' (queries from the "
                             "targets, keys from the sources)")
        self.in_channels = in_channels if len(sizes) == 1 else sizes
        src_in, dst_in = sizes[0], sizes[-1]
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.heads = check_positive_int("heads", heads)
        self.concat = concat
        self.alpha = check_alpha(alpha)
        self.steps = check_steps(steps)
        self.transition = check_choice("transition", transition, TRANSITIONS)
        self.k = check_positive_int("k", k)
        self.attention = check_choice("attention", attention, ("dot", "additive"))
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1) (got {dropout})")
        self.dropout = dropout
        self.add_self_loops = add_self_loops
        if attention == "dot" and negative_slope != 0.2:
            raise ValueError(f"negative_slope={negative_slope} applies to attention='additive' "
                             f"(GAT's LeakyReLU score); the dot-product seed has no LeakyReLU")
        self.negative_slope = float(negative_slope)
        if edge_dim is not None:
            check_positive_int("edge_dim", edge_dim)
        self.edge_dim = edge_dim
        if isinstance(fill_value, str) and fill_value not in FILL_REDUCE:
            raise ValueError(f"fill_value must be a number, a tensor [edge_dim] or one of "
                             f"{', '.join(map(repr, FILL_REDUCE))} (got {fill_value!r})")
        self.fill_value = fill_value
        self.tol = check_positive_float("tol", tol, allow_none=True)
        self.cached = cached
        self.checkpoint = checkpoint
        self.redraw_dropout = redraw_dropout
        self._cached = None
        if redraw_dropout and self.tol is not None:
            raise ValueError("redraw_dropout=True needs tol=None (a new transition at every "
                             "step has no fixed point to stop at)")
        if learn_hop_weights and self.tol is not None:
            raise ValueError("learn_hop_weights=True needs tol=None (early stopping would "
                             "change which hop weights apply)")
        if learn_hop_weights:  # GPR-GNN's theta_0..theta_T, started at the PageRank weights
            self.hop_weights = Parameter(torch.empty(self.steps + 1))
        else:
            self.register_parameter("hop_weights", None)

        width = heads * out_channels
        if attention == "dot":
            self.lin_query = Linear(dst_in, width, bias=False, weight_initializer="glorot")
            self.lin_key = Linear(src_in, width, bias=False, weight_initializer="glorot")
            self.att_dst = self.att_src = None
        else:
            self.lin_query = self.lin_key = None
            self.att_dst = Parameter(torch.empty(1, heads, out_channels))
            self.att_src = Parameter(torch.empty(1, heads, out_channels))
        self.lin_value = Linear(src_in, width, bias=False, weight_initializer="glorot")
        if edge_dim is not None:  # edge features enter the seed's scores (as keys, or GAT's)
            self.lin_edge = Linear(edge_dim, width, bias=False, weight_initializer="glorot")
            self.att_edge = None if attention == "dot" else \
                Parameter(torch.empty(1, heads, out_channels))
        else:
            self.lin_edge = None
            self.register_parameter("att_edge", None)
        out_width = width if concat else out_channels
        self.res = Linear(dst_in, out_width, bias=False, weight_initializer="glorot") \
            if residual else None
        if bias:
            self.bias = Parameter(torch.empty(out_width))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        for lin in (self.lin_query, self.lin_key, self.lin_value, self.lin_edge, self.res):
            if lin is not None:
                lin.reset_parameters()
        glorot(self.att_dst)
        glorot(self.att_src)
        glorot(self.att_edge)
        zeros(self.bias)
        if self.hop_weights is not None:
            with torch.no_grad():
                self.hop_weights.copy_(ppr_hop_weights(self.alpha, self.steps))
        self._cached = None

    def forward(self, x: Union[Tensor, PairTensor], edge_index: Adj,
                edge_attr: OptTensor = None, size: Size = None,
                return_attention_weights: Optional[bool] = None,
                edge_weight: OptTensor = None, batch: OptTensor = None
                ) -> Union[Tensor, Tuple[Tensor, Union[Adj, Tuple[Adj, Tensor]]]]:
        r"""Runs the layer.

        Args:
            x (torch.Tensor or tuple): node features ``[N, F_in]``, or ``(x_src, x_dst)`` of a
                bipartite graph: target :math:`i` then queries its sources, whose values
                diffuse over a transition between sources (``"graph"``: the source -> target
                -> source walk :math:`\mathbf{D}_s^{-1}\mathbf{A}\,\mathbf{D}_t^{-1}
                \mathbf{A}^\top`; ``"knn"``: each source key's ``k`` nearest source keys; the
                other transitions are square only). Bipartite input needs
                ``add_self_loops=False`` and ``attention="dot"``. ``(x_src, None)``, which
                ``GATConv`` accepts, is a ValueError: the targets' queries need their features.
                A layer built with ``(source, target)`` in_channels takes one ``x`` as both
                sides (``to_hetero`` does so for edge types within one node type).
            edge_index (torch.Tensor or SparseTensor): edges ``[2, E]`` (source, target), or
                ``adj_t`` ``[N_dst, N_src]`` as a SparseTensor / torch sparse tensor (its values
                weight ``P``).
            edge_attr (torch.Tensor, optional): edge features ``[E, edge_dim]`` for a layer
                built with ``edge_dim`` (they enter the seed's scores; ``edge_index`` input
                only); without ``edge_dim``, a 1-D ``[E]`` tensor is taken as ``edge_weight``,
                as ``GCNConv`` / ``APPNP`` take their third argument. (default: :obj:`None`)
            size (tuple, optional): ``(N_src, N_dst)``, as in ``GATConv``; it must match the
                node features given. (default: :obj:`None`)
            return_attention_weights (bool, optional): also return the seed attention
                :math:`p^{(0)}` per edge (self-loops included), as ``GATConv`` does:
                ``(edge_index, p0)`` for ``edge_index`` input, ``(adj, p0)`` with a torch
                sparse ``adj``, a SparseTensor with :math:`p^{(0)}` as its values for
                SparseTensor input. (default: :obj:`None`)
            edge_weight (torch.Tensor, optional): non-negative weights ``[E]`` of the graph
                transition (the seed attention does not use them). (default: :obj:`None`)
            batch (torch.Tensor, optional): the graph of each node ``[N]`` (sorted, as in a
                PyG ``Batch``): a kNN transition then joins keys of one graph only; not for
                bipartite input. (default: :obj:`None`)
        """
        x_src, x_dst = self._node_features(x, size)
        edge_attr, edge_weight = self._edge_inputs(edge_index, edge_attr, edge_weight)
        if x_dst is not None:
            if batch is not None:
                raise ValueError("batch= applies to square input only (one node set); a "
                                 "bipartite layer has no per-graph kNN")
            return self._bipartite(x_src, x_dst, edge_index, edge_attr, edge_weight,
                                   return_attention_weights)
        x, N = x_src, x_src.size(0)
        if N == 0:  # no nodes: no queries, no edges
            return self._empty_output(x, return_attention_weights)
        attn_index, P, layout = self._structure(edge_index, edge_weight, N)
        mask, position, P = self._explain_masks(edge_index, edge_weight, attn_index, P, N)
        edge = None
        if edge_attr is not None:
            if position is None:
                position = self._positions(edge_index, attn_index, N)
            edge = self._edge_features(edge_attr, edge_index[1], position, attn_index, N)
        value, key, p0 = self._seed_attention(x, attn_index, layout, mask, position, edge)
        p0_used = F.dropout(p0, p=self.dropout, training=self.training)
        for hook in self._message_forward_hooks.values():  # AttentionExplainer reads 'alpha'
            hook(self, ({"alpha": p0[position], "edge_index": edge_index},), p0)
        z = self._diffuse_values(value, key, p0, p0_used, attn_index, P, batch)
        src, dst = attn_index
        out = self._heads_out(edge_aggregate(p0_used, z, src, dst, N, layout=layout), x)
        if return_attention_weights:
            return out, self._attention_weights(edge_index, attn_index, p0, (N, N))
        return out

    def _edge_inputs(self, edge_index: Adj, edge_attr: OptTensor, edge_weight: OptTensor
                     ) -> Tuple[OptTensor, OptTensor]:
        """``(edge features, transition weights)`` from ``edge_attr`` and ``edge_weight``:
        without ``edge_dim`` a 1-D ``edge_attr`` is the transition's weights."""
        if edge_attr is None:
            return None, edge_weight
        if not isinstance(edge_attr, Tensor):
            raise ValueError(f"edge_attr must be a tensor (got {type(edge_attr).__name__})")
        if self.lin_edge is None:
            if edge_attr.dim() != 1:
                raise ValueError(f"edge_attr of shape {tuple(edge_attr.shape)} needs a layer "
                                 f"built with edge_dim={edge_attr.size(-1)} (edge features "
                                 f"enter the seed's scores); a 1-D edge_attr [E] is the "
                                 f"transition's edge weights")
            if edge_weight is not None:
                raise ValueError("edge_attr [E] and edge_weight are both the transition's edge "
                                 "weights without edge_dim: pass one of them")
            return None, edge_attr
        if not isinstance(edge_index, Tensor) or is_torch_sparse_tensor(edge_index):
            raise ValueError("edge_attr needs edge_index input [2, E], not a sparse adj_t")
        attr = edge_attr.view(-1, 1) if edge_attr.dim() == 1 else edge_attr
        if attr.dim() != 2 or attr.size(0) != edge_index.size(1) \
                or attr.size(1) != self.edge_dim:
            raise ValueError(f"edge_attr must have shape [{edge_index.size(1)}, "
                             f"{self.edge_dim}] (one row per edge, edge_dim features); got "
                             f"{tuple(edge_attr.shape)}")
        return attr, edge_weight

    def _edge_features(self, edge_attr: Tensor, target: Tensor, position: Tensor,
                       attn_index: Tensor, num_nodes: int) -> Tensor:
        """The projected edge features ``[E', H, C]`` of the attention edges: an input edge's
        own (the mean over duplicates of one edge), an added self-loop's from ``fill_value``
        (by default the mean over the node's incoming edges, as ``GATConv`` fills them)."""
        count = attn_index.size(1)
        own = scatter(edge_attr, position, 0, dim_size=count, reduce="mean")
        covered = scatter(torch.ones_like(position, dtype=edge_attr.dtype), position, 0,
                          dim_size=count) > 0
        if isinstance(self.fill_value, str):
            fill = scatter(edge_attr, target, 0, dim_size=num_nodes,
                           reduce=FILL_REDUCE[self.fill_value])[attn_index[1]]
        else:
            fill = torch.as_tensor(self.fill_value, dtype=edge_attr.dtype,
                                   device=edge_attr.device).expand_as(own)
        attr = torch.where(covered.view(-1, 1), own, fill)
        return self.lin_edge(attr).view(count, self.heads, self.out_channels)

    def _node_features(self, x: Union[Tensor, PairTensor], size: Size
                       ) -> Tuple[Tensor, Optional[Tensor]]:
        """``(x, None)`` for square input, ``(x_src, x_dst)`` for bipartite input; checked."""
        pair = isinstance(x, (tuple, list)) or isinstance(self.in_channels, tuple)
        parts = (tuple(x) if isinstance(x, (tuple, list)) else (x, x)) if pair else (x,)
        if len(parts) != (2 if pair else 1):
            raise ValueError(f"x must be a tensor or a pair (x_src, x_dst) (got {len(parts)} "
                             f"parts)")
        if pair and parts[1] is None:
            raise ValueError("x=(x_src, None): QGFDConv's targets query their sources and need "
                             "their own features; pass x=(x_src, x_dst)")
        for name, t in zip(("x_src", "x_dst") if pair else ("x",), parts, strict=True):
            if not isinstance(t, Tensor) or t.dim() != 2:
                raise ValueError(f"{name} must be a node feature matrix [N, F] "
                                 f"(got {getattr(t, 'shape', type(t).__name__)})")
        if not pair and self.in_channels > 0 and x.size(1) != self.in_channels:
            raise ValueError(f"x has {x.size(1)} features but the layer expects "
                             f"in_channels={self.in_channels}")
        nodes = (parts[0].size(0), parts[-1].size(0))
        if size is not None and tuple(size) != nodes:
            raise ValueError(f"size={tuple(size)} does not match the node features "
                             f"{nodes} (sources, targets); for a bipartite graph pass "
                             f"x=(x_src, x_dst)")
        return (parts[0], parts[1]) if pair else (parts[0], None)

    def _empty_output(self, x: Tensor, return_attention_weights: Optional[bool]):
        H, C = self.heads, self.out_channels
        out = self._heads_out(x.new_zeros(0, H, C), x)
        if return_attention_weights:
            return out, (x.new_zeros(2, 0, dtype=torch.long), x.new_zeros(0, H))
        return out

    def _explain_masks(self, edge_index: Adj, edge_weight: OptTensor, attn_index: Tensor,
                       P: Optional[Transition], N: int):
        """PyG's explain: a mask per input edge scales its seed attention and its weight in
        the graph transition. Returns the mask, the attention edge of each input edge (for
        the mask and message hooks) and ``P``."""
        explaining = bool(self.explain) and getattr(self, "_edge_mask", None) is not None
        hooked = len(self._message_forward_hooks) > 0
        if (explaining or hooked) and (not isinstance(edge_index, Tensor)
                                       or is_torch_sparse_tensor(edge_index)):
            raise ValueError("explaining QGFDConv needs edge_index input, not a sparse adj_t")
        # the attention edge each input edge stands for (self loops: the node's own)
        position = self._positions(edge_index, attn_index, N) if explaining or hooked else None
        if not explaining:
            return None, position, P
        mask = self._edge_mask.sigmoid() if self._apply_sigmoid else self._edge_mask
        if mask.shape != (edge_index.size(1),):
            raise ValueError(f"the edge mask has shape {tuple(mask.shape)} but the layer "
                             f"got {edge_index.size(1)} edges")
        mask = torch.where(edge_index[0] == edge_index[1], torch.ones_like(mask), mask)
        if self.transition in ("graph", "sym"):
            weight = mask if edge_weight is None else edge_weight * mask
            P = self._graph_transition(edge_index.flip(0), N, weight)
        return mask, position, P

    def _seed_attention(self, x: Tensor, attn_index: Tensor, layout: EdgeLayout,
                        mask: OptTensor, position: OptTensor, edge: OptTensor
                        ) -> Tuple[Tensor, Tensor, Tensor]:
        """Values, keys ``[N, H, C]`` and the seed attention :math:`p^{(0)}` ``[E', H]``
        (``edge``: the attention edges' projected features ``[E', H, C]``, or ``None``)."""
        N, H, C = x.size(0), self.heads, self.out_channels
        value = self.lin_value(x).view(N, H, C)
        key = value if self.lin_key is None else self.lin_key(x).view(N, H, C)
        src, dst = attn_index
        if self.lin_query is not None:
            query = self.lin_query(x).view(N, H, C)
            score = edge_dot(query, key, src, dst, layout=layout)
            if edge is not None:  # q_i . (k_j + e_ij)
                score = score + (query[dst] * edge).sum(-1)
            score = score * (1 / math.sqrt(C))
        else:
            score = (value * self.att_dst).sum(-1)[dst] + (value * self.att_src).sum(-1)[src]
            if edge is not None:
                score = score + (edge * self.att_edge).sum(-1)
            score = F.leaky_relu(score, self.negative_slope)
        p0 = edge_softmax(score, dst, N, layout)
        if mask is not None:  # several input edges on one attention edge: their mean mask
            per_edge = scatter(mask, position, 0, dim_size=p0.size(0), reduce="mean")
            covered = scatter(torch.ones_like(mask), position, 0, dim_size=p0.size(0))
            p0 = p0 * torch.where(covered > 0, per_edge, torch.ones_like(per_edge)).view(-1, 1)
        return value, key, p0

    def _diffuse_values(self, value: Tensor, key: Tensor, p0: Tensor, p0_used: Tensor,
                        attn_index: Tensor, P: Optional[Transition], batch: OptTensor
                        ) -> Tensor:
        r""":math:`\mathbf{Z}` ``[N, H, C]``: the values diffused over the layer's transition."""
        N, H, _ = value.shape
        src, dst = attn_index
        if self.transition == "knn" and batch is not None:  # one kNN per graph and head
            return self._knn_per_graph(key, value, batch)
        if self.transition == "knn":  # one per head, block-diagonal
            return self._diffuse_heads(value, knn_transition(key.transpose(0, 1), self.k))
        if self.transition == "attention":  # P_ij = p0_ij per head, block-diagonal
            offset = (torch.arange(H, device=value.device) * N).view(H, 1)
            rows = (dst.view(1, -1) + offset).view(-1)
            cols = (src.view(1, -1) + offset).view(-1)
            # the attention edges are unique and sorted by target, then source, so the
            # blocks are in CSR order; the diffusion runs in float32 (half precision too)
            P = sparse_matrix(rows, cols, self._transition_weights(p0_used, dst, N), H * N,
                              is_sorted=True)
            if self.redraw_dropout and self.training and self.dropout > 0 and self.steps:
                # a new dropout mask of the transition at every step (the seed keeps its own)
                P = [P] + [sparse_matrix(rows, cols, self._transition_weights(
                    F.dropout(p0, self.dropout, True), dst, N), H * N, is_sorted=True)
                    for _ in range(self.steps - 1)]
            return self._diffuse_heads(value, P)
        return self._diffuse(value, P)

    @staticmethod
    def _attention_weights(edge_index: Adj, attn_index: Tensor, p0: Tensor,
                           shape: Tuple[int, int]):
        """What ``return_attention_weights`` returns, in ``GATConv``'s forms (``shape`` is
        ``(N_dst, N_src)``)."""
        src, dst = attn_index
        if isinstance(edge_index, SparseTensor):
            return SparseTensor(row=dst, col=src, value=p0, sparse_sizes=shape)
        if is_torch_sparse_tensor(edge_index):
            return torch.sparse_coo_tensor(torch.stack([dst, src]), p0, (*shape, p0.size(1))), p0
        return attn_index, p0

    @staticmethod
    def _edges(adj: Adj, edge_weight: OptTensor, shape: Tuple[int, int]
               ) -> Tuple[Tensor, Tensor, OptTensor]:
        """``(src, dst, weight)`` of ``edge_index`` or of a sparse ``adj_t`` of ``shape``
        ``(N_dst, N_src)`` (its values are the weights)."""
        if not (is_torch_sparse_tensor(adj) or isinstance(adj, SparseTensor)):
            check_edge_index(adj, max(shape))
            check_edge_weight(edge_weight, adj.size(1))
            return adj[0], adj[1], edge_weight
        if isinstance(adj, SparseTensor):  # adj_t: row = target, col = source
            sizes = adj.sparse_sizes()
            dst, src, values = adj.coo()
        else:
            coo = adj.to_sparse_coo().coalesce()
            sizes, (dst, src), values = tuple(coo.shape), coo.indices(), coo.values()
        if tuple(sizes) != tuple(shape):
            raise ValueError(f"adj_t has size {tuple(sizes)} but the node features give "
                             f"{tuple(shape)} (targets, sources)")
        if edge_weight is not None:
            raise ValueError("pass edge weights as the values of adj_t, not as edge_weight")
        return src, dst, values

    def _bipartite(self, x_src: Tensor, x_dst: Tensor, edge_index: Adj, edge_attr: OptTensor,
                   edge_weight: OptTensor, return_attention_weights: Optional[bool]):
        """The layer on a bipartite graph (see :meth:`forward`)."""
        if self.lin_query is None:
            raise ValueError("bipartite input needs attention='dot'")
        if self.add_self_loops:
            raise ValueError("bipartite input needs add_self_loops=False (no node is both "
                             "a source and a target)")
        if self.transition not in ("graph", "knn"):
            raise ValueError(f"bipartite input supports transition 'graph' or 'knn' (got "
                             f"{self.transition!r})")
        n_src, n_dst, H, C = x_src.size(0), x_dst.size(0), self.heads, self.out_channels
        src, dst, edge_weight = self._edges(edge_index, edge_weight, (n_dst, n_src))
        if src.numel() and check_values(src) and (
                int(src.max()) >= n_src or int(dst.max()) >= n_dst):
            raise ValueError(f"edge_index points outside the {n_src} sources or {n_dst} "
                             f"targets")
        pairs = torch.stack([src, dst])
        value = self.lin_value(x_src).view(n_src, H, C)
        key = self.lin_key(x_src).view(n_src, H, C)
        query = self.lin_query(x_dst).view(n_dst, H, C)
        if self.transition == "knn":
            z = self._diffuse_heads(value, knn_transition(key.transpose(0, 1), self.k))
        else:
            z = self._diffuse(value, self._source_transition(pairs, edge_weight, n_src, n_dst))
        score = edge_dot(query, key, src, dst)
        if edge_attr is not None:  # q_i . (k_j + e_ij), one feature row per input edge
            score = score + (query[dst] * self.lin_edge(edge_attr).view(-1, H, C)).sum(-1)
        p0 = softmax(score / math.sqrt(C), dst, num_nodes=n_dst)
        p0_used = F.dropout(p0, p=self.dropout, training=self.training)
        out = self._heads_out(edge_aggregate(p0_used, z, src, dst, n_dst), x_dst)
        if return_attention_weights:
            return out, self._attention_weights(edge_index, pairs, p0, (n_dst, n_src))
        return out

    def _transition_weights(self, p0_used: Tensor, dst: Tensor, num_nodes: int) -> Tensor:
        """The values ``[H * E]`` (head-major) of ``transition="attention"``'s ``P``: the seed
        attention, after dropout renormalised over each row's kept edges, so that every step
        stays a random walk (the rescaled dropout alone makes ``P``'s row sums random, and
        their product over ``T`` steps grows without bound; a row that loses every edge keeps
        no mass)."""
        weight = p0_used.float()
        if self.training and self.dropout > 0.0:
            rows = scatter(weight, dst, 0, dim_size=num_nodes, reduce="sum")[dst]
            weight = weight / rows.clamp_min(1e-12)
        return weight.t().reshape(-1)

    def _diffuse_heads(self, value: Tensor, P: Transition) -> Tensor:
        """Values ``[N, H, C]`` diffused over a block-diagonal ``[H N, H N]`` transition, one
        block per head."""
        N, H, C = value.shape
        z = self._diffuse(value.transpose(0, 1).reshape(H * N, C), P)
        return z.view(H, N, C).transpose(0, 1)

    def _diffuse(self, values: Tensor, P: Transition) -> Tensor:
        """The layer's diffusion: its kernel, or its learnt hop weights."""
        return diffuse(values, P, self.alpha, self.steps, self.tol, checkpoint=self.checkpoint,
                       hop_weights=self.hop_weights)

    def _heads_out(self, out: Tensor, x_dst: Tensor) -> Tensor:
        """``[N, H, C]`` to the output: heads concatenated or averaged, plus the residual
        (``GATConv``'s, from the targets' features) and the bias."""
        out = out.flatten(1) if self.concat else out.mean(dim=1)
        if self.res is not None:
            out = out + self.res(x_dst)
        return out if self.bias is None else out + self.bias

    @staticmethod
    def _source_transition(edge_index: Tensor, edge_weight: OptTensor, n_src: int,
                           n_dst: int) -> Transition:
        """Source -> target -> source random walk of a bipartite graph (rows by source)."""
        src, dst = edge_index
        w = torch.ones(src.numel(), device=src.device) if edge_weight is None \
            else edge_weight.float()
        out_src = scatter(w, src, 0, dim_size=n_src)
        in_dst = scatter(w, dst, 0, dim_size=n_dst)
        forward = torch.sparse_coo_tensor(edge_index, w / out_src[src], (n_src, n_dst))
        back = torch.sparse_coo_tensor(edge_index.flip(0), w / in_dst[dst], (n_dst, n_src))
        walk = torch.sparse.mm(forward.coalesce(), back.coalesce()).coalesce()
        return graph_transition(walk.indices(), n_src, walk.values(), add_self_loops=False)

    def _knn_per_graph(self, key: Tensor, value: Tensor, batch: Tensor) -> Tensor:
        """The values ``[N, H, C]`` diffused over one kNN transition per graph and head: the
        keys of each graph padded to ``[H * B, N_max, C]``, padding never selected."""
        if batch.shape != (key.size(0),) or batch.dtype != torch.long:
            raise ValueError(f"batch must be a long tensor [{key.size(0)}] (got "
                             f"{batch.dtype} {tuple(batch.shape)})")
        if batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any()):
            raise ValueError("batch must be sorted (nodes grouped by graph, as in a PyG Batch)")
        N, H, C = key.shape
        keys, valid = to_dense_batch(key, batch)  # [B, M, H, C], [B, M]
        B, M = valid.shape
        keys = keys.permute(2, 0, 1, 3).reshape(H * B, M, C)
        P = knn_transition(keys, self.k, mask=~valid.repeat(H, 1))
        values = to_dense_batch(value, batch)[0].permute(2, 0, 1, 3).reshape(H * B * M, C)
        z = self._diffuse(values, P)
        return z.view(H, B, M, C)[:, valid].transpose(0, 1)  # [N, H, C]

    def _graph_transition(self, flow: Tensor, num_nodes: int, weight: OptTensor) -> Transition:
        """``P`` of ``transition="graph"`` (random walk) or ``"sym"`` over ``flow`` edges."""
        return graph_transition(flow, num_nodes, weight, self.add_self_loops,
                                normalization="rw" if self.transition == "graph" else "sym")

    @staticmethod
    def _positions(edge_index: Tensor, attn_index: Tensor, num_nodes: int) -> Tensor:
        """For each input edge ``(j, i)``, the index of the attention edge ``(j, i)`` (the
        attention edges are unique and sorted by target, then source)."""
        keys = attn_index[1] * num_nodes + attn_index[0]
        return torch.searchsorted(keys, edge_index[1] * num_nodes + edge_index[0])

    def _structure(self, edge_index: Adj, edge_weight: OptTensor,
                   num_nodes: int) -> Tuple[Tensor, Optional[Transition], EdgeLayout]:
        """Attention edges (with self-loops, sorted by target), their grouping and, for
        ``transition="graph"`` / ``"sym"``, ``P``."""
        compiling = torch.compiler.is_compiling()  # the cache holds eager transitions only
        if self._cached is not None and not compiling:
            return self._cached
        src, dst, edge_weight = self._edges(edge_index, edge_weight, (num_nodes, num_nodes))
        # one sort gives the attention edges (unique, sorted by target, then source), their
        # grouping and P (rows by target: the reversed edges)
        normalization = {"graph": "rw", "sym": "sym"}.get(self.transition)
        structure = graph_structure(src, dst, num_nodes, edge_weight, self.add_self_loops,
                                    normalization)
        if self.cached and not compiling:
            self._cached = tuple(structure)
        return tuple(structure)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"heads={self.heads}, alpha={self.alpha}, steps={self.steps}, "
                f"transition={self.transition!r}"
                + ("" if self.attention == "dot" else f", attention={self.attention!r}") + ")")
