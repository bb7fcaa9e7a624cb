r"""The toy that shows the mechanism: answers that sit ``h`` hops from the query.

Task ``chain`` (``--hops h``): disjoint paths :math:`a - v_1 - \dots - v_h`. The anchor
:math:`a` is the node to classify, and its label is written only on the far end :math:`v_h`
(a one-hot feature); the nodes between carry zeros and the anchor a flag. A model answers
only if what it aggregates reaches ``h`` hops: two GAT or GCN layers reach 2, APPNP its ``K``
propagation steps, QGFD one seed attention plus ``T`` diffusion steps, and QGFD with
``alpha = 0`` (``attention``) one hop. Chance is ``1 / classes``.
"""
from dataclasses import asdict, replace
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Data

from ..checks import check_positive_int
from .metrics import accuracy
from .models import MODELS, ModelSpec, QGFDNet, QGFDOptions, one_hop_control
from .node import NodeTask
from .tasks import TaskOption, register


def chain_graph(hops: int, chains: int = 400, num_classes: int = 4, seed: int = 0
                ) -> Tuple[Data, Tuple[Tensor, Tensor, Tensor]]:
    """``chains`` paths of ``hops`` edges (both directions), the label of each anchor on its
    path's last node; the anchors split 50/25/25. Returns the data and the three masks.

    Node ``c * (hops + 1) + i`` is node ``i`` of path ``c`` (``i = 0``: the anchor).
    Features ``[N, num_classes + 1]``: the one-hot label on the last node, a 1 in the last
    column on the anchor, zeros elsewhere."""
    hops = check_positive_int("hops", hops)
    g = torch.Generator().manual_seed(seed)
    size = hops + 1
    n = chains * size
    label = torch.randint(0, num_classes, (chains,), generator=g)
    starts = torch.arange(chains) * size
    src = (starts.view(-1, 1) + torch.arange(hops).view(1, -1)).view(-1)
    edge_index = torch.cat([torch.stack([src, src + 1]), torch.stack([src + 1, src])], dim=1)
    x = torch.zeros(n, num_classes + 1)
    x[starts + hops, label] = 1.0
    x[starts, num_classes] = 1.0
    y = label.repeat_interleave(size)
    order = torch.randperm(chains, generator=g)
    masks = []
    for part in order.tensor_split([chains // 2, 3 * chains // 4]):
        mask = torch.zeros(n, dtype=torch.bool)
        mask[starts[part]] = True
        masks.append(mask)
    return Data(x=x, edge_index=edge_index, y=y), tuple(masks)


def noiseless(spec: ModelSpec) -> ModelSpec:
    """``spec`` without dropout and weight decay. The toy's features carry no noise, while the
    label reaches a far anchor with a small share of the flow (a random walk on a path holds
    about ``2^-h`` of its mass ``h`` hops out after ``h`` steps): regularisation then keeps any
    model from scaling that share up, whatever it can reach. Every model of the toy runs so."""
    options = {**spec.options, "dropout": 0.0}
    if "attn_dropout" in options:
        options["attn_dropout"] = 0.0
    return replace(spec, weight_decay=0.0, options=options)


# one QGFDConv (no block), so that the reach is 1 + T hops
_QGFD = ModelSpec(QGFDNet, MODELS["qgfd"].lr, MODELS["qgfd"].weight_decay,
                  {**asdict(QGFDOptions()), "layers": 1},
                  "the qgfd network with one QGFDConv (reach 1 + T)")


class ChainTask(NodeTask):
    """Node classification on :func:`chain_graph`, with the one-hop control ``attention``."""
    models: Dict[str, ModelSpec] = {name: noiseless(spec) for name, spec in {
        **MODELS,
        "qgfd": _QGFD,
        "attention": one_hop_control(_QGFD, "the qgfd model with alpha = 0 and its hop "
                                     "weights fixed: one-hop attention", alpha=0.0,
                                     learn_hop_weights=False),
        "qgfd-hops": ModelSpec(QGFDNet, MODELS["qgfd"].lr, MODELS["qgfd"].weight_decay,
                               {**asdict(QGFDOptions()), "layers": 1,
                                "learn_hop_weights": True, "transition": "graph"},
                               "the qgfd model with learnt hop weights (GPR-GNN's form) over "
                               "the graph's random walk"),
    }.items()}
    # learning the far end's small share takes long: hundreds of epochs at chance, then 100%
    budget = (1500, 500)
    options = (TaskOption("--hops", "chain: how many hops separate each anchor from its "
                          "label (4)", int),)

    def __init__(self, hops: int, chains: int = 400, num_classes: int = 4):
        data, masks = chain_graph(hops, chains, num_classes)
        self.hops, self.chains = hops, chains
        super().__init__(f"chain-{hops}", data, num_classes, "accuracy", accuracy, masks)

    def stored_config(self) -> Dict[str, Any]:
        return {"hops": self.hops, "chains": self.chains}

    def protocol(self, config: Dict[str, Any], rule: str) -> str:
        return (f"{self.chains} paths of {self.hops} hops, the label on the far end, anchors "
                f"split 50/25/25 (fixed); every model without dropout and weight decay (the "
                f"features carry no noise); " + super().protocol(config, rule))


@register("chain", ChainTask, "toy: paths whose anchor's label sits on the node --hops H away "
                              "(default 4); 400 paths, 4 classes, chance 25%; the node models "
                              "attention (qgfd with alpha = 0) and qgfd-hops (learnt hop "
                              "weights)")
def chain(root: str, dataset: Optional[str], extra: Dict[str, Any]) -> ChainTask:
    return ChainTask(extra.get("hops", 4))
