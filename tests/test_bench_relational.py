"""The one relational QGFD model of the kg and qa kinds, against a brute-force dense loop."""
import math

import pytest
import torch

from qgfd_pyg.bench.relational import EncoderScorer, KGGraph, encoder_scorer
from qgfd_pyg.bench.relational import KGQGFD as RelationalQGFD

TRAIN = torch.tensor([[0, 0, 1], [1, 1, 2], [2, 0, 3], [3, 1, 4], [4, 0, 0], [1, 0, 3],
                      [1, 0, 3]])  # a repeated triple; entity 5 is isolated
N, R = 6, 2


def _dense_walks(graph, normalization="node", dangling="keep"):
    """One step of a query's flow with relation weights a (self loops as relation 2R), written
    out with Python loops: node-normalised (the mass a node has no edge for stays or goes),
    each relation's walk normalised on its own, or walk counts."""
    edges = list(zip(graph.src.tolist(), graph.dst.tolist(), graph.rel.tolist(), strict=True))
    edges += [(i, i, 2 * R) for i in range(N)]

    def step(x, a):
        out = torch.zeros(N, dtype=torch.float64)
        for u in range(N):
            mine = [(v, rho) for s, v, rho in edges if s == u]
            if normalization == "node":
                total = sum(float(a[rho]) for _, rho in mine)
                if total == 0:
                    out[u] += x[u] if dangling == "keep" else 0.0
                    continue
                for v, rho in mine:
                    out[v] += x[u] * float(a[rho]) / total
            else:
                for v, rho in mine:
                    degree = sum(1 for _, other in mine if other == rho)
                    share = 1.0 / degree if normalization == "relation" else 1.0
                    out[v] += x[u] * float(a[rho]) * share
                if dangling == "keep":  # the shares of the relations u has no edge of
                    lacking = set(range(2 * R + 1)) - {rho for _, rho in mine}
                    out[u] += x[u] * sum(float(a[rho]) for rho in lacking)
        return out
    return step


def _expected(model, graph, anchor, words, rows_per_step, key):
    """The model's scores by hand: its tables read at the rows the controller should use."""
    W = model.word.weight.detach()
    # no entity table without the embedding term (nothing tied to an entity)
    assert (model.entity is None) == (not model.embedding_scores)
    E = model.entity.weight.detach() if model.embedding_scores else None
    step = _dense_walks(graph, model.normalization, model.dangling)
    out = []
    for b in range(anchor.numel()):
        p = torch.zeros(N, dtype=torch.float64)
        mix = torch.softmax(model.head_logits[key[b]].detach(), -1)
        for h in range(model.heads):
            theta = torch.softmax(model.hop_logits[key[b], h].detach(), -1)
            x = torch.zeros(N, dtype=torch.float64)
            x[anchor[b]] = 1.0
            acc = theta[0] * x
            for t in range(model.steps):
                row = rows_per_step[b][t]
                if model.controller == "path":  # k_row^T W_t k_rho / sqrt(d)
                    K = model.relation_key.detach()
                    logits = (K[row] @ model.step_map[h, t].detach()) @ K.t() / math.sqrt(
                        model.hidden)
                else:
                    logits = model.step_logits[h, t, row].detach()
                a = torch.softmax(logits, -1)
                x = step(x, a)
                acc = acc + theta[t + 1] * x
            p = p + mix[h] * acc
        vector = torch.ones(W.size(1), dtype=torch.float64)
        for w in words[b].tolist():
            if w >= 0:
                vector = vector * W[w]
        score = torch.log(p + model.eps) + (
            (E[anchor[b]] * vector) @ E.t() if model.embedding_scores else 0.0)
        score[anchor[b]] += model.anchor_logits[key[b]].detach()  # the anchor's own offset
        out.append(score)
    return torch.stack(out)


def _randomise(model):
    for name in ("step_logits", "step_map", "hop_logits", "head_logits", "anchor_logits"):
        if hasattr(model, name):
            torch.nn.init.normal_(getattr(model, name))


@pytest.mark.parametrize("heads, normalization, dangling, embedding", [
    (1, "node", "keep", True), (2, "node", "keep", True), (2, "relation", "drop", True),
    (1, "none", "drop", False), (2, "relation", "keep", False)])
def test_relation_controller_equals_the_dense_loop(heads, normalization, dangling, embedding):
    graph = KGGraph.from_triples(TRAIN, R).without(torch.tensor([2]))
    model = RelationalQGFD(N, R, hidden=5, steps=3, heads=heads, normalization=normalization,
                           dangling=dangling, embedding_scores=embedding).double().eval()
    _randomise(model)
    anchor, relation = torch.tensor([0, 3, 5, 1]), torch.tensor([1, 3, 0, 1])
    # the query relation picks the table row at every step; hop weights and mixture per relation
    rows = [[int(r)] * 3 for r in relation]
    expected = _expected(model, graph, anchor, relation.view(-1, 1), rows, relation.tolist())
    torch.testing.assert_close(model(anchor, relation, graph), expected)
    torch.testing.assert_close(model.score(anchor, relation, model.prepare(graph, 0)), expected)
    # a batch of one query relation (evaluation's, Countries' training): every query of a
    # head follows the same transitions, one sparse product per step; values and gradients as
    # query by query
    shared = torch.full_like(relation, 3)
    expected = _expected(model, graph, anchor, shared.view(-1, 1), [[3] * 3] * 4, [3] * 4)
    out = model(anchor, shared, graph)
    torch.testing.assert_close(out, expected)
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.randn_like(out)
    got = torch.autograd.grad((out * g).sum(), params, allow_unused=True)
    one_by_one = sum((model(anchor[b:b + 1], shared[b:b + 1], graph) * g[b]).sum()
                     for b in range(4))
    for x, y in zip(got, torch.autograd.grad(one_by_one, params, allow_unused=True),
                    strict=True):
        if y is not None:
            torch.testing.assert_close(x, y)
    model.train()
    model(anchor, relation, graph).sum().backward()
    for p in (model.step_logits, model.hop_logits) + ((model.entity.weight,) if embedding
                                                       else ()):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("controller", ["path", "path-table"])
def test_path_controller_reads_the_t_th_relation_then_stops(controller):
    graph = KGGraph.from_triples(TRAIN, R)
    model = RelationalQGFD(N, R, hidden=4, steps=3, heads=2, controller=controller).double()
    _randomise(model)
    anchor = torch.tensor([0, 3, 1])
    path = torch.tensor([[0, 3, -1], [2, -1, -1], [1, 0, 2]])
    # past the path's end: the self loop's vector (path) or the table's stop row (path-table)
    stop = 2 * R
    rows = [[0, 3, stop], [2, stop, stop], [1, 0, 2]]
    key = [2, 1, 3]  # hop weights and mixture by path length
    expected = _expected(model, graph, anchor, path, rows, key)
    torch.testing.assert_close(model(anchor, path, graph), expected)


def test_path_controller_starts_by_following_the_path():
    model = RelationalQGFD(N, R, hidden=64, steps=3, controller="path")
    a = model.controls(torch.tensor([[0, 3, -1]]))[0][:, 0]  # [T, 2R + 1]
    assert a.argmax(-1).tolist() == [0, 3, 2 * R]  # r_1, r_2, then stay (the self loop)
    assert bool((a.max(-1).values > 0.9).all())


def test_text_controller_and_the_seed_only_control():
    graph = KGGraph.from_triples(TRAIN, R)
    model = RelationalQGFD(N, R, hidden=8, steps=2, controller="text", vocab=11)
    words = torch.tensor([[3, 4, 5, -1], [7, -1, -1, -1]])
    a, theta, mix, vector, offset = model.controls(words)
    assert offset.shape == (2,)
    assert a.shape == (2, 2, 2 * R + 1) and theta.shape == (2, 3) and vector.shape == (2, 8)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 2))
    torch.testing.assert_close(theta[0], torch.tensor([0.1, 0.09, 0.81]))  # PPR(0.9) start
    scores = model(torch.tensor([0, 1]), words, graph)
    scores.logsumexp(-1).sum().backward()
    assert model.encoder.weight_ih_l0.grad.abs().sum() > 0
    # no steps: the flow stays on the anchor, the rest is the embedding term
    control = RelationalQGFD(N, R, hidden=4, steps=0).double()
    anchor, relation = torch.tensor([2]), torch.tensor([1])
    flow = control.flow(anchor, relation.view(-1, 1), graph)
    torch.testing.assert_close(flow, torch.eye(N, dtype=torch.float64)[[2]])


def test_encoder_scorer_composes_the_query_words():
    graph = KGGraph.from_triples(TRAIN, R)
    model = encoder_scorer("gat", N, R, hidden=8, heads=2).eval()
    assert isinstance(model, EncoderScorer)
    z = model.prepare(graph)
    path = torch.tensor([[0, 3, -1]])
    W = model.word.weight
    torch.testing.assert_close(model(torch.tensor([4]), path, graph),
                               ((z[4] * W[0] * W[3]) @ z.t()).view(1, -1))


def test_hidden_edges_share_the_sorted_structure():
    graph = KGGraph.from_triples(TRAIN, R)
    full = graph.relational(N, 2 * R)
    part = graph.without(torch.tensor([0, 5]))
    masked = part.relational(N, 2 * R)
    assert masked.col_in is full.col_in  # not sorted again
    # edges 0, 5 and their inverses 7, 12 weigh 0; the self loops stay
    n = TRAIN.size(0)
    zero = (masked.weight == 0).nonzero().view(-1).tolist()
    assert zero == [0, 5, n, n + 5]
    assert math.isclose(float(masked.weight.sum()), 2 * n - 4 + N)


@pytest.mark.parametrize("controller", ["relation", "text"])
def test_suppress_anchor_starts_the_anchor_below_every_entity_the_flow_reaches(controller):
    graph = KGGraph.from_triples(TRAIN, R)
    words = torch.tensor([[1]]) if controller == "relation" else torch.tensor([[3, 4]])
    kwargs = dict(hidden=8, steps=2, controller=controller, embedding_scores=False,
                  vocab=None if controller == "relation" else 11)
    plain = RelationalQGFD(N, R, **kwargs).double()
    suppressed = RelationalQGFD(N, R, suppress_anchor=True, **kwargs).double()
    suppressed.load_state_dict({k: v for k, v in plain.state_dict().items()
                                if "anchor" not in k}, strict=False)
    anchor = torch.tensor([1])
    before, after = plain(anchor, words, graph), suppressed(anchor, words, graph)
    # the offset starts at log(1e-6) = -13.8155..., the flow's own scores are unchanged
    assert float(suppressed.controls(words).anchor_offset) == pytest.approx(-13.815510557964274)
    torch.testing.assert_close(after[0, 1], before[0, 1] - 13.815510557964274)
    others = [v for v in range(N) if v != 1]
    torch.testing.assert_close(after[0, others], before[0, others])
    # before, the anchor ranks first (theta_0 = 0.1 of the mass stays on it); after, it ranks
    # below every entity the flow reaches
    assert int(before[0].argmax()) == 1
    reached = [v for v in others if float(before[0, v]) > math.log(1e-6) + 1e-9]
    assert reached and all(float(after[0, v]) > float(after[0, 1]) for v in reached)


def test_wn18rr_flow_models_suppress_the_anchor_and_bad_eps_is_rejected():
    from qgfd_pyg.bench.kg import KG_MODELS, CountriesTask, FB15k237Task, WN18RRTask

    chosen = {name: spec.options.get("suppress_anchor", False)
              for name, spec in WN18RRTask.models.items()}
    assert chosen == {"qgfd": True, "gat": False, "appnp": False, "distmult": False,
                      "rotate": False, "attention": True, "rule": False, "ppr": False,
                      "nbfnet": False, "rotate-paper": False}
    assert not any(spec.options.get("suppress_anchor") for spec in KG_MODELS.values())
    assert WN18RRTask.models["attention"].options["steps"] == 1
    # WN18RR's qgfd model takes 5 steps (chosen on validation), the others keep 3
    assert WN18RRTask.models["qgfd"].options["steps"] == 5
    assert "5-step" in WN18RRTask.models["qgfd"].source
    assert FB15k237Task.models["qgfd"].options["steps"] == KG_MODELS["qgfd"].options["steps"] == 3
    # WN18RR's flow models score from the flow alone (chosen on validation); FB15k-237's and
    # Countries' keep the embedding term
    for table, term in ((WN18RRTask.models, False), (FB15k237Task.models, True),
                        (KG_MODELS, True)):
        assert table["qgfd"].options["embedding_scores"] is term
        assert table["attention"].options["embedding_scores"] is term
    # the learning rate chosen per data set (qgfd and its control), Countries' table untouched
    for table in (WN18RRTask.models, FB15k237Task.models):
        assert {name: spec.lr for name, spec in table.items()} == {
            "qgfd": 0.03, "gat": 0.005, "appnp": 0.005, "distmult": 0.005, "rotate": 0.005,
            "attention": 0.03, "rule": 0.0, "ppr": 0.0, "nbfnet": 0.005,
            "rotate-paper": 5e-5}  # RotatE's published rate
    assert KG_MODELS["qgfd"].lr == KG_MODELS["attention"].lr == 0.01
    assert not any(spec.options.get("suppress_anchor") for spec in FB15k237Task.models.values())
    # Countries: the kind's table, plus the qgfd model at initialisation as a reference
    assert {k: v for k, v in CountriesTask.models.items() if k != "untrained"} == KG_MODELS
    assert CountriesTask.models["untrained"].options == KG_MODELS["qgfd"].options
    with pytest.raises(ValueError, match="eps must be positive"):
        RelationalQGFD(N, R, eps=0.0)
