r"""NBFNet (Zhu et al., *Neural Bellman-Ford Networks*, NeurIPS 2021) as a ``kg`` baseline,
written after the published design (DeepGraphLearning/NBFNet, KiddoZhu/NBFNet-PyG).

For a query :math:`(a, q)` every entity gets a representation by a generalised Bellman-Ford
iteration from the anchor: the boundary condition puts the query relation's embedding on
:math:`a` and zeros elsewhere, :math:`h^{(0)} = b`; each layer sends DistMult messages
:math:`h_u^{(l)} \odot w_\rho^{(l)}(q)` along the edges (inverse relations included), adds
the boundary as a self-loop message and aggregates with PNA (mean, max, min, std, each
scaled by 1, :math:`s_v` and :math:`1/s_v`, :math:`s_v = \log d_v / \overline{\log d}` with
:math:`d_v` the in-degree plus the loop),

.. math::
    h_v^{(l+1)} = \mathrm{ReLU}\Big(\mathrm{LN}\big(W^{(l)} [h_v^{(l)} \,\|\,
    \mathrm{PNA}_{u \to v}(h_u^{(l)} \odot w_\rho^{(l)}(q), b_v)]\big)\Big) + h_v^{(l)},

and an MLP scores :math:`[h_v^{(L)} \,\|\, \mathbf{e}_q]`. The relation vectors
:math:`w^{(l)}(q)` are a linear map of the query embedding (``dependent``, NBFNet's
FB15k-237 setting) or free per layer (its WN18RR setting). The loss is NBFNet's: binary
cross-entropy of the answer against negatives drawn uniformly from the entities that are no
training answer of the query, the negatives weighted by the softmax of their scores over the
self-adversarial temperature.

Entities that no edge touches and that are not the query's anchor all get the same
representation; the model computes the layers on the touched nodes plus one such node and
gives its score to the rest (the same numbers, less work on graphs with many isolated ids).
"""
from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Embedding, LayerNorm, Linear, Module, ModuleList, Sequential, ReLU

from ..checks import check_positive_int
from .models import ModelSpec
from .relational import KGGraph, draw_negatives


class RelationalPNAConv(Module):
    r"""One NBFNet layer: DistMult messages along typed edges, the boundary as a self-loop
    message, PNA aggregation (4 aggregators x 3 degree scalers), a linear update of the
    node's state and the aggregate, layer norm, ReLU.

    Args:
        channels (int): state width :math:`d`.
        num_relations (int): edge relations (inverses included).
        dependent (bool): relation vectors from the query (else a table per layer).
            (default: ``True``)
        layer_norm (bool): (default: ``True``)

    Shapes:
        - **input:** x, boundary :math:`(N, B, d)` (nodes first), query :math:`(B, d)`,
          src, dst, rel :math:`(E)`, scale :math:`(N, 1)`
        - **output:** :math:`(N, B, d)`
    """
    eps = 1e-6

    def __init__(self, channels: int, num_relations: int, dependent: bool = True,
                 layer_norm: bool = True):
        super().__init__()
        self.channels, self.num_relations, self.dependent = channels, num_relations, dependent
        self.relation = (Linear(channels, num_relations * channels) if dependent
                         else Embedding(num_relations, channels))
        self.linear = Linear(13 * channels, channels)
        self.norm = LayerNorm(channels) if layer_norm else None

    def reset_parameters(self) -> None:
        self.relation.reset_parameters()
        self.linear.reset_parameters()
        if self.norm is not None:
            self.norm.reset_parameters()

    def forward(self, x: Tensor, boundary: Tensor, query: Tensor, src: Tensor, dst: Tensor,
                rel: Tensor, scale: Tensor) -> Tensor:
        N, B, d = x.shape  # nodes first: the scatters reduce over contiguous rows
        if self.dependent:
            relation = self.relation(query).view(B, self.num_relations, d).transpose(0, 1)
        else:
            relation = self.relation.weight.unsqueeze(1)
        messages = x[src] * relation[rel]  # [E, B, d]
        at = dst.view(-1, 1, 1).expand_as(messages)
        # every aggregator over the node's in-messages and its boundary (a self loop)
        total = boundary.index_add(0, dst, messages)
        squares = (boundary * boundary).index_add(0, dst, messages * messages)
        high = boundary.scatter_reduce(0, at, messages, "amax", include_self=True)
        low = boundary.scatter_reduce(0, at, messages, "amin", include_self=True)
        count = scale.new_ones(N).index_add(0, dst, scale.new_ones(dst.numel())).view(N, 1, 1)
        mean = total / count
        std = (squares / count - mean * mean).clamp_min(self.eps).sqrt()
        features = torch.cat([mean, high, low, std], dim=-1)  # [N, B, 4d]
        # W [x | f | s f | f / s] without building the [N, B, 12d] scaled copy
        weight = self.linear.weight
        own, scaled = weight[:, :d], weight[:, d:].view(d, 3, 4 * d)
        by_scaler = features @ scaled.flatten(0, 1).t()  # [N, B, d * 3]: (output, scaler)
        scales = torch.cat([torch.ones_like(scale), scale, 1 / scale.clamp_min(1e-2)], dim=-1)
        out = (x @ own.t() + self.linear.bias
               + (by_scaler.view(N, B, d, 3) * scales.view(N, 1, 1, 3)).sum(-1))
        if self.norm is not None:
            out = self.norm(out)
        return F.relu(out)


def _entity_count(graph: KGGraph) -> int:
    """The entities of ``graph``'s facts before a batch's were hidden (kept on the graph)."""
    root = graph.root
    if getattr(root, "_entity_count", None) is None:
        root._entity_count = int(torch.unique(torch.cat([root.src, root.dst])).numel())
    return root._entity_count


class NBFNet(Module):
    r"""NBFNet over the runner's :class:`~qgfd_pyg.bench.relational.KGGraph` (see the module
    docstring), with the ``kg`` kind's interface (``prepare`` / ``score`` / ``forward``) and
    its own loss (:meth:`loss`).

    Args:
        num_entities (int): entities :math:`N`.
        num_relations (int): relations :math:`R` (the graph has :math:`2R` with inverses).
        hidden (int): width of the query embedding and of every layer. (default: ``32``)
        layers (int): Bellman-Ford iterations. (default: ``6``)
        dependent (bool): query-dependent relation vectors. (default: ``True``)
        layer_norm (bool): (default: ``True``)
        short_cut (bool): add each layer's input to its output. (default: ``True``)
        num_negative (int): negatives per query in :meth:`loss`. (default: ``32``)
        temperature (float): self-adversarial temperature; ``0`` weighs the negatives
            equally. (default: ``0.5``)

    Shapes:
        - **input:** entity :math:`(B)`, relation :math:`(B)` (``0..2R-1``), a ``KGGraph``
        - **output:** scores :math:`(B, N)`

    Training takes a batch's gradient in parts of :attr:`micro_batch` queries (backward after
    each, one optimiser step per batch, each part's flow with the whole batch's edges hidden):
    the same gradient as the whole batch at a quarter of its activation memory (PNA keeps
    ``[E, B, d]`` messages per layer: 15 GB at ``B = 64`` on WN18RR v2 on a CPU).
    """
    per_relation = False
    micro_batch = 16  # queries per backward pass within a training batch (memory only)

    def __init__(self, num_entities: int, num_relations: int, hidden: int = 32,
                 layers: int = 6, dependent: bool = True, layer_norm: bool = True,
                 short_cut: bool = True, num_negative: int = 32, temperature: float = 0.5,
                 **_: Any):
        super().__init__()
        self.num_entities, self.num_relations = num_entities, num_relations
        self.hidden = check_positive_int("hidden", hidden)
        self.num_negative = check_positive_int("num_negative", num_negative)
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (got {temperature})")
        self.temperature, self.short_cut = float(temperature), short_cut
        self.query = Embedding(2 * num_relations, hidden)
        self.layers = ModuleList([
            RelationalPNAConv(hidden, 2 * num_relations, dependent, layer_norm)
            for _ in range(check_positive_int("layers", layers))])
        self.mlp = Sequential(Linear(2 * hidden, 2 * hidden), ReLU(), Linear(2 * hidden, 1))

    def reset_parameters(self) -> None:
        self.query.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()
        for module in self.mlp:
            if isinstance(module, Linear):
                module.reset_parameters()

    def prepare(self, graph: KGGraph, relation: int = 0) -> KGGraph:
        return graph

    def _compact(self, graph: KGGraph, entity: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """The nodes the layers run on (touched by an edge, or an anchor) and the edges in
        their local ids; local id ``len(nodes)`` is one untouched entity."""
        nodes = torch.unique(torch.cat([graph.src, graph.dst, entity]))
        local = torch.full((self.num_entities,), nodes.numel(), dtype=torch.long,
                           device=nodes.device)
        local[nodes] = torch.arange(nodes.numel(), device=nodes.device)
        return nodes, local, local[graph.src], local[graph.dst]

    def score(self, entity: Tensor, relation: Tensor, graph: KGGraph) -> Tensor:
        """Scores ``[B, N]`` of every entity for the queries ``(entity, relation)``."""
        relation = relation.view(-1)
        nodes, local, src, dst = self._compact(graph, entity)
        n = nodes.numel() + 1
        degree = torch.bincount(dst, minlength=n).float() + 1  # the boundary's loop
        scale = degree.log()
        # the mean log-degree over the graph's entities (a node without edges adds log 1 = 0):
        # NBFNet's, and the same for every batch of one graph (not over the batch's anchors)
        mean = scale[:-1].sum() / _entity_count(graph)
        scale = (scale / mean.clamp_min(1e-6)).view(n, 1)
        B = entity.numel()
        query = self.query(relation)
        boundary = query.new_zeros(n, B, self.hidden)
        boundary[local[entity], torch.arange(B, device=entity.device)] = query
        x = boundary
        for layer in self.layers:
            out = layer(x, boundary, query, src, dst, graph.rel, scale)
            x = out + x if self.short_cut else out
        feature = torch.cat([x, query.unsqueeze(0).expand(n, -1, -1)], dim=-1)
        scores = self.mlp(feature).squeeze(-1).t()  # [B, n]
        return scores[:, local]

    def forward(self, entity: Tensor, relation: Tensor, graph: KGGraph) -> Tensor:
        return self.score(entity, relation, graph)

    def loss(self, scores: Tensor, answer: Tensor, exclude: Tensor) -> Tensor:
        """NBFNet's loss on ``scores`` ``[B, N]``: the answer against :attr:`num_negative`
        negatives drawn uniformly (with replacement) from the entities ``exclude`` ``[B, N]``
        leaves (it marks the query's training answers and non-candidates)."""
        rows = torch.arange(answer.numel(), device=scores.device)
        negatives = scores.gather(1, draw_negatives(exclude, answer, self.num_negative))
        pred = torch.cat([scores[rows, answer].view(-1, 1), negatives], dim=1)
        target = torch.zeros_like(pred)
        target[:, 0] = 1.0
        losses = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
        weight = torch.ones_like(pred)
        weight[:, 1:] = (torch.softmax(negatives.detach() / self.temperature, dim=1)
                         if self.temperature > 0 else 1.0 / self.num_negative)
        return ((losses * weight).sum(1) / weight.sum(1)).mean()


def nbfnet_spec(dependent: bool, temperature: float, note: str, default: bool = True
                ) -> ModelSpec:
    """NBFNet at its published inductive configuration (6 layers of 32, DistMult messages,
    PNA, short cut, layer norm, 32 negatives, Adam 5e-3)."""
    return ModelSpec(NBFNet, 5e-3, 0.0,
                     dict(hidden=32, layers=6, dependent=dependent, temperature=temperature,
                          num_negative=32),
                     "NBFNet, its published inductive configuration: 6 layers of 32, DistMult "
                     "messages, PNA, short cut, layer norm, 32 negatives, Adam 5e-3; " + note,
                     default)


NBFNET_MODELS: Dict[str, ModelSpec] = {
    "nbfnet": nbfnet_spec(True, 0.5, "query-dependent relations, temperature 0.5 (its "
                                     "FB15k-237 setting); the batch's own edges hidden, as "
                                     "for every model (its remove_one_hop not applied)")}

__all__ = ["RelationalPNAConv", "NBFNet", "nbfnet_spec", "NBFNET_MODELS"]
