"""RotatE as published (qgfd_pyg.bench.rotate): its distance, its scoring of every entity, its
self-adversarial loss and the runner's negatives and subsampling weights, against loops with
Python complex numbers."""
import cmath
import math

import pytest
import torch

from qgfd_pyg.bench.kg import KGExperiment, KGTask, published_rotate
from qgfd_pyg.bench.relational import Triples
from qgfd_pyg.bench.rotate import PublishedRotatE


def brute_score(model, h, r, t):
    """gamma - sum_i |h_i e^{i theta_i} - t_i| with Python complex numbers."""
    k = model.hidden_channels
    total = 0.0
    for i in range(k):
        hc = complex(model.node_emb.weight[h, i], model.node_emb_im.weight[h, i])
        tc = complex(model.node_emb.weight[t, i], model.node_emb_im.weight[t, i])
        theta = float(model.rel_emb.weight[r, i]) * math.pi / model.embedding_range
        total += abs(hc * cmath.exp(1j * theta) - tc)
    return model.margin - total


@pytest.fixture
def model():
    torch.manual_seed(0)
    return PublishedRotatE(7, 3, 4, margin=6.0, num_negatives=5, temperature=0.5, chunk=9)


def test_initial_range_and_distance(model):
    wide = PublishedRotatE(50, 3, 16, margin=6.0)
    bound = (6.0 + 2.0) / 16  # uniform in +-(gamma + epsilon) / k, the phases in +-pi
    for emb in (wide.node_emb, wide.node_emb_im, wide.rel_emb):
        assert 0.9 * bound < float(emb.weight.abs().max()) <= bound
    h, r, t = torch.tensor([0, 3, 6]), torch.tensor([0, 2, 1]), torch.tensor([5, 3, 1])
    got = model(h, r, t)
    for b in range(3):
        assert float(got[b]) == pytest.approx(brute_score(model, int(h[b]), int(r[b]),
                                                          int(t[b])), abs=1e-5)


def test_score_all_ranks_tails_and_heads(model):
    """Tail queries score (e, r, n); head queries (inverse) score (n, r, e), every n; in
    chunks smaller than one query's row."""
    entity, rel = torch.tensor([2, 4]), torch.tensor([1, 1])
    inverse = torch.tensor([False, True])
    got = model.score_all(entity, rel, inverse)
    assert got.shape == (2, 7)
    for n in range(7):
        assert float(got[0, n]) == pytest.approx(brute_score(model, 2, 1, n), abs=1e-5)
        assert float(got[1, n]) == pytest.approx(brute_score(model, n, 1, 4), abs=1e-5)


def test_self_adversarial_loss_by_hand(model):
    entity, rel = torch.tensor([0, 5]), torch.tensor([2, 0])
    inverse, answer = torch.tensor([False, True]), torch.tensor([3, 1])
    negatives = torch.tensor([[1, 2, 4, 4, 6], [0, 2, 3, 6, 6]])
    weight = torch.tensor([0.5, 0.25])
    got = model.query_loss(entity, rel, inverse, answer, negatives, weight)

    def f(b, n):  # the query's score of candidate n
        return brute_score(model, n, int(rel[b]), int(entity[b])) if inverse[b] \
            else brute_score(model, int(entity[b]), int(rel[b]), n)

    def logsig(x):
        return -math.log1p(math.exp(-x))

    total_pos = total_neg = 0.0
    w = [0.5 / 0.75, 0.25 / 0.75]
    for b in range(2):
        total_pos += w[b] * logsig(f(b, int(answer[b])))
        scores = [f(b, int(n)) for n in negatives[b]]
        z = sum(math.exp(0.5 * s) for s in scores)
        total_neg += w[b] * sum(math.exp(0.5 * s) / z * logsig(-s) for s in scores)
    assert float(got) == pytest.approx(-0.5 * (total_pos + total_neg), abs=1e-5)


class TinyKG(KGTask):
    models = {"rotate-paper": published_rotate(4, 6.0, 50, 0.5, 512)}


def test_runner_negatives_avoid_training_answers_and_weights_count_queries():
    # entity 0 has two training tails under relation 0 (1 and 2); (0, 0, 3) is held out
    train = torch.tensor([[0, 0, 1], [0, 0, 2], [1, 1, 2], [3, 0, 4]])
    held = torch.tensor([[0, 0, 3]])
    task = TinyKG("tiny", Triples(train, held, held), 6, 2)
    experiment = KGExperiment(task, "rotate-paper", 0, task.models["rotate-paper"].options,
                              torch.device("cpu"))
    seen = {}
    kge = experiment.model.kge
    real = kge.query_loss

    def record(entity, rel, inverse, answer, negatives, weight):
        seen.update(entity=entity, rel=rel, inverse=inverse, negatives=negatives,
                    weight=weight)
        return real(entity, rel, inverse, answer, negatives, weight)

    kge.query_loss = record
    batch = torch.tensor([0, 4])  # (0, 0, 1) and its inverse query (1, 0^-1, 0)
    loss = experiment.batch_loss(batch)
    assert torch.isfinite(loss)
    negatives = seen["negatives"]
    assert negatives.shape == (2, 50)
    # query (0, r0): never 1 (the answer) nor 2 (another training answer); 3 may be drawn
    assert not bool(((negatives[0] == 1) | (negatives[0] == 2)).any())
    assert bool((negatives[0] == 3).any())
    # query (1, r0^-1): heads of (?, r0, 1): only 0, the answer: never drawn
    assert not bool((negatives[1] == 0).any())
    assert seen["inverse"].tolist() == [False, True] and seen["rel"].tolist() == [0, 0]
    # weights: (#(h, r) + #(t, r^-1) + 8)^-1/2 = (2 + 1 + 8)^-1/2 for triple (0, r0, 1)
    expected = (2 + 1 + 8) ** -0.5
    torch.testing.assert_close(seen["weight"], torch.tensor([expected, expected]))
    # scoring through the runner's wrapper: every entity, both directions
    scores = experiment.model(torch.tensor([0, 1]), torch.tensor([0, 2]))
    assert float(scores[0, 4]) == pytest.approx(brute_score(kge, 0, 0, 4), abs=1e-5)
    assert float(scores[1, 3]) == pytest.approx(brute_score(kge, 3, 0, 1), abs=1e-5)
