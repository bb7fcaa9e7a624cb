"""The runner's metrics, computed by the ecosystem's own code where it ships them: OGB's link
``Evaluator`` for Hits@K and MRR, scikit-learn for AUC and AP."""
from typing import Dict, Sequence

import torch
from torch import Tensor


def accuracy(y_true: Tensor, y_pred: Tensor) -> float:
    return float((y_true == y_pred).float().mean()) if y_true.numel() else float("nan")


def roc_auc(y_true: Tensor, score: Tensor) -> float:
    """ROC-AUC (scikit-learn) of ``score`` ``[n]`` for the positive class ``y_true == 1``; NaN
    where ``y_true`` holds one class only (the AUC is then undefined)."""
    from sklearn.metrics import roc_auc_score

    if y_true.numel() == 0 or y_true.unique().numel() < 2:
        return float("nan")
    return float(roc_auc_score(y_true.cpu().numpy(), score.float().cpu().numpy()))


def expected_calibration_error(probs: Tensor, y: Tensor, bins: int = 15) -> float:
    """ECE with equal-width confidence bins: sum_b |acc_b - conf_b| * n_b / n."""
    if y.numel() == 0:
        return float("nan")
    confidence, prediction = probs.max(dim=1)
    correct = (prediction == y).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=probs.dtype, device=probs.device)
    which = torch.bucketize(confidence, edges[1:-1], right=True)  # bin b = (e_b, e_{b+1}]
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            gap = correct[members].mean() - confidence[members].double().mean()
            ece += float(gap.abs()) * int(members.sum()) / y.numel()
    return ece


def ogb_evaluator(name: str):
    """OGB's link ``Evaluator`` for ``name``; an ImportError naming the ``bench`` extra when
    OGB is not installed."""
    try:
        from ogb.linkproppred import Evaluator
    except ImportError as error:
        raise ImportError("the runner's ranking metrics use OGB's Evaluator: pip install "
                          "'qgfd-pyg[bench]' (or pip install ogb)") from error
    return Evaluator(name)


def hits_at(pos: Tensor, neg: Tensor, k: int) -> float:
    """OGB's Hits@K (``ogbl-*`` protocol): the share of positives scored above the K-th best
    negative, with one set of negatives shared by all positives."""
    evaluator = ogb_evaluator("ogbl-collab")  # any hits@K data set; K is set below
    evaluator.K = k
    return float(evaluator.eval({"y_pred_pos": pos.float().cpu(),
                                 "y_pred_neg": neg.float().cpu()})[f"hits@{k}"])


def ranking(pos: Tensor, neg: Tensor) -> Dict[str, float]:
    """MRR and Hits@1/3/10 through OGB's ranking evaluator (``ogbl-citation2`` protocol):
    ``pos[i]`` is ranked among the candidate scores ``neg[i]`` (``[B]`` and ``[B, C]``; a
    ``[C]`` row is shared by all positives); ties count half (the mean of the optimistic and
    the pessimistic rank). Candidates scored ``-inf`` (filtered ones) never outrank."""
    pos, neg = pos.float().cpu().view(-1), neg.float().cpu()
    if neg.dim() == 1:
        neg = neg.view(1, -1).expand(pos.numel(), -1)
    lists = ogb_evaluator("ogbl-citation2").eval({"y_pred_pos": pos, "y_pred_neg": neg})
    return {key.replace("_list", ""): float(value.mean()) if value.numel() else float("nan")
            for key, value in lists.items()}


def link_metrics(pos: Tensor, neg: Tensor, ks: Sequence[int] = (20, 50, 100)
                 ) -> Dict[str, float]:
    """AUC and AP (scikit-learn) of positive against negative edge scores, Hits@K (OGB) and
    MRR (OGB; every positive ranked against all negatives)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = torch.cat([torch.ones(pos.numel()), torch.zeros(neg.numel())]).numpy()
    scores = torch.cat([pos.view(-1), neg.view(-1)]).float().cpu().numpy()
    out = {"auc": float(roc_auc_score(y, scores)), "ap": float(average_precision_score(y, scores))}
    out.update({f"hits@{k}": hits_at(pos, neg, k) for k in ks})
    out["mrr"] = ranking(pos, neg)["mrr"]
    return out
