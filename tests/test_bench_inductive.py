"""Inductive KG completion (GraIL's splits): the loader on hand-made files in GraIL's layout,
the protocol (test entities unseen in training, filtering, the 50-negative Hits@10, hidden
query edges, the test graph at test time), NBFNet against a loop over nodes and edges."""
import copy
import itertools
import json
import math
import os

import pytest
import torch

from qgfd_pyg.bench import cli
from qgfd_pyg.bench.inductive import load_inductive, sampled_hits
from qgfd_pyg.bench.nbfnet import NBFNet
from qgfd_pyg.bench.relational import KGGraph
from qgfd_pyg.bench.rules import MinedRules

# training graph: parent chains (p) with grandparent facts (g); the test graph: new people,
# one of them named like a training entity (a different entity: ids must differ)
TRAIN = [("a", "p", "b"), ("b", "p", "c"), ("a", "g", "c"), ("c", "p", "d"), ("b", "g", "d"),
         ("d", "p", "e"), ("c", "g", "e"), ("e", "s", "f")]
VALID = [("c", "g", "f")]
TEST_GRAPH = [("u", "p", "v"), ("v", "p", "w"), ("w", "p", "a"), ("u", "g", "w"),
              ("a", "s", "z")]
TEST = [("v", "g", "a")]


def _write(root, name="fb237_v1", train=TRAIN, valid=VALID, graph=TEST_GRAPH, test=TEST):
    for folder, files in ((name, {"train.txt": train, "valid.txt": valid}),
                          (name + "_ind", {"train.txt": graph, "test.txt": test})):
        os.makedirs(os.path.join(root, "inductive-kg", folder), exist_ok=True)
        for file, rows in files.items():
            with open(os.path.join(root, "inductive-kg", folder, file), "w") as f:
                f.writelines("\t".join(row) + "\n" for row in rows)
    return root


def test_the_two_graphs_get_disjoint_ids_and_the_relations_are_shared(tmp_path):
    task = load_inductive(_write(str(tmp_path)), "fb237", 1)
    n1 = task.num_train_entities
    assert n1 == 6 and task.num_entities == 6 + 5  # a-f; u, v, w, a (new), z
    assert task.num_relations == 3  # g, p, s: sorted names
    assert int(task.triples.train[:, [0, 2]].max()) < n1
    assert int(task.test_graph[:, [0, 2]].min()) >= n1
    assert int(task.triples.test[:, [0, 2]].min()) >= n1
    # "a" of the test graph is not the training graph's "a" (id 0)
    test_a = int(task.test_graph[2, 2])
    assert test_a >= n1 and int(task.triples.test[0, 2]) == test_a
    # the test relation is the training relation of the same name
    assert task.triples.test[0, 1] == task.triples.train[2, 1] == 0  # g
    assert task.eval_graph("val") is None and torch.equal(task.eval_graph("test"),
                                                          task.test_graph)


@pytest.mark.parametrize("files,message", [
    (dict(test=[("v", "q", "a")]), "relation 'q' is not in the training graph"),
    (dict(test=[("v", "g", "zz")]), "entity 'zz' is not in its graph"),
    (dict(valid=[("c", "g", "u")]), "entity 'u' is not in its graph"),
    (dict(train=TRAIN + [("a", "b")]), "expected 3 tab-separated fields")])
def test_bad_files_are_value_errors_that_say_where(tmp_path, files, message):
    root = str(tmp_path)
    _write(root, **{**dict(train=TRAIN, valid=VALID, graph=TEST_GRAPH, test=TEST), **files})
    with pytest.raises(ValueError, match=message):
        load_inductive(root, "fb237", 1)


def test_a_missing_split_is_one_line_exit_2(tmp_path, capsys):
    assert cli.main(["ind-nell-v2", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--quick", "--seeds", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nell_v2" in err and "kkteru/grail" in err


def test_ranking_is_against_the_query_graph_filtered_by_its_own_facts(tmp_path):
    task = load_inductive(_write(str(tmp_path)), "fb237", 1)
    n1, N = task.num_train_entities, task.num_entities
    names = ["u", "v", "w", "a", "z"]  # test ids n1.. in order of appearance
    t = {x: n1 + i for i, x in enumerate(names)}
    # query (u, g, ?): answer w; filtered: nothing else (u g w is the only g fact of u)
    # query (v, g, ?): the test triple, answer a; ranked against u, v, w, z only
    scores = torch.zeros(2, N)
    scores[:, :n1] = 10.0  # training entities outscore everything: must not count
    scores[0, [t["w"], t["a"], t["z"]]] = torch.tensor([1.0, 2.0, 0.5])
    scores[1, [t["a"], t["u"], t["w"]]] = torch.tensor([1.0, 3.0, 1.0])
    entity = torch.tensor([t["u"], t["v"]])
    relation = torch.tensor([0, 0])
    answer = torch.tensor([t["w"], t["a"]])
    n, metrics = task.batch_metrics(entity, relation, answer, scores)
    # ranks: query 1: a above w -> 2; query 2: u above, w tied -> 2.5 (ties half)
    assert n == 2 and metrics["mrr"] == pytest.approx((1 / 2 + 1 / 2.5) / 2)
    assert metrics["hits@1"] == 0.0 and metrics["hits@10"] == 1.0
    # an inverse query (a, g^-1, ?) answers v: the test triple filters nothing else
    n, metrics = task.batch_metrics(torch.tensor([t["a"]]), torch.tensor([3]),
                                    torch.tensor([t["v"]]), scores[1:].clone())
    # v scores 0 there; u 3, w 1, a (the anchor) 1, z 0 (tied) -> rank 3 + 0.5 + 1 = 4.5
    assert metrics["mrr"] == pytest.approx(1 / 4.5)
    # validation queries: ranked against the training entities, the test graph ignored
    scores = torch.zeros(1, N)
    scores[0, n1:] = 99.0
    scores[0, 5] = 1.0  # f: the answer of (c, g, ?); e, its training answer, filtered
    scores[0, 4] = 2.0
    _, metrics = task.batch_metrics(torch.tensor([2]), torch.tensor([0]), torch.tensor([5]),
                                    scores)
    assert metrics["mrr"] == 1.0


def test_filtering_removes_other_true_answers_of_the_test_graph(tmp_path):
    # (v, p, ?) answers w; (v, p, x) is a second fact of the test graph: filtered
    root = _write(str(tmp_path), graph=TEST_GRAPH + [("v", "p", "x")],
                  test=[("v", "p", "w")])
    task = load_inductive(root, "fb237", 1)
    n1 = task.num_train_entities
    ids = {x: n1 + i for i, x in enumerate(["u", "v", "w", "a", "z", "x"])}
    scores = torch.zeros(1, task.num_entities)
    scores[0, ids["x"]], scores[0, ids["w"]] = 5.0, 4.0
    _, metrics = task.batch_metrics(torch.tensor([ids["v"]]), torch.tensor([1]),
                                    torch.tensor([ids["w"]]), scores)
    assert metrics["mrr"] == 1.0


def test_sampled_hits_against_every_draw_enumerated():
    pos = torch.tensor([2.0, 0.0, 5.0, 2.0])
    neg = torch.tensor([[3.0, 1.0, 2.5, -math.inf],  # two of three above
                        [1.0, 2.0, 3.0, 4.0],  # all four above
                        [1.0, 1.0, 1.0, 1.0],  # none above
                        [3.0, 1.0, 2.0, -math.inf]])  # one above, one tied
    k, n = 2, 3
    got = sampled_hits(pos, neg, k=k, negatives=n)
    for row in range(3):  # every draw of n negatives, uniform with replacement
        candidates = [float(x) for x in neg[row] if math.isfinite(x)]
        draws = list(itertools.product(candidates, repeat=n))
        hits = sum(sum(x > pos[row] for x in draw) < k for draw in draws)
        assert float(got[row]) == pytest.approx(hits / len(draws))
    assert float(got[1]) == 0.0 and float(got[2]) == 1.0
    # a tie counts half in the share above: (1 + 0.5) / 3; P[Bin(3, 0.5) < 2] = 4 / 8
    assert float(got[3]) == pytest.approx(0.5)
    # GraIL's count: 50 negatives, Hits@10; a positive above half of its candidates
    half = sampled_hits(torch.tensor([0.0]), torch.tensor([[1.0, -1.0]]))
    assert float(half) == pytest.approx(sum(math.comb(50, i) for i in range(10)) / 2 ** 50)


def test_training_hides_each_batch_s_edges_and_the_test_runs_on_the_test_graph(tmp_path):
    task = load_inductive(_write(str(tmp_path)), "fb237", 1)
    task.batch_size = 4
    experiment = task.setup("ppr", 0, task.models["ppr"].options, torch.device("cpu"))
    seen = []
    real = experiment.model.prepare

    def record(graph, relation=0):
        seen.append(graph)
        return real(graph, relation)

    experiment.model.prepare = record
    experiment.evaluate("val")
    experiment.evaluate("test")
    train_edges = {(s, d) for s, d in zip(seen[0].src.tolist(), seen[0].dst.tolist(), strict=True)}
    test_edges = {(s, d) for s, d in zip(seen[1].src.tolist(), seen[1].dst.tolist(), strict=True)}
    h, _, t = task.test_graph.unbind(1)
    assert test_edges == set(zip(h.tolist(), t.tolist(), strict=True)) | set(
        zip(t.tolist(), h.tolist(), strict=True))
    assert all(max(e) < task.num_train_entities for e in train_edges)
    # a training batch: its own triples hidden from the graph the model sees
    experiment = task.setup("qgfd", 0, task.models["qgfd"].options, torch.device("cpu"))
    calls = []
    forward = experiment.model.forward
    experiment.model.forward = lambda e, q, g: calls.append((e, q, g)) or forward(e, q, g)
    batch = torch.tensor([0, 2])  # queries of training triples 0 and 2, tail direction
    experiment.batch_loss(batch)
    graph = calls[0][2]
    edges = set(zip(graph.src.tolist(), graph.dst.tolist(), graph.rel.tolist(), strict=True))
    for h, r, t in task.triples.train[[0, 2]].tolist():
        assert (h, t, r) not in edges and (t, h, r + task.num_relations) not in edges
    assert len(edges) == 2 * (task.triples.train.size(0) - 2)


def test_rules_mined_on_the_training_graph_answer_on_the_test_graph(tmp_path):
    task = load_inductive(_write(str(tmp_path)), "fb237", 1)
    train = KGGraph.from_triples(task.triples.train, task.num_relations)
    test = KGGraph.from_triples(task.test_graph, task.num_relations)
    rules = MinedRules(task.num_entities, task.num_relations, min_support=1, seed=0,
                       pseudo_count=0.0)
    mined = rules.prepare(train)
    assert ((1, 1), 1.0) in mined.rules[0]  # g <- p . p, every p.p pair is a g pair
    on_test = rules.prepare(test)
    assert on_test.rules is mined.rules  # not mined again on the test graph
    n1 = task.num_train_entities
    v, a = n1 + 1, n1 + 3
    scores = rules.score(torch.tensor([v]), torch.tensor([0]), on_test)
    assert float(scores[0, a]) == 1.0 and float(scores[0, :n1].abs().sum()) == 0.0


def _nbfnet_by_loops(model, graph, entity, relation, num_nodes):
    """NBFNet's scores by explicit loops over queries, nodes and edges (float64)."""
    src, dst, rel = graph.src.tolist(), graph.dst.tolist(), graph.rel.tolist()
    d = model.hidden
    degree = [1 + sum(1 for x in dst if x == v) for v in range(num_nodes)]
    logs = [math.log(x) for x in degree]
    root = graph.root  # the mean log-degree over the entities of the graph's facts
    entities = set(root.src.tolist()) | set(root.dst.tolist())
    mean_log = sum(logs[v] for v in entities) / len(entities)
    out = torch.zeros(entity.numel(), num_nodes, dtype=torch.float64)
    mlp = copy.deepcopy(model.mlp).double()
    for b in range(entity.numel()):
        q = model.query.weight[relation[b]].double()
        boundary = torch.zeros(num_nodes, d, dtype=torch.float64)
        boundary[entity[b]] = q
        x = boundary.clone()
        for layer in model.layers:
            if layer.dependent:
                w = layer.relation(q.float()).double().view(-1, d)
            else:
                w = layer.relation.weight.double()
            new = torch.zeros_like(x)
            for v in range(num_nodes):
                msgs = [x[u] * w[r] for u, t, r in zip(src, dst, rel, strict=True)
                        if t == v] + [boundary[v]]
                m = torch.stack(msgs)
                mean, sq = m.mean(0), (m * m).mean(0)
                std = (sq - mean * mean).clamp_min(layer.eps).sqrt()
                s = logs[v] / mean_log
                feats = []
                for scale in (1.0, s, 1.0 / max(s, 1e-2)):
                    feats.append(torch.cat([mean, m.max(0).values, m.min(0).values, std])
                                 * scale)
                h = layer.linear.weight.double() @ torch.cat([x[v]] + feats) \
                    + layer.linear.bias.double()
                h = torch.nn.functional.layer_norm(h, (d,), layer.norm.weight.double(),
                                                   layer.norm.bias.double(), layer.norm.eps)
                new[v] = torch.relu(h) + x[v]
            x = new
        for v in range(num_nodes):
            out[b, v] = mlp(torch.cat([x[v], q])).squeeze()
    return out


@pytest.mark.parametrize("dependent", [True, False])
def test_nbfnet_scores_equal_the_loop_over_nodes_and_edges(dependent):
    torch.manual_seed(0)
    N, R = 7, 2  # entity 6 touches no edge: scored as the one untouched node
    triples = torch.tensor([[0, 0, 1], [1, 1, 2], [2, 0, 3], [3, 1, 0], [4, 0, 1], [5, 1, 4]])
    graph = KGGraph.from_triples(triples, R)
    model = NBFNet(N, R, hidden=4, layers=2, dependent=dependent).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, 0.0, 0.5)
    # anchor 6 has no edge: it must not change the degree scalers of the others
    entity, relation = torch.tensor([0, 2, 5, 6]), torch.tensor([0, 3, 1, 2])
    got = model(entity, relation, graph)
    expected = _nbfnet_by_loops(model, graph, entity, relation, N)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_nbfnet_loss_draws_negatives_only_where_allowed():
    torch.manual_seed(0)
    model = NBFNet(5, 1, hidden=4, layers=1, num_negative=8, temperature=0.5)
    scores = torch.tensor([[0.3, -1.0, 2.0, 0.7, 4.0]])
    exclude = torch.tensor([[False, True, False, True, True]])  # candidates: 0 and 2
    answer = torch.tensor([0])  # the answer is never its own negative: only 2 is left
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = (bce(torch.tensor(0.3), torch.tensor(1.0))
                + bce(torch.tensor(2.0), torch.tensor(0.0))) / 2  # 8 equal weights sum to 1
    assert float(model.loss(scores, answer, exclude)) == pytest.approx(float(expected))
    with pytest.raises(ValueError, match="no negative candidate"):
        model.loss(scores, torch.tensor([2]), exclude | (torch.arange(5) == 0))


@pytest.mark.slow
def test_inductive_task_end_to_end(tmp_path):
    root = _write(str(tmp_path))
    out = str(tmp_path / "out")
    assert cli.main(["ind-fb237-v1", "--root", root, "--out", out, "--seeds", "1",
                     "--epochs", "2", "--patience", "1", "--no-progress",
                     "--models", "qgfd,attention,nbfnet,ppr,rule"]) == 0
    with open(os.path.join(out, "ind-fb237-v1.json")) as f:
        result = json.load(f)
    runs = {r["model"]: r for r in result["runs"]}
    assert set(runs) == {"qgfd", "attention", "nbfnet", "ppr", "rule"}
    for run in runs.values():
        assert 0.0 < run["test"] <= 1.0 and 0.0 <= run["hits@10_50"] <= 1.0
    # the rule g <- p . p answers the test query (v, g, a) exactly; its inverse too
    assert runs["rule"]["test"] == 1.0
    assert runs["qgfd"]["params"] < 5000  # nothing per entity
    with open(os.path.join(out, "ind-fb237-v1.md")) as f:
        assert "Hits@10 (50 neg.)" in f.read()


def test_nbfnet_negatives_are_training_entities_that_do_not_answer(tmp_path):
    task = load_inductive(_write(str(tmp_path)), "fb237", 1)
    experiment = task.setup("nbfnet", 0, task.models["nbfnet"].options, torch.device("cpu"))
    seen = []
    loss = experiment.model.loss
    experiment.model.loss = lambda s, a, exclude: seen.append(exclude) or loss(s, a, exclude)
    # training triples 0 (a p b), 1 (b p c) and 6 (c g e), tail queries
    experiment.batch_loss(torch.tensor([0, 1, 6]))
    exclude = seen[0]
    n1 = task.num_train_entities
    assert bool(exclude[:, n1:].all())  # the test graph's entities: never a negative
    a, b, c = 0, 1, 2
    assert bool(exclude[0, b]) and not bool(exclude[0, c]) and not bool(exclude[0, a])
    assert bool(exclude[1, c]) and not bool(exclude[1, b])
    # the validation fact (c, g, f) is held out: f stays a negative of (c, g)
    e, f = 4, 5
    assert bool(exclude[2, e]) and not bool(exclude[2, f])


def test_a_batch_s_gradient_in_parts_is_the_whole_batch_s(tmp_path):
    """NBFNet's micro_batch (memory only): the parts' weighted gradients sum to the whole
    batch's, and every part's flow has the whole batch's facts hidden."""
    import torch.nn.functional as F

    task = load_inductive(_write(str(tmp_path)), "fb237", 1)
    experiment = task.setup("nbfnet", 0, task.models["nbfnet"].options, torch.device("cpu"))
    model = experiment.model
    model.loss = lambda scores, answer, exclude: F.cross_entropy(scores, answer)  # no draws
    batch = torch.tensor([0, 1, 2, 3, 6])
    experiment.train_batches = lambda: [batch]
    experiment.optimizer.step = lambda: None  # compare the gradients, not a step
    seen = []
    forward = model.forward
    model.forward = lambda e, q, g: seen.append(g.src.numel()) or forward(e, q, g)
    params = [p for p in model.parameters() if p.requires_grad]

    model.micro_batch = None
    whole_loss = experiment.train_epoch()
    whole = [p.grad.clone() for p in params]
    model.micro_batch = 2
    parts_loss = experiment.train_epoch()
    assert seen == [2 * (task.triples.train.size(0) - 5)] * 4  # 1 whole + 3 parts, 5 hidden
    assert parts_loss == pytest.approx(whole_loss, rel=1e-5)
    for got, want in zip([p.grad for p in params], whole, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
