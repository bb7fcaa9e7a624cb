"""RelationalQGFD as a user calls it: the facts as edge_index / edge_type (or a graph built
from them), queries as (anchor, relation or words); its scores against a dense computation
written here."""
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from qgfd_pyg import RelationalGraph, RelationalQGFD
from test_flow import _dense_flow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _facts():
    """A small KG: 7 entities, 3 relations, a repeated fact, an entity without facts (6)."""
    edge_index = torch.tensor([[0, 1, 2, 0, 3, 4, 1, 1],
                               [1, 2, 3, 4, 5, 5, 0, 0]])
    edge_type = torch.tensor([0, 0, 1, 2, 0, 1, 2, 2])
    return edge_index, edge_type, 3, 7


def _model(controller="relation", heads=2, normalization="node", dangling="keep", **options):
    torch.manual_seed(0)
    model = RelationalQGFD(7, 3, hidden=8, steps=3, heads=heads, controller=controller,
                           normalization=normalization, dangling=dangling, **options).double()
    with torch.no_grad():  # away from the near-uniform start, so every weight matters
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model.eval()


def _dense_scores(model, anchor, words, edge_index, edge_type, R, N):
    """The model's scores from its controls, on a graph with inverses and loops built here,
    flowed by the dense loop, one head at a time."""
    loops = torch.arange(N)
    ei = torch.cat([edge_index, edge_index.flip(0), torch.stack([loops, loops])], 1)
    et = torch.cat([edge_type, edge_type + R, torch.full((N,), 2 * R)])
    controls = model.controls(words)
    B, H = anchor.numel(), model.heads
    p0 = torch.zeros(B * H, N, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            p0[b * H + h, anchor[b]] = 1.0
    p = _dense_flow(p0, ei, et, 2 * R + 1, N, controls.relation_weights,
                    controls.hop_weights, normalization=model.normalization,
                    dangling=model.dangling).view(B, H, N)
    p = (p * controls.mix.unsqueeze(-1)).sum(1)
    scores = (p + model.eps).log()
    if model.embedding_scores:
        scores = scores + (model.entity.weight[anchor] * controls.vector) @ model.entity.weight.t()
    for b in range(B):
        scores[b, anchor[b]] += controls.anchor_offset[b]
    return scores


@pytest.mark.parametrize("normalization,dangling", [("node", "keep"), ("relation", "drop"),
                                                    ("none", "drop"), ("relation", "keep")])
@pytest.mark.parametrize("heads", [1, 2])
def test_scores_equal_the_dense_loop(normalization, dangling, heads):
    edge_index, edge_type, R, N = _facts()
    model = _model(heads=heads, normalization=normalization, dangling=dangling)
    anchor = torch.tensor([0, 1, 3, 6, 0])
    relation = torch.tensor([0, 4, 2, 1, 0])  # 4: the inverse of relation 1
    with torch.no_grad():
        out = model(anchor, relation, edge_index, edge_type)
        ref = _dense_scores(model, anchor, relation.view(-1, 1), edge_index, edge_type, R, N)
    torch.testing.assert_close(out, ref)
    # the same through a graph built once, and with a batch of one query relation
    graph = model.flow_graph(edge_index, edge_type)
    assert graph.num_relations == 2 * R + 1 and graph.num_nodes == N
    torch.testing.assert_close(model(anchor, relation, graph), out)
    same = torch.zeros(5, dtype=torch.long)
    torch.testing.assert_close(
        model(anchor, same, graph),
        _dense_scores(model, anchor, same.view(-1, 1), edge_index, edge_type, R, N))


def test_path_controller_and_gradients():
    """Word queries (a relation path padded with -1), and the gradients of every parameter
    against the dense computation's."""
    edge_index, edge_type, R, N = _facts()
    model = _model(controller="path", heads=1, normalization="none", dangling="drop",
                   embedding_scores=False)
    anchor, path = torch.tensor([0, 2, 1]), torch.tensor([[0, 0, -1], [1, 3, 4], [5, -1, -1]])
    out = model(anchor, path, model.flow_graph(edge_index, edge_type))
    ref = _dense_scores(model, anchor, path, edge_index, edge_type, R, N)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    params = [p for p in model.parameters() if p.requires_grad]
    for x, y in zip(torch.autograd.grad((out.clamp_min(-20) * g).sum(), params,
                                        allow_unused=True),
                    torch.autograd.grad((ref.clamp_min(-20) * g).sum(), params,
                                        allow_unused=True), strict=True):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y)


def test_masked_hides_both_directions_of_a_batch_of_facts():
    """A training batch's own facts hidden from the flow (by fact id, both directions) give
    the scores of the graph without them."""
    edge_index, edge_type, R, N = _facts()
    model = _model()
    graph = model.flow_graph(edge_index, edge_type)
    hidden = torch.tensor([1, 4, 1])  # 1 -> 2 (relation 0) and 3 -> 5 (relation 0)
    keep = torch.ones(edge_index.size(1), dtype=torch.bool)
    keep[hidden] = False
    anchor, relation = torch.tensor([1, 2, 3, 5]), torch.tensor([0, 3, 0, 3])
    with torch.no_grad():
        torch.testing.assert_close(
            model(anchor, relation, graph.masked(hidden)),
            model(anchor, relation, edge_index[:, keep], edge_type[keep]))
        assert not torch.allclose(model(anchor, relation, graph.masked(hidden)),
                                  model(anchor, relation, graph))
    with pytest.raises(ValueError, match="ids of the graph's 8 facts"):
        graph.masked(torch.tensor([8]))


def test_with_inverses_layout():
    """Facts, their inverses (relation r + R), then a loop per node (relation 2R)."""
    edge_index, edge_type, R, N = _facts()
    graph = RelationalGraph.with_inverses(edge_index, edge_type, R, N)
    A = torch.zeros(2 * R + 1, N, N)
    p0 = torch.eye(N)
    for r in range(2 * R + 1):  # one step of relation r alone, unnormalised: A_r's rows
        a = torch.zeros(1, 1, 2 * R + 1)
        a[0, 0, r] = 1.0
        A[r] = _step(graph, p0, a)
    expected = torch.zeros(2 * R + 1, N, N)
    for (h, t), r in zip(edge_index.t().tolist(), edge_type.tolist(), strict=True):
        expected[r, h, t] += 1
        expected[r + R, t, h] += 1
    expected[2 * R] = torch.eye(N)
    torch.testing.assert_close(A, expected)
    no_loops = RelationalGraph.with_inverses(edge_index, edge_type, R, N, self_loops=False)
    assert no_loops.num_relations == 2 * R


def _step(graph, p0, a):
    from qgfd_pyg import relational_flow
    return relational_flow(p0, graph, a.expand(1, p0.size(0), -1),
                           hop_weights=torch.tensor([0.0, 1.0]), normalization="none",
                           dangling="drop")


def test_explain_gives_each_steps_relation_weights():
    edge_index, edge_type, R, N = _facts()
    model = _model(heads=2)
    relation = torch.tensor([0, 2, 5])
    weights = model.explain(relation)
    assert weights.shape == (3, 2, 3, 2 * R + 1)
    controls = model.controls(relation.view(-1, 1)).relation_weights  # [T, B H, 2R + 1]
    for b in range(3):
        for h in range(2):
            for t in range(3):
                torch.testing.assert_close(weights[b, h, t], controls[t, b * 2 + h])
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 3, dtype=torch.float64))


@pytest.mark.parametrize("call, message", [
    (lambda m, ei, et: m(torch.tensor([0]), torch.tensor([0]), ei), "edge_type is required"),
    (lambda m, ei, et: m(torch.tensor([0]), torch.tensor([0]),
                         RelationalGraph(ei, et, 3, 7)), "the model flows over 7 entities"),
    (lambda m, ei, et: m(torch.tensor([0, 1]), torch.tensor([0]), ei, et), "anchor must be"),
    (lambda m, ei, et: m.flow_graph(ei, et[:3]), "edge_type must be a tensor \\[8\\]"),
    (lambda m, ei, et: m.flow_graph(ei + 7, et), "edge_index"),
])
def test_bad_input_is_a_value_error(call, message):
    edge_index, edge_type, _, _ = _facts()
    with pytest.raises(ValueError, match=message):
        call(_model(), edge_index, edge_type)


def test_usage_example_runs_in_a_fresh_process():
    """docs/usage.md's knowledge-graph example, as a user runs it: a new interpreter, the
    first call; it trains, ranks and explains (its printed MRR beats the untrained model's)."""
    with open(os.path.join(ROOT, "docs", "usage.md")) as f:
        page = f.read()
    section = page[page.index("## QGFD on your own knowledge graph"):]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    done = subprocess.run([sys.executable, "-c", block], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = dict(re.findall(r"(untrained|trained) test MRR ([0-9.]+)", done.stdout))
    assert set(found) == {"untrained", "trained"}, done.stdout
    assert float(found["trained"]) > float(found["untrained"]) + 0.1, done.stdout
    assert re.search(r"step 0: \S", done.stdout), done.stdout
    assert not math.isnan(float(found["trained"]))


def test_docstring_example_runs():
    import doctest

    finder = doctest.DocTestFinder(recurse=False)
    tests = finder.find(RelationalQGFD, "RelationalQGFD", globs={})
    assert tests and tests[0].examples
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
