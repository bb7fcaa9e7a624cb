r"""The relational QGFD model: a query-conditioned flow from a query's anchor entity over a
knowledge graph, its relation weights per step chosen by the query (:class:`RelationalQGFD`)."""
import math
from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import GRU, Embedding, Linear, Module, Parameter

from ..checks import check_alpha, check_choice, check_positive_int, check_steps
from ..diffusion import ppr_hop_weights
from .flow import relational_flow
from .graph import RelationalGraph
from .steps import NORMALIZATIONS


def compose(word: Embedding, words: Tensor) -> Tensor:
    """``w_1 * ... * w_L`` per query (DistMult's composition; padding ``-1`` gives ones)."""
    vectors = word(words.clamp_min(0))
    vectors = torch.where((words >= 0).unsqueeze(-1), vectors, torch.ones_like(vectors))
    return vectors.prod(dim=1)


CONTROLLERS = ("relation", "path", "path-table", "text")


class Controls(NamedTuple):
    """What :class:`RelationalQGFD`'s controller gives a batch of queries."""
    relation_weights: Tensor  # [T, B H, 2R + 1]
    hop_weights: Tensor  # [B H, T + 1]
    mix: Tensor  # [B, H]
    vector: Tensor  # [B, d], the query vector of the embedding term
    anchor_offset: Tensor  # [B], added to the anchor's own score


class RelationalQGFD(Module):
    r"""QGFD over a knowledge graph: a query (an anchor entity :math:`e` and a relation, a
    relation path or a question's words :math:`q`) sends mass from :math:`e` along the facts,
    choosing at every step which relations to follow, and scores every entity by the mass
    that reaches it,

    .. math::
        p_T(q) = \sum_{k=0}^{T} \theta_k(q)\, \mathbf{1}_e P_0(q) \cdots P_{k-1}(q),
        \qquad P_t(q) = D_t(q)^{-1} \sum_\rho a_t(q, \rho)\, A_\rho,

    .. math::
        \mathrm{score}(q, v) = \log\big(p_T(q)_v + \epsilon\big)
        + (\mathbf{e}_e \odot \mathbf{w}_q)^\top \mathbf{e}_v ,

    over the facts, their inverses and a self loop (:math:`2R + 1` relations :math:`\rho`,
    adjacency :math:`A_\rho`): :func:`~qgfd_pyg.relational_flow`, whose other
    ``normalization`` choices are offered too. :math:`a_t(q)` is the softmax of the
    controller's logits, :math:`\theta(q)` learnt hop weights, and the second term
    (``embedding_scores``) a DistMult-style score that ranks what no walk reaches.

    The controller gives, per query and step, logits over the ``2R + 1`` flow relations (the
    relations, their inverses, a self loop that lets a walk stop):

    - ``"relation"``: a learnt table indexed by (step, query relation): a ``T``-step rule per
      query relation, NeuralLP-style (KG completion, Countries);
    - ``"path"`` (``path-qa``): the path's relation at step ``t`` (the self loop, "stay",
      past its end) as a vector :math:`k_{r_t}`, mapped by a learnt per-step matrix
      :math:`W_t` and scored against every flow relation's vector,
      :math:`k_{r_t}^\top W_t k_\rho / \sqrt{d}`. The query's words and the flow's
      relations share the vectors :math:`k` (they name the same relations) and
      :math:`W_t` starts at the identity, so the flow starts out following the path as
      written and learns from there; ``"path-table"``: a free table indexed by (step,
      the path's relation or a stop word) instead, nothing shared (the ablation);
    - ``"text"``: a GRU over the question's tokens, one linear map per step (MetaQA,
      TransferNet's way).

    The hop weights :math:`\theta(q) = \mathrm{softmax}` of learnt logits per query relation
    (``"relation"``), per path length (``"path"``) or from the question (``"text"``), started
    at the PageRank weights of ``alpha``. With ``heads > 1`` the query runs that many flows
    (each its own controller) and mixes them with learnt weights.

    Args:
        num_entities (int): entities :math:`N`.
        num_relations (int): relations :math:`R` (inverses are added).
        hidden (int): embedding width. (default: ``64``)
        steps (int): flow steps :math:`T`; ``0`` gives the control whose flow stays on the
            anchor (scores from the embeddings alone). (default: ``3``)
        alpha (float): the hop weights start from PageRank's,
            :math:`\theta_k = (1 - \alpha)\alpha^k`: ``alpha`` is the continuation
            probability (APPNP's teleport is ``1 - alpha``). (default: ``0.9``)
        heads (int): flows per query. (default: ``1``)
        controller (str): ``"relation"``, ``"path"``, ``"path-table"`` or ``"text"``.
            (default: ``"relation"``)
        vocab (int, optional): words of a text or path query (default: ``2R``, the relations).
        max_words (int): longest path (``"path"``). (default: ``3``)
        embedding_scores (bool): add the embedding term; without it the model has no
            parameter per entity and scores a graph of new entities (inductive KG
            completion) as it scores the training graph. (default: ``True``)
        dropout (float): dropout on the query vector of the embedding term. (default: ``0.0``)
        eps (float): :math:`\epsilon` in :math:`\log(p_T + \epsilon)`. (default: ``1e-6``)
        normalization (str): ``"node"``, ``"relation"`` or ``"none"``, see
            :func:`qgfd_pyg.relational_flow`. (default: ``"node"``)
        dangling (str): ``"keep"`` or ``"drop"``, see :func:`qgfd_pyg.relational_flow`.
            (default: ``"keep"``)
        suppress_anchor (bool): start the learnt offset of the anchor's own score at
            :math:`\log \epsilon` instead of 0, so that the mass the flow keeps on the anchor
            (:math:`\theta_0`, walks that return) does not rank it first before the model has
            learnt how often a query answers itself. (default: ``False``)

    Shapes:
        - **input:** anchor :math:`(B)`, query :math:`(B)` relation ids or :math:`(B, L)`
          word ids padded with ``-1``, edge_index :math:`(2, E)` and edge_type :math:`(E)`,
          or a :class:`~qgfd_pyg.RelationalGraph` from :meth:`flow_graph`
        - **output:** scores :math:`(B, N)`

    Example::

        >>> import torch
        >>> from qgfd_pyg import RelationalQGFD
        >>> edge_index = torch.tensor([[0, 1, 2], [1, 2, 3]])  # facts (head, tail)
        >>> edge_type = torch.tensor([0, 1, 0])  # their relations
        >>> model = RelationalQGFD(num_entities=4, num_relations=2, steps=2)
        >>> graph = model.flow_graph(edge_index, edge_type)  # inverses and loops added
        >>> model(torch.tensor([0, 1]), torch.tensor([0, 1]), graph).shape
        torch.Size([2, 4])
    """

    def __init__(self, num_entities: int, num_relations: int, hidden: int = 64,
                 steps: int = 3, alpha: float = 0.9, heads: int = 1,
                 controller: str = "relation", vocab: Optional[int] = None,
                 max_words: int = 3, embedding_scores: bool = True, dropout: float = 0.0,
                 eps: float = 1e-6, normalization: str = "node", dangling: str = "keep",
                 suppress_anchor: bool = False):
        super().__init__()
        self.num_entities, self.num_relations = num_entities, num_relations
        self.steps, self.alpha = check_steps(steps), check_alpha(alpha)
        self.heads = check_positive_int("heads", heads)
        self.hidden = check_positive_int("hidden", hidden)
        self.controller = check_choice("controller", controller, CONTROLLERS)
        self.vocab = vocab or 2 * num_relations
        self.max_words = check_positive_int("max_words", max_words)
        if not eps > 0:
            raise ValueError(f"eps must be positive (got {eps})")
        self.embedding_scores, self.dropout, self.eps = embedding_scores, dropout, float(eps)
        self.normalization = check_choice("normalization", normalization, NORMALIZATIONS)
        self.dangling = check_choice("dangling", dangling, ("keep", "drop"))
        self.suppress_anchor = bool(suppress_anchor)
        flow_relations = 2 * num_relations + 1
        H, T = self.heads, self.steps
        # an entity table only for the embedding term: without it nothing is tied to an
        # entity, and the model applies to a graph of entities it never saw
        self.entity = Embedding(num_entities, hidden) if embedding_scores else None
        self.word = Embedding(self.vocab, hidden)
        if controller == "text":
            self.encoder = GRU(hidden, hidden, batch_first=True)
            self.step_map = Linear(hidden, H * T * flow_relations)
            self.hop_map = Linear(hidden, H * (T + 1))
            self.head_map = Linear(hidden, H)
            self.anchor_map = Linear(hidden, 1)
            self.query_map = Linear(hidden, hidden)
        else:
            # relation: rows are query relations; path: words plus a stop word / path lengths
            step_rows = self.vocab + (1 if controller == "path-table" else 0)
            key_rows = self.vocab if controller == "relation" else self.max_words + 1
            if controller == "path":
                self.relation_key = Parameter(torch.empty(flow_relations, hidden))
                self.step_map = Parameter(torch.empty(H, T, hidden, hidden))
            else:
                self.step_logits = Parameter(torch.empty(H, T, step_rows, flow_relations))
            self.hop_logits = Parameter(torch.empty(key_rows, H, T + 1))
            self.head_logits = Parameter(torch.empty(key_rows, H))
            self.anchor_logits = Parameter(torch.empty(key_rows))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.entity is not None:
            torch.nn.init.xavier_uniform_(self.entity.weight)
        if self.controller == "text":  # the GRU's tokens: distinct words, an unsaturated GRU
            torch.nn.init.normal_(self.word.weight, 0.0, 1.0)
        else:  # near-identity compositions (the embedding term multiplies the words)
            torch.nn.init.normal_(self.word.weight, 1.0, 0.1)
        start = ppr_hop_weights(self.alpha, self.steps).clamp_min(1e-6).log()
        anchor = math.log(self.eps) if self.suppress_anchor else 0.0
        if self.controller == "text":
            self.encoder.reset_parameters()
            for lin in (self.step_map, self.hop_map, self.head_map, self.query_map,
                        self.anchor_map):
                lin.reset_parameters()
            torch.nn.init.zeros_(self.anchor_map.weight)
            torch.nn.init.constant_(self.anchor_map.bias, anchor)
            torch.nn.init.zeros_(self.step_map.weight)
            torch.nn.init.zeros_(self.step_map.bias)
            torch.nn.init.zeros_(self.hop_map.weight)
            with torch.no_grad():
                self.hop_map.bias.copy_(start.repeat(self.heads))
        else:
            if self.controller == "path":
                torch.nn.init.normal_(self.relation_key)
                with torch.no_grad():
                    self.step_map.copy_(torch.eye(self.hidden).expand_as(self.step_map))
            else:
                torch.nn.init.normal_(self.step_logits, 0.0, 0.01)  # near-uniform walks
            with torch.no_grad():
                self.hop_logits.copy_(start.expand_as(self.hop_logits))
            torch.nn.init.zeros_(self.head_logits)
            torch.nn.init.constant_(self.anchor_logits, anchor)

    def controls(self, words: Tensor) -> "Controls":
        """Per query: relation weights ``[T, B H, 2R + 1]``, hop weights ``[B H, T + 1]``,
        head mixture ``[B, H]``, the query vector of the embedding term ``[B, d]`` and the
        offset of the anchor's own score ``[B]``."""
        B, H, T = words.size(0), self.heads, self.steps
        if self.controller == "text":
            tokens = self.word(words.clamp_min(0)) * (words >= 0).unsqueeze(-1)
            lengths = (words >= 0).sum(1).clamp_min(1).cpu()
            packed = torch.nn.utils.rnn.pack_padded_sequence(tokens, lengths, batch_first=True,
                                                             enforce_sorted=False)
            state = self.encoder(packed)[1][-1]  # [B, d]
            step = self.step_map(state).view(B, H, T, -1).permute(2, 0, 1, 3)
            hop = self.hop_map(state).view(B, H, T + 1)
            head = self.head_map(state)
            vector = self.query_map(state)
            offset = self.anchor_map(state).view(B)
        else:
            if self.controller == "relation":
                rows = words[:, :1].expand(B, T) if T else words[:, :0]
                key = words[:, 0]
            else:  # the path's relation at each step; stop (or stay) past its end
                padded = F.pad(words, (0, max(0, T - words.size(1))), value=-1)[:, :T]
                stop = 2 * self.num_relations if self.controller == "path" else self.vocab
                rows = torch.where(padded >= 0, padded, torch.full_like(padded, stop))
                key = (words >= 0).sum(1)
            if self.controller == "path":  # k_{r_t}^T W_t k_rho / sqrt(d): [T, B, H, 2R + 1]
                query = torch.einsum("tbd,htde->tbhe", self.relation_key[rows.t()],
                                     self.step_map)
                step = query @ self.relation_key.t() / math.sqrt(self.hidden)
            else:  # step_logits[h, t, rows[b, t]] -> [T, B, H, 2R + 1]
                t_index = torch.arange(T, device=words.device).view(T, 1)
                step = self.step_logits[:, t_index, rows.t()].permute(1, 2, 0, 3)
            hop, head = self.hop_logits[key], self.head_logits[key]
            vector, offset = compose(self.word, words), self.anchor_logits[key]
        relation_weights = step.softmax(-1).reshape(T, B * H, 2 * self.num_relations + 1)
        return Controls(relation_weights, hop.softmax(-1).reshape(B * H, T + 1),
                        head.softmax(-1), vector, offset)

    def flow_graph(self, edge_index: Tensor, edge_type: Tensor) -> RelationalGraph:
        """The graph the model's flow runs on, from the facts ``edge_index`` ``[2, E]`` (head,
        tail) and their relations ``edge_type`` ``[E]``: every fact also reversed and a loop
        on every entity (:meth:`RelationalGraph.with_inverses`). Build it once and pass it to
        :meth:`forward`; :meth:`~RelationalGraph.masked` hides a batch's own facts."""
        return RelationalGraph.with_inverses(edge_index, edge_type, self.num_relations,
                                             self.num_entities)

    def _graph(self, edge_index: Union[Tensor, RelationalGraph],
               edge_type: Optional[Tensor]) -> RelationalGraph:
        if isinstance(edge_index, RelationalGraph):
            graph = edge_index
            want = (self.num_entities, 2 * self.num_relations + 1)
            if (graph.num_nodes, graph.num_relations) != want:
                raise ValueError(f"the graph has {graph.num_nodes} nodes and "
                                 f"{graph.num_relations} relations; the model flows over "
                                 f"{want[0]} entities and {want[1]} relations (build it with "
                                 f"flow_graph(edge_index, edge_type))")
            return graph
        if edge_type is None:
            raise ValueError("edge_type is required with an edge_index (the relation of each "
                             "fact); or pass a RelationalGraph from flow_graph()")
        return self.flow_graph(edge_index, edge_type)

    def flow(self, anchor: Tensor, words: Tensor, graph: RelationalGraph,
             controls: Optional[Controls] = None) -> Tensor:
        """:math:`p_T` ``[B, N]``: the heads' flows from the anchors, mixed (one
        :func:`~qgfd_pyg.relational_flow` for every query and head)."""
        B, N, H = anchor.numel(), self.num_entities, self.heads
        a, theta, mix = (controls or self.controls(words))[:3]
        p0 = torch.zeros(B * H, N, device=anchor.device, dtype=self.word.weight.dtype)
        p0[torch.arange(B * H, device=anchor.device), anchor.repeat_interleave(H)] = 1.0
        p = relational_flow(p0, graph, a, hop_weights=theta, normalization=self.normalization,
                            dangling=self.dangling, validate=False).view(B, H, N)
        return (p * mix.unsqueeze(-1)).sum(1)

    def forward(self, anchor: Tensor, query: Tensor,
                edge_index: Union[Tensor, RelationalGraph],
                edge_type: Optional[Tensor] = None) -> Tensor:
        """Scores ``[B, N]`` of every entity for the queries (``anchor`` ``[B]``, ``query``
        ``[B]`` relation ids or ``[B, L]`` word ids padded with ``-1``) over the facts
        ``edge_index`` / ``edge_type`` or a graph from :meth:`flow_graph`."""
        graph = self._graph(edge_index, edge_type)
        words = query.view(-1, 1) if query.dim() == 1 else query
        if anchor.dim() != 1 or words.size(0) != anchor.numel():
            raise ValueError(f"anchor must be [B] and query [B] or [B, L] (got "
                             f"{list(anchor.shape)} and {list(query.shape)})")
        controls = self.controls(words)
        scores = (self.flow(anchor, words, graph, controls) + self.eps).log()
        if self.embedding_scores:
            vector = F.dropout(self.entity(anchor) * controls.vector, self.dropout,
                               self.training)
            scores = scores + vector @ self.entity.weight.t()
        # the anchor's own score: the flow keeps mass there (theta_0, self loops), while a
        # query's answer is rarely its own entity; a learnt offset per query says how rarely
        rows = torch.arange(anchor.numel(), device=anchor.device)
        return scores.index_put((rows, anchor), scores[rows, anchor] + controls.anchor_offset)

    @torch.no_grad()
    def explain(self, query: Tensor) -> Tensor:
        """The relation weights each step gives, ``[B, H, T, 2R + 1]`` (columns: the
        relations, their inverses ``r + R``, then the self loop ``2R``): the path the flow
        follows for each query, readable as a rule."""
        words = query.view(-1, 1) if query.dim() == 1 else query
        a = self.controls(words).relation_weights
        return a.view(self.steps, words.size(0), self.heads, -1).permute(1, 2, 0, 3)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.num_entities}, {self.num_relations}, "
                f"steps={self.steps}, heads={self.heads}, controller={self.controller!r})")


__all__ = ["RelationalQGFD", "Controls", "compose", "CONTROLLERS"]
