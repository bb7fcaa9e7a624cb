"""The knowledge-graph kind's rule reference: rules and confidences mined from hand-made
graphs against counts written out by hand, and the scores of given rules."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from qgfd_pyg.bench.relational import KGGraph
from qgfd_pyg.bench.rules import Mined, MinedRules


def _mine(triples, num_entities, num_relations, **options):
    options = {"min_support": 1, "pseudo_count": 0.0, **options}
    model = MinedRules(num_entities, num_relations, seed=0, **options)
    graph = KGGraph.from_triples(torch.tensor(triples), num_relations)
    return model, graph, model.prepare(graph)


def test_rules_and_confidences_of_a_family_chain():
    # a -p-> b -p-> c -p-> d (p: parent, 0); a -g-> c (g: grandparent, 1); inverses 2, 3
    a, b, c, d = range(4)
    model, graph, mined = _mine([[a, 0, b], [b, 0, c], [c, 0, d], [a, 1, c]], 4, 2)
    # g(x, y) <- p(x, z), p(z, y): p.p connects (a, c) and (b, d); g holds for (a, c) only.
    # The triple's own edge (g itself) is no rule.
    assert mined.rules[1] == [((0, 0), 0.5)]
    assert mined.rules[3] == [((2, 2), 0.5)]  # the inverse: (c, a) and (d, b)
    # p(x, y) <- g(x, z), p^-1(z, y): (a, b); p(x, y) <- p^-1(x, z), g(z, y): (b, c);
    # each connects one pair, which p holds
    assert sorted(mined.rules[0]) == [((1, 2), 1.0), ((2, 1), 1.0)]
    scores = model(torch.tensor([a, b]), torch.tensor([1, 1]), graph)
    expected = torch.zeros(2, 4)
    expected[0, c] = expected[1, d] = 0.5
    assert torch.equal(scores, expected)
    # the pseudo-count discounts: 1 / (2 + 2); a rule must be seen min_support times
    triples = [[a, 0, b], [b, 0, c], [c, 0, d], [a, 1, c]]
    assert _mine(triples, 4, 2, pseudo_count=2.0)[2].rules[1] == [((0, 0), 0.25)]
    assert _mine(triples, 4, 2, min_support=2)[2].rules == [[], [], [], []]
    assert [len(r) for r in _mine(triples, 4, 2, rules=1)[2].rules] == [1, 1, 1, 1]


@pytest.mark.parametrize("max_length", [2, 3])
def test_a_three_relation_rule_needs_max_length_3(max_length):
    # x -0-> m -1-> n -2-> y and x -3-> y: 3(x, y) <- 0(x, m), 1(m, n), 2(n, y)
    x, m, n, y = range(4)
    model, graph, mined = _mine([[x, 0, m], [m, 1, n], [n, 2, y], [x, 3, y]], 4, 4,
                                max_length=max_length)
    assert mined.rules[3] == ([((0, 1, 2), 1.0)] if max_length == 3 else [])
    assert mined.rules[7] == ([((6, 5, 4), 1.0)] if max_length == 3 else [])  # inverses


@pytest.mark.parametrize("aggregation", ["max", "noisy-or"])
def test_a_body_that_returns_to_its_source_counts_no_pair_there(aggregation):
    # x and y are parents (p, 0) of k, x -s-> y (s: spouse, 1): s(x, y) <- p(x, k), p^-1(k, y)
    # connects (x, y) and (y, x) -- and each parent with itself, which is no pair
    x, y, k = range(3)
    model, graph, mined = _mine([[x, 0, k], [y, 0, k], [x, 1, y]], 3, 2,
                                aggregation=aggregation)
    assert mined.rules[1] == [((0, 2), 0.5)]
    scores = model(torch.tensor([x, y]), torch.tensor([1, 1]), graph)
    # the rule reaches both parents from either; the query's own entity scores 0
    assert torch.equal(scores, torch.tensor([[0.0, 0.5, 0.0], [0.5, 0.0, 0.0]]))


@pytest.mark.parametrize("aggregation,expected", [
    ("max", [0.0, 0.5, 0.2, 0.0]), ("noisy-or", [0.0, 1 - 0.5 * 0.8, 0.2, 0.0])])
def test_given_rules_score_by_their_aggregation(aggregation, expected):
    # relation 0: 0 -> 1, 0 -> 2; relation 1: 0 -> 0, 1 -> 1, 2 -> 1
    adjacency = [sp.csr_matrix(np.array(m, dtype=np.float32)) for m in (
        [[0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])]
    # query relation 0: rule (0, 1) reaches 1 (by two paths, one rule: counted once;
    # c = 0.5), rule (0,) reaches 1 and 2 (c = 0.2), rule (1,) the anchor 0 only (c = 0.9)
    mined = Mined(adjacency, [[((0, 1), 0.5), ((0,), 0.2), ((1,), 0.9)], []])
    out = MinedRules(4, 1, aggregation=aggregation).score(torch.tensor([0]), torch.tensor([0]),
                                                          mined)
    assert torch.allclose(out, torch.tensor([expected]))


def test_bad_options_are_value_errors():
    for options, word in [(dict(max_length=4), "max_length"), (dict(samples=0), "samples"),
                          (dict(aggregation="mean"), "aggregation"),
                          (dict(pseudo_count=-1.0), "pseudo_count")]:
        with pytest.raises(ValueError, match=word):
            MinedRules(3, 1, **options)


def test_a_rule_must_be_found_on_min_support_sampled_pairs():
    # 2(u, v) <- 1(u, w), 0(w, v) on a simple path; on (x, y) only through x's self loop
    # (x -1-> x -0-> y): the search follows simple paths and finds the body once, while its
    # count on the graph (walks) has both pairs
    u, w, v, x, y = range(5)
    triples = [[u, 1, w], [w, 0, v], [u, 2, v], [x, 1, x], [x, 0, y], [x, 2, y]]
    assert sorted(_mine(triples, 5, 3)[2].rules[2]) == [((0,), 0.5), ((1, 0), 1.0)]
    assert _mine(triples, 5, 3, min_support=2)[2].rules[2] == []


def test_a_rule_must_predict_min_support_pairs_among_its_sampled_sources():
    # 1(x, y) <- 0(x, y) holds for a1 and a2; relation 0 has a third source c (1 fails
    # there). With samples=2 the confidence is counted from two of the three sources:
    # both a's (2 of 2 pairs right), or one a and c (1 of 2): min_support=2 keeps the rule
    # only in the first case
    a1, b1, a2, b2, c, d = range(6)
    triples = [[a1, 0, b1], [a2, 0, b2], [c, 0, d], [a1, 1, b1], [a2, 1, b2]]
    outcomes = set()
    for seed in range(12):
        one = MinedRules(6, 2, samples=2, min_support=1, pseudo_count=0.0, seed=seed)
        two = MinedRules(6, 2, samples=2, min_support=2, pseudo_count=0.0, seed=seed)
        graph = KGGraph.from_triples(torch.tensor(triples), 2)
        kept = one.prepare(graph).rules[1]
        assert kept in ([((0,), 1.0)], [((0,), 0.5)])
        assert two.prepare(graph).rules[1] == (kept if kept[0][1] == 1.0 else [])
        outcomes.add(kept[0][1])
    assert outcomes == {0.5, 1.0}  # both samples occur
