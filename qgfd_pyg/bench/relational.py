r"""What the knowledge-graph (``kg``) and question-answering (``qa``) kinds share: triples and
their files, the training graph, the one relational QGFD model, and the encoder baselines.

A query is an anchor entity and words (``[B, L]`` ids, ``-1`` padded): the query relation
(KG completion and Countries, ``L = 1``), a relation path (``path-qa``), or the tokens of a
question (MetaQA). Every model scores every entity for a query.

:class:`RelationalQGFD` answers by flowing mass from the anchor over the training graph with
the package's :func:`qgfd_pyg.relational_flow`: at step ``t`` the query weighs the relations
(inverse relations and a self loop included) with :math:`a_t(q) = \mathrm{softmax}(\cdot)`
from a small controller, and its learnt hop weights :math:`\theta(q)` sum the walks,
:math:`p_T = \sum_k \theta_k(q)\, p_0 P_0(q) \cdots P_{k-1}(q)`. Scores are
:math:`\log(p_T + \epsilon)`, plus (``embedding_scores``) a DistMult-style term
:math:`(e_a \odot w_q) \cdot e_v` that ranks what the flow does not reach.
"""
import math
import os
from functools import partial
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import GRU, Embedding, Linear, Module, Parameter
from torch_geometric.typing import WITH_TORCH_SPARSE, SparseTensor

from .._checks import check_alpha, check_choice, check_positive_int, check_steps
from ..diffusion import ppr_hop_weights
from ..flow import NORMALIZATIONS, RelationalGraph, relational_flow
from .data import missing_data
from .models import GAT, APPNPNet


class Triples(NamedTuple):
    """``[n, 3]`` long tensors of (head, relation, tail) per split."""
    train: Tensor
    valid: Tensor
    test: Tensor


def queries(triples: Tensor, num_relations: int) -> Tensor:
    """``[2n, 3]`` (entity, query relation, answer): tail queries, then head queries as
    inverse relations ``r + R``."""
    h, r, t = triples.unbind(1)
    return torch.cat([torch.stack([h, r, t], 1), torch.stack([t, r + num_relations, h], 1)])


class KGGraph:
    """The training graph with inverse edges: ``src -> dst`` with relation ``rel``; edge
    ``i`` and ``i + n`` come from training triple ``i``. :meth:`without` hides the edges of
    some triples (a batch's own); :meth:`relational` is the graph the flow runs on."""

    def __init__(self, src: Tensor, dst: Tensor, rel: Tensor,
                 parent: Optional["KGGraph"] = None, hidden: Optional[Tensor] = None):
        self.src, self.dst, self.rel = src, dst, rel
        self._parent, self._hidden = parent, hidden
        self._flow: Dict[Tuple[int, int], RelationalGraph] = {}

    @classmethod
    def from_triples(cls, train: Tensor, num_relations: int) -> "KGGraph":
        h, r, t = train.unbind(1)
        return cls(torch.cat([h, t]), torch.cat([t, h]), torch.cat([r, r + num_relations]))

    def without(self, triple_ids: Optional[Tensor]) -> "KGGraph":
        """The graph without the edges (both directions) of training triples ``triple_ids``."""
        if triple_ids is None or triple_ids.numel() == 0:
            return self
        keep = torch.ones(self.src.numel(), dtype=torch.bool, device=self.src.device)
        n = self.src.numel() // 2
        hidden = torch.cat([triple_ids, triple_ids + n])
        keep[hidden] = False
        return KGGraph(self.src[keep], self.dst[keep], self.rel[keep], self, hidden)

    @property
    def edge_index(self) -> Tensor:
        return torch.stack([self.src, self.dst])

    def adj_t(self, num_nodes: int) -> SparseTensor:
        """The transposed adjacency (row: target), for layers that multiply by it."""
        return SparseTensor(row=self.dst, col=self.src, sparse_sizes=(num_nodes, num_nodes))

    def relational(self, num_nodes: int, num_relations: int) -> RelationalGraph:
        """The edges and a self loop per node (relation ``num_relations``, after the
        ``num_relations`` edge relations) as a :class:`~qgfd_pyg.RelationalGraph`; sorted
        once per graph, a hidden-edge copy shares the sorted structure of its parent."""
        key = (num_nodes, num_relations)
        if key not in self._flow:
            if self._parent is not None:
                self._flow[key] = self._parent.relational(num_nodes, num_relations).masked(
                    self._hidden)
            else:
                loops = torch.arange(num_nodes, device=self.src.device)
                self._flow[key] = RelationalGraph(
                    torch.stack([torch.cat([self.src, loops]), torch.cat([self.dst, loops])]),
                    torch.cat([self.rel, torch.full_like(loops, num_relations)]),
                    num_relations + 1, num_nodes)
        return self._flow[key]


def read_triples(raw_dir: str, relations: Optional[Sequence[str]] = None,
                 known_entities: bool = False, columns: str = "hrt", downloadable: bool = False
                 ) -> Tuple[Dict[str, List[Tuple[str, str, str]]], List[str]]:
    """Reads ``train/valid/test.txt`` (tab-separated head, relation, tail) and checks them:
    three fields per line, every relation of valid/test known from train (or from
    ``relations``) and, with ``known_entities``, every entity of valid/test seen in train; a
    ValueError naming the file and line otherwise. ``columns`` is the files' column order
    (``"hrt"``, or ``"rht"`` as kinship and nations ship); ``downloadable``: whether the
    missing-data error may suggest ``--download`` (sets read through PyG's classes)."""
    names = ("train", "valid", "test")
    missing = [f"{n}.txt" for n in names if not os.path.isfile(os.path.join(raw_dir, f"{n}.txt"))]
    if missing:
        raise missing_data(f"knowledge graph not found: {raw_dir} lacks {', '.join(missing)}; "
                           f"put the data set's raw files there", downloadable)
    out: Dict[str, List[Tuple[str, str, str]]] = {}
    for name in names:
        path = os.path.join(raw_dir, f"{name}.txt")
        rows = []
        with open(path) as f:
            for number, line in enumerate(f, 1):
                line = line.rstrip("\n").rstrip("\r")
                if not line.strip():
                    continue
                fields = line.split("\t")
                if len(fields) != 3 or not all(x.strip() for x in fields):
                    raise ValueError(f"{path}:{number}: expected 3 tab-separated fields "
                                     f"(head, relation, tail), got {len(fields)}")
                fields = dict(zip(columns, (x.strip() for x in fields), strict=True))
                rows.append((fields["h"], fields["r"], fields["t"]))
        out[name] = rows
    known = list(relations) if relations is not None else sorted({r for _, r, _ in out["train"]})
    allowed = set(known)
    entities = {x for h, _, t in out["train"] for x in (h, t)}
    for name in names:
        for number, (h, r, t) in enumerate(out[name], 1):
            where = f"{os.path.join(raw_dir, name + '.txt')}: triple {number}"
            if r not in allowed:
                raise ValueError(f"{where} has the unknown relation {r!r}")
            unknown = [x for x in (h, t) if x not in entities]
            if known_entities and unknown:
                raise ValueError(f"{where} has the entity {unknown[0]!r}, which no training "
                                 f"triple has")
    return out, known


def index_triples(rows: Dict[str, List[Tuple[str, str, str]]], relations: Sequence[str]
                  ) -> Tuple[Triples, List[str]]:
    """Integer triples of the three splits and the entity names (in order of appearance)."""
    entity_id: Dict[str, int] = {}
    relation_id = {r: i for i, r in enumerate(relations)}
    out = []
    for name in ("train", "valid", "test"):
        ids = [(entity_id.setdefault(h, len(entity_id)), relation_id[r],
                entity_id.setdefault(t, len(entity_id))) for h, r, t in rows[name]]
        out.append(torch.tensor(ids, dtype=torch.long).view(-1, 3))
    return Triples(*out), list(entity_id)


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
    r"""QGFD over a knowledge graph with a query-conditioned flow (see the module docstring).

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
        alpha (float): the PageRank weights the hop weights start from. (default: ``0.9``)
        heads (int): flows per query. (default: ``1``)
        controller (str): ``"relation"``, ``"path"``, ``"path-table"`` or ``"text"``.
            (default: ``"relation"``)
        vocab (int, optional): words of a text or path query (default: ``2R``, the relations).
        max_words (int): longest path (``"path"``). (default: ``3``)
        embedding_scores (bool): add the embedding term. (default: ``True``)
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
        self.entity = Embedding(num_entities, hidden)
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
        torch.nn.init.xavier_uniform_(self.entity.weight)
        torch.nn.init.normal_(self.word.weight, 1.0, 0.1)  # near-identity compositions
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

    def flow(self, anchor: Tensor, words: Tensor, graph: KGGraph,
             controls: Optional["Controls"] = None) -> Tensor:
        """:math:`p_T` ``[B, N]``: the heads' flows from the anchors, mixed."""
        B, N, H = anchor.numel(), self.num_entities, self.heads
        a, theta, mix = (controls or self.controls(words))[:3]
        flow_graph = graph.relational(N, 2 * self.num_relations)
        options = dict(normalization=self.normalization, dangling=self.dangling,
                       validate=False)
        if self.controller == "relation" and B > 1 and bool((words[:, 0] == words[0, 0]).all()):
            # one query relation (the kg kind's batches): every query of a head follows the
            # same transitions (relational_flow's shared weights: one sparse product per step
            # on GPUs)
            p0 = torch.zeros(B, N, device=anchor.device, dtype=self.entity.weight.dtype)
            p0[torch.arange(B, device=anchor.device), anchor] = 1.0
            a, theta = a.view(-1, B, H, a.size(-1)), theta.view(B, H, -1)
            p = torch.stack([relational_flow(p0, flow_graph, a[:, :1, h], hop_weights=theta[0, h],
                                             **options) for h in range(H)], 1)
        else:
            p0 = torch.zeros(B * H, N, device=anchor.device, dtype=self.entity.weight.dtype)
            p0[torch.arange(B * H, device=anchor.device), anchor.repeat_interleave(H)] = 1.0
            p = relational_flow(p0, flow_graph, a, hop_weights=theta, **options).view(B, H, N)
        return (p * mix.unsqueeze(-1)).sum(1)

    def forward(self, anchor: Tensor, words: Tensor, graph: KGGraph) -> Tensor:
        """Scores ``[B, N]`` of every entity for queries (``anchor`` ``[B]``, ``words``
        ``[B, L]``) over ``graph``."""
        words = words.view(-1, 1) if words.dim() == 1 else words
        controls = self.controls(words)
        scores = (self.flow(anchor, words, graph, controls) + self.eps).log()
        if self.embedding_scores:
            query = F.dropout(self.entity(anchor) * controls.vector, self.dropout,
                              self.training)
            scores = scores + query @ self.entity.weight.t()
        # the anchor's own score: the flow keeps mass there (theta_0, self loops), while a
        # query's answer is rarely its own entity; a learnt offset per query says how rarely
        rows = torch.arange(anchor.numel(), device=anchor.device)
        return scores.index_put((rows, anchor), scores[rows, anchor] + controls.anchor_offset)

    # the kg kind's evaluation interface: nothing to prepare per relation
    per_relation = False

    def prepare(self, graph: KGGraph, relation: int) -> KGGraph:
        return graph

    def score(self, entity: Tensor, relation: Tensor, graph: KGGraph) -> Tensor:
        return self(entity, relation, graph)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.num_entities}, {self.num_relations}, "
                f"steps={self.steps}, heads={self.heads}, controller={self.controller!r})")


class EncoderScorer(Module):
    """Learnt entity embeddings through a graph encoder, then the DistMult-style scorer
    :math:`(z_a \\odot w_q) \\cdot z_v` (``w_q``: the composed query words)."""

    def __init__(self, encoder: Module, num_entities: int, vocab: int, hidden: int,
                 sparse: bool = False):
        super().__init__()
        self.sparse = sparse  # pass the graph as a SparseTensor (one product per step)
        self.entity = Embedding(num_entities, hidden)
        self.word = Embedding(vocab, hidden)
        self.encoder = encoder
        torch.nn.init.xavier_uniform_(self.entity.weight)
        torch.nn.init.normal_(self.word.weight, 1.0, 0.1)

    per_relation = False

    def prepare(self, graph: KGGraph, relation: int = 0) -> Tensor:
        n = self.entity.num_embeddings
        return self.encoder(self.entity.weight,
                            graph.adj_t(n) if self.sparse else graph.edge_index)

    def score(self, entity: Tensor, relation: Tensor, z: Tensor) -> Tensor:
        words = relation.view(-1, 1) if relation.dim() == 1 else relation
        return (z[entity] * compose(self.word, words)) @ z.t()

    def forward(self, anchor: Tensor, words: Tensor, graph: KGGraph) -> Tensor:
        return self.score(anchor, words, self.prepare(graph))


def encoder_scorer(kind: str, num_entities: int, num_relations: int, hidden: int = 64,
                   vocab: Optional[int] = None, **options) -> EncoderScorer:
    """A GAT or APPNP encoder over the training graph with the query scorer."""
    if kind == "gat":
        heads = options.pop("heads", 4)
        net = GAT(hidden, hidden, hidden=hidden // heads, heads=heads, **options)
    else:  # cached: the propagation matrix of the first call (for a graph that stays fixed)
        net = APPNPNet(hidden, hidden, hidden=hidden, **{"cached": False, **options})
    # APPNP: one sparse product per step where torch-sparse is there (the same numbers as
    # message passing over edge_index, faster on CPU)
    return EncoderScorer(net, num_entities, vocab or 2 * num_relations, hidden,
                         sparse=kind == "appnp" and WITH_TORCH_SPARSE)


gat_scorer = partial(encoder_scorer, "gat")
appnp_scorer = partial(encoder_scorer, "appnp")


def log_uniform_target(scores: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of ``scores`` ``[B, N]`` against the uniform distribution over each
    row's true entries ``target`` ``[B, N]`` (bool)."""
    weights = target.to(scores.dtype)
    weights = weights / weights.sum(1, keepdim=True).clamp_min(1)
    return -(weights * scores.log_softmax(-1)).sum(1).mean()


__all__ = ["Triples", "queries", "KGGraph", "read_triples", "index_triples", "compose",
           "RelationalQGFD", "EncoderScorer", "encoder_scorer", "log_uniform_target"]
