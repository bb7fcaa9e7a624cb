r"""RotatE (Sun et al., *RotatE: Knowledge Graph Embedding by Relational Rotation in Complex
Space*, ICLR 2019) as its paper and code configure it (DeepGraphLearning/KnowledgeGraphEmbedding,
``best_config.sh``), on PyG's :class:`~torch_geometric.nn.kge.RotatE` embeddings.

What differs from PyG's class (whose loss the runner's ``rotate`` row uses): the distance is the
sum of the complex moduli,

.. math::
    d(h, r, t) = \sum_i |h_i r_i - t_i|, \qquad f(h, r, t) = \gamma - d(h, r, t),

(PyG's: one Euclidean norm over all real coordinates); embeddings and relation phases start
uniform in :math:`\pm(\gamma + 2) / k` (the phase scaled to :math:`\pm\pi`); the loss is
self-adversarial negative sampling,

.. math::
    L = -\tfrac12 \Big( \log\sigma(f(h, r, t)) + \sum_j p_j \log\sigma(-f(h'_j, r, t'_j))
    \Big), \qquad p = \mathrm{softmax}_j(\alpha f(h'_j, r, t'_j)) \text{ (no gradient)},

over ``num_negatives`` corruptions of the query's answer drawn uniformly from the entities that
are no training answer of the query, each query weighted by its frequency
:math:`(\#(h, r) + \#(t, r^{-1}) + 8)^{-1/2}` (the code's subsampling weight). Its published
settings: WN18RR :math:`k = 500`, :math:`\gamma = 6`, :math:`\alpha = 0.5`, 1024 negatives,
batches of 512, Adam at 5e-5; FB15k-237 :math:`k = 1000`, :math:`\gamma = 9`,
:math:`\alpha = 1`, 256 negatives, batches of 1024, Adam at 5e-5; 80,000 / 100,000 steps.
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn.kge import RotatE

EPSILON = 2.0  # the code's epsilon of the embedding range


class PublishedRotatE(RotatE):
    r"""RotatE with its paper's distance, initialisation and loss (see the module docstring).

    Args:
        num_nodes (int): entities.
        num_relations (int): relations (queries ``q >= R`` ask for heads of ``q - R``).
        hidden_channels (int): complex dimensions :math:`k`.
        margin (float): :math:`\gamma`. (default: ``6.0``)
        num_negatives (int): corruptions per query in :meth:`query_loss`. (default: ``1024``)
        temperature (float): the self-adversarial :math:`\alpha`. (default: ``0.5``)
        chunk (int): complex numbers per temporary when scoring every entity (small enough
            to stay in the CPU's caches: 2^19 took a fifth of 2^24's time). (default:
            ``2 ** 19``)
    """

    def __init__(self, num_nodes: int, num_relations: int, hidden_channels: int,
                 margin: float = 6.0, num_negatives: int = 1024, temperature: float = 0.5,
                 chunk: int = 2 ** 19):
        self.embedding_range = (margin + EPSILON) / hidden_channels
        super().__init__(num_nodes, num_relations, hidden_channels, margin=margin)
        self.num_negatives, self.temperature, self.chunk = num_negatives, temperature, chunk

    def reset_parameters(self):
        bound = self.embedding_range
        for emb in (self.node_emb, self.node_emb_im, self.rel_emb):
            torch.nn.init.uniform_(emb.weight, -bound, bound)

    def _phase(self, rel: Tensor) -> Tuple[Tensor, Tensor]:
        theta = self.rel_emb(rel) * (math.pi / self.embedding_range)
        return torch.cos(theta), torch.sin(theta)

    def forward(self, head_index: Tensor, rel_type: Tensor, tail_index: Tensor) -> Tensor:
        cos, sin = self._phase(rel_type)
        h_re, h_im = self.node_emb(head_index), self.node_emb_im(head_index)
        re = cos * h_re - sin * h_im - self.node_emb(tail_index)
        im = cos * h_im + sin * h_re - self.node_emb_im(tail_index)
        return self.margin - torch.sqrt(re * re + im * im).sum(-1)

    def _known(self, entity: Tensor, rel: Tensor, inverse: Tensor) -> Tuple[Tensor, Tensor]:
        """The query's side, rotated: ``h o r`` for a tail query; for a head query
        ``|h o r - t| = |t o conj(r) - h|``, so ``t o conj(r)``."""
        cos, sin = self._phase(rel)
        sin = torch.where(inverse.view(-1, 1), -sin, sin)
        re, im = self.node_emb(entity), self.node_emb_im(entity)
        return cos * re - sin * im, cos * im + sin * re

    def score_some(self, entity: Tensor, rel: Tensor, inverse: Tensor,
                   candidates: Tensor) -> Tensor:
        """:math:`f` of the queries ``(entity, rel)`` (heads asked where ``inverse``) with
        the answers ``candidates`` ``[B, K]``: ``[B, K]``."""
        a_re, a_im = self._known(entity, rel, inverse)
        re = a_re.unsqueeze(1) - self.node_emb(candidates)
        im = a_im.unsqueeze(1) - self.node_emb_im(candidates)
        return self.margin - torch.sqrt(re * re + im * im).sum(-1)

    @torch.no_grad()
    def score_all(self, entity: Tensor, rel: Tensor, inverse: Tensor) -> Tensor:
        """:math:`f` against every entity, ``[B, N]`` (entities in chunks)."""
        a_re, a_im = self._known(entity, rel, inverse)
        c_re, c_im = self.node_emb.weight, self.node_emb_im.weight
        step = max(1, self.chunk // max(1, entity.numel() * self.hidden_channels))
        out = []
        for start in range(0, self.num_nodes, step):
            re = a_re.unsqueeze(1) - c_re[start:start + step]
            im = a_im.unsqueeze(1) - c_im[start:start + step]
            distance = re.mul_(re).addcmul_(im, im).sqrt_().sum(-1)  # in place: one temporary
            out.append(distance.neg_().add_(self.margin))
        return torch.cat(out, dim=1)

    def query_loss(self, entity: Tensor, rel: Tensor, inverse: Tensor, answer: Tensor,
                   negatives: Tensor, weight: Tensor) -> Tensor:
        """The paper's loss for the queries' ``answer`` against ``negatives`` ``[B, K]``
        (drawn by the caller), queries weighted by ``weight`` ``[B]``."""
        positive = F.logsigmoid(self.score_some(entity, rel, inverse, answer.view(-1, 1)))
        scores = self.score_some(entity, rel, inverse, negatives)
        share = torch.softmax(scores.detach() * self.temperature, dim=1)
        negative = (share * F.logsigmoid(-scores)).sum(1)
        weight = weight / weight.sum()
        return -0.5 * ((weight * positive.view(-1)).sum() + (weight * negative).sum())

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.num_nodes}, "
                f"num_relations={self.num_relations}, hidden_channels={self.hidden_channels}, "
                f"margin={self.margin})")
