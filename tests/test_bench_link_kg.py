"""Link prediction and knowledge-graph completion in the runner: metrics on hand-made cases,
the KG models against brute-force computations, and every task end to end on short budgets
(tiny data in the real on-disk formats where the real data do not ship)."""
import json
import os

import pytest
import torch
from tiny_data import WN18RR_RELATIONS, write_kg, write_ogbl

from qgfd_pyg.bench import cli
from qgfd_pyg.bench.kg import (KGGraph, Filter, PyGKGE, Triples, filtered_ranking,
                               queries)
from qgfd_pyg.bench.metrics import hits_at, link_metrics, ranking
from qgfd_pyg.bench.tasks import load_task

SHORT = ["--seeds", "1", "--epochs", "2", "--patience", "1", "--no-progress"]


def read(out, name):
    with open(os.path.join(out, f"{name}.json")) as f:
        return json.load(f)


def test_link_metrics_on_hand_made_scores():
    perfect = link_metrics(torch.tensor([5.0, 4.0, 3.0]), torch.tensor([1.0, 0.0]), ks=(1, 2))
    assert perfect == {"auc": 1.0, "ap": 1.0, "hits@1": 1.0, "hits@2": 1.0, "mrr": 1.0}
    # positives 3 and 1 against negatives 2 and 0: pairs won 3 of 4; ranks 1 and 2
    m = link_metrics(torch.tensor([3.0, 1.0]), torch.tensor([2.0, 0.0]), ks=(1, 2))
    assert m["auc"] == pytest.approx(0.75)
    assert m["ap"] == pytest.approx((1 / 1 + 2 / 3) / 2)  # precision at each positive
    assert m["hits@1"] == pytest.approx(0.5)  # above the best negative (2): only 3
    assert m["mrr"] == pytest.approx((1 + 1 / 2) / 2)
    # a tie counts half: rank 1.5 between the optimistic 1 and the pessimistic 2
    assert ranking(torch.tensor([2.0]), torch.tensor([[2.0, 0.0]]))["mrr"] == pytest.approx(1 / 1.5)
    assert hits_at(torch.tensor([3.0, 1.0]), torch.tensor([2.0, 0.0, -1.0]), 3) == 1.0


def test_filtered_ranking_ignores_the_other_true_answers():
    train = torch.tensor([[0, 0, 1], [0, 0, 2], [3, 1, 0]])
    f = Filter(Triples(train, torch.tensor([[0, 0, 3]]), torch.tensor([[1, 0, 2]])), 4, 2)
    # (0, r0, ?) -> {1, 2, 3}; (2, r0^-1, ?) -> {0, 1}; (0, r1^-1, ?) -> {3}
    mask = f.mask(torch.tensor([0, 2, 0]), torch.tensor([0, 2, 3]), 4)
    assert mask.tolist() == [[False, True, True, True], [True, True, False, False],
                             [False, False, False, True]]
    scores = torch.tensor([[0.0, 5.0, 4.0, 3.0]])  # answer 3 is only third unfiltered
    filtered = filtered_ranking(scores, torch.tensor([3]), mask[:1])
    assert filtered["mrr"] == 1.0 and filtered["hits@1"] == 1.0
    unfiltered = filtered_ranking(scores, torch.tensor([3]), torch.zeros(1, 4, dtype=torch.bool))
    assert unfiltered["mrr"] == pytest.approx(1 / 3) and unfiltered["hits@3"] == 1.0
    # a wrong candidate above the answer still counts
    worse = filtered_ranking(torch.tensor([[9.0, 5.0, 4.0, 3.0]]), torch.tensor([3]), mask[:1])
    assert worse["mrr"] == pytest.approx(1 / 2)


def test_queries_and_graph_without_a_batch_of_triples():
    train = torch.tensor([[0, 0, 1], [1, 1, 2], [2, 0, 0]])
    q = queries(train, 2)
    assert q.tolist() == [[0, 0, 1], [1, 1, 2], [2, 0, 0], [1, 2, 0], [2, 3, 1], [0, 2, 2]]
    graph = KGGraph.from_triples(train, 2).without(torch.tensor([1]))
    edges = sorted(zip(graph.src.tolist(), graph.dst.tolist(), graph.rel.tolist(), strict=True))
    assert edges == [(0, 1, 0), (0, 2, 2), (1, 0, 2), (2, 0, 0)]


@pytest.mark.parametrize("cls", ["DistMult", "RotatE"])
def test_pyg_kge_scores_of_all_candidates_equal_the_models_own(cls):
    from torch_geometric.nn import kge

    n, r = 7, 3
    model = PyGKGE(getattr(kge, cls)(n, r, 4), r)
    entity, relation = torch.tensor([0, 5, 2, 6]), torch.tensor([0, 2, 3, 5])
    got = model(entity, relation)
    for i, (e, q) in enumerate(zip(entity.tolist(), relation.tolist(), strict=True)):
        cand = torch.arange(n)
        fixed = torch.full((n,), e)
        rel = torch.full((n,), q % r)
        own = model.kge(fixed, rel, cand) if q < r else model.kge(cand, rel, fixed)
        torch.testing.assert_close(got[i], own, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model._chunked(entity, relation % r, relation >= r), got,
                               atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_link_tasks_end_to_end(tmp_path, capsys):
    out = str(tmp_path)
    assert cli.main(["cora-link", "--out", out] + SHORT) == 0
    result = read(out, "cora-link")
    assert [row["model"] for row in result["summary"]] == ["qgfd", "gat", "appnp", "gcn", "mlp"]
    for run in result["runs"]:
        assert 0.0 <= run["test"] <= 1.0 and run["epochs"] <= 2
        assert {"ap", "hits@20", "hits@50", "hits@100", "mrr"} <= set(run)
    printed = capsys.readouterr().out
    assert "| qgfd |" in printed and "Hits@100" in printed
    assert cli.main(["citeseer-link", "--out", out, "--models", "gcn"] + SHORT) == 0
    assert read(out, "citeseer-link")["config"]["metric"] == "auc"


def test_link_split_is_fixed_per_seed_and_disjoint():
    task = load_task("cora-link", os.path.join(os.path.dirname(__file__), "..", "datasets"))
    a, b, c = task.splits(0), task.splits(0), task.splits(1)
    assert torch.equal(a[2].pos, b[2].pos) and not torch.equal(a[2].pos, c[2].pos)
    train, val, test = a

    def edges(t):
        return {tuple(sorted(e)) for e in t.t().tolist()}
    assert not edges(train.pos) & edges(test.pos) and not edges(val.pos) & edges(test.pos)
    # messages never pass over the edges being scored; the test graph adds the val edges
    assert not edges(train.edge_index) & (edges(test.pos) | edges(val.pos))
    assert not edges(val.edge_index) & (edges(test.pos) | edges(val.pos))
    assert not edges(test.edge_index) & edges(test.pos)
    assert edges(test.edge_index) == edges(train.edge_index) | edges(val.pos)
    total = len(edges(train.pos)) + len(edges(val.pos)) + len(edges(test.pos))
    assert len(edges(test.pos)) == pytest.approx(0.1 * total, abs=2)


@pytest.mark.slow
@pytest.mark.parametrize("name,metric", [("ogbl-collab", "hits@50"), ("ogbl-ddi", "hits@20")])
def test_ogbl_on_tiny_data_in_ogb_format(tmp_path, name, metric):
    write_ogbl(str(tmp_path), name)
    out = str(tmp_path / "out")
    assert cli.main([name, "--root", str(tmp_path), "--out", out, "--models", "gcn,qgfd"]
                    + SHORT) == 0
    result = read(out, name)
    assert result["config"]["metric"] == metric
    assert all(0.0 <= r["test"] <= 1.0 for r in result["runs"])


def _kg_root(tmp_path, folder="WN18RR", relations=WN18RR_RELATIONS):
    write_kg(str(tmp_path / folder / "raw"), relations)
    return str(tmp_path)


@pytest.mark.parametrize("task,folder,relations", [
    ("wn18rr", "WN18RR", WN18RR_RELATIONS),
    ("fb15k-237", "FB15k-237", ("/people/parent", "/people/spouse", "/film/genre", "/a/b"))])
@pytest.mark.slow
def test_kg_tasks_end_to_end_on_tiny_data(tmp_path, task, folder, relations):
    root = _kg_root(tmp_path, folder, relations)
    out = str(tmp_path / "out")
    assert cli.main([task, "--root", root, "--out", out, "--quick"] + SHORT) == 0
    result = read(out, task)
    assert [row["model"] for row in result["summary"]] == [
        "qgfd", "gat", "appnp", "distmult", "rotate", "attention", "rule", "ppr",
        "rotate-paper"]
    assert result["config"]["quick"] is True and result["config"]["metric"] == "filtered MRR"
    for run in result["runs"]:
        assert 0.0 < run["test"] <= 1.0 and run["hits@1"] <= run["hits@3"] <= run["hits@10"]
        # the rule and PPR references learn nothing: one epoch, however long the budget
        assert (run["epochs"] == 1) == (run["model"] in ("rule", "ppr")) and run["params"] >= 0


@pytest.mark.slow
def test_kg_default_budget_and_options(tmp_path, capsys):
    root = _kg_root(tmp_path)
    out = str(tmp_path / "out")
    argv = ["wn18rr", "--root", root, "--out", out, "--quick", "--seeds", "1", "--no-progress",
            "--models", "qgfd", "--alpha", "0.3"]
    assert cli.main(argv) == 0
    config = read(out, "wn18rr")["config"]
    assert (config["epochs"], config["patience"]) == (2, 1)  # the --quick budget
    assert config["qgfd"]["alpha"] == 0.3 and config["qgfd"]["steps"] == 5  # WN18RR's choice
    capsys.readouterr()
    assert cli.main(argv + ["--transition", "knn"]) == 2  # a node-task option
    assert "do not apply" in capsys.readouterr().err
    assert cli.main(argv + ["--max-minutes", "0"]) == 2
    assert "max_minutes must be positive" in capsys.readouterr().err
    # a wall-clock budget every epoch passes: one epoch per run, stated in the results
    assert cli.main(argv + ["--max-minutes", "1e-9", "--epochs", "5", "--patience", "5",
                            "--name", "timed"]) == 0
    timed = read(out, "timed")
    assert timed["config"]["max_minutes"] == 1e-9 and timed["runs"][0]["epochs"] == 1
    assert "at most 1e-09 minutes" in open(os.path.join(out, "timed.md")).read()
    assert "max_minutes" not in config  # absent unless set: earlier result files resume
    # --epoch-batches: an epoch is that many random training batches, stated in the results
    base = ["wn18rr", "--root", root, "--out", out, "--seeds", "1", "--no-progress", "--models",
            "distmult", "--epochs", "1", "--patience", "1"]
    batches = []
    from qgfd_pyg.bench import kg
    original = kg.KGExperiment.batch_loss

    def counting(self, idx):
        batches.append(idx.numel())
        return original(self, idx)
    kg.KGExperiment.batch_loss = counting
    try:
        # (one-relation batches: the tiny set's 324 queries make one mixed batch of 512)
        assert cli.main(base + ["--epoch-batches", "2", "--batches", "relation",
                                "--name", "two"]) == 0
    finally:
        kg.KGExperiment.batch_loss = original
    assert len(batches) == 2 and read(out, "two")["config"]["train_batches"] == 2
    assert "an epoch: 2 random batches" in open(os.path.join(out, "two.md")).read()
    capsys.readouterr()
    assert cli.main(base + ["--epoch-batches", "0", "--name", "zero"]) == 2
    assert "epoch_batches must be a positive integer" in capsys.readouterr().err
    # --batches: one query relation per batch, stated in the results (mixed: the default)
    assert read(out, "two")["config"]["batches"] == "relation"
    assert "batches of 512 queries of one relation" in open(os.path.join(out, "two.md")).read()
    capsys.readouterr()
    assert cli.main(base + ["--batches", "some", "--name", "some"]) == 2
    assert "batches must be one of ['mixed', 'relation'] (got 'some')" in \
        capsys.readouterr().err
    # --lr: the learning rate of the models run, in their optimiser and in the results
    rates = []
    real_optimizer = kg.make_optimizer

    def recording(model, spec):
        optimizer = real_optimizer(model, spec)
        rates.append(optimizer.param_groups[0]["lr"])
        return optimizer
    kg.make_optimizer = recording
    try:
        assert cli.main(base + ["--lr", "0.125", "--name", "rate"]) == 0
    finally:
        kg.make_optimizer = real_optimizer
    assert rates == [0.125] and read(out, "rate")["config"]["specs"]["distmult"]["lr"] == 0.125
    assert "- learning rates: distmult 0.125" in open(os.path.join(out, "rate.md")).read()
    assert read(out, "rate")["config"]["batches"] == "mixed"  # the default on WN18RR
    assert "batches of 512 random queries (mixed relations)" in \
        open(os.path.join(out, "rate.md")).read()
    assert kg.KG_MODELS["distmult"].lr == 0.005  # the kind's table itself is left alone
    assert "- learning rates: distmult 0.005" in open(os.path.join(out, "two.md")).read()
    capsys.readouterr()
    assert cli.main(base + ["--lr", "0", "--name", "zero-rate"]) == 2
    assert "lr must be a positive number (got 0.0)" in capsys.readouterr().err


@pytest.mark.parametrize("corrupt,message", [
    ("00000001\t_hypernym\n", "expected 3 tab-separated fields"),
    ("00000001\t_no_such_relation\t00000002\n", "unknown relation")])
@pytest.mark.slow
def test_corrupted_raw_files_are_one_line_exit_2_and_keep_results(tmp_path, capsys, corrupt,
                                                                  message):
    root = _kg_root(tmp_path)
    out = tmp_path / "out"
    argv = ["wn18rr", "--root", root, "--out", str(out), "--quick", "--models", "distmult"]
    assert cli.main(argv + SHORT) == 0
    before = (out / "wn18rr.json").read_text()
    raw = tmp_path / "WN18RR" / "raw"  # PyG's processed copy exists: checked all the same
    with open(raw / "test.txt", "a") as f:
        f.write(corrupt)
    capsys.readouterr()
    assert cli.main(argv + SHORT) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "test.txt" in err[0]
    assert (out / "wn18rr.json").read_text() == before


@pytest.mark.parametrize("task", ["fb15k-237", "ogbl-collab", "ogbl-ddi", "wn18rr"])
def test_missing_link_and_kg_data_is_one_line_exit_2(task, tmp_path, capsys):
    root, out = tmp_path / "data", tmp_path / "out"
    root.mkdir()
    assert cli.main([task, "--root", str(root), "--out", str(out)] + SHORT) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0] and str(root) in err[0]
    assert not out.exists()


@pytest.mark.parametrize("batches", ["relation", "mixed"])
def test_kg_training_batches_share_a_relation_and_hide_their_own_edges(tmp_path, batches):
    """One relation per batch by default; random batches of any relations with --batches
    mixed; either way every query once per epoch, and a batch's own facts hidden."""
    task = load_task("wn18rr", _kg_root(tmp_path), None, {"batches": batches})
    task.batch_size = 8
    experiment = task.setup("qgfd", 0, task.models["qgfd"].options, torch.device("cpu"))
    batches_ = experiment.batches()
    seen = torch.cat(batches_)
    assert sorted(seen.tolist()) == list(range(experiment.train.size(0)))  # each query once
    relations = [experiment.train[b, 1].unique().numel() for b in batches_]
    if batches == "relation":
        assert all(n == 1 for n in relations)
    else:
        assert sum(n > 1 for n in relations) > len(batches_) // 2
    assert max(b.numel() for b in batches_) == 8
    calls, hidden = [], []
    real, real_loss = experiment.model.forward, experiment.batch_loss

    def record(entity, relation, graph):
        calls.append((entity, relation, graph))
        return real(entity, relation, graph)

    def record_loss(idx):
        hidden.append(set(experiment.train_ids[idx].tolist()))  # the batch's triples
        return real_loss(idx)

    experiment.model.forward, experiment.batch_loss = record, record_loss
    experiment.train_epoch()
    train = task.triples.train
    assert len(calls) == len(hidden) == len(batches_)
    for (entity, relation, graph), triples in zip(calls, hidden, strict=True):
        edges = set(zip(graph.src.tolist(), graph.dst.tolist(), graph.rel.tolist(), strict=True))
        assert len(edges) == 2 * train.size(0) - 2 * len(triples)
        for e, q in zip(entity.tolist(), relation.tolist(), strict=True):
            # the query's own fact, in neither direction
            match = [tuple(t) for t in queries(train, task.num_relations).tolist()
                     if t[0] == e and t[1] == q]
            assert all((h, a, r) not in edges for h, r, a in match) or len(match) > 1


def test_countries_auc_pr_against_a_direct_computation(tmp_path):
    task = load_task("countries-s2", os.path.join(os.path.dirname(__file__), "..", "datasets"))
    regions = task.regions
    answer = regions[torch.tensor([0, 3, 1])]
    entity = torch.tensor([10, 11, 12])
    scores = torch.full((3, task.num_entities), -5.0)
    # region scores per query (columns: the five regions in order)
    scores[:, regions] = torch.tensor([[0.9, 0.1, 0.3, 0.2, 0.0],
                                       [0.8, 0.2, 0.1, 0.7, 0.0],
                                       [0.6, 0.5, 0.4, 0.3, 0.2]])
    relation = torch.full((3,), task.locatedin)
    got = task.reduce([task.batch_metrics(entity, relation, answer, scores)])["metric"]
    # by hand: 15 pairs, positives at 0.9, 0.7 and 0.5; ranked 0.9+ 0.8 0.7+ 0.6 0.5+ ...
    # precision at each positive: 1/1, 2/3, 3/5
    assert got == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    with pytest.raises(ValueError, match="regions"):
        task.batch_metrics(entity, relation, torch.tensor([0, 1, 2]), scores)
    assert task.eval_queries("test").size(0) == 24  # locatedin of the test countries only


@pytest.mark.slow
def test_countries_end_to_end_and_unknown_entities(tmp_path, capsys):
    out = str(tmp_path / "out")
    data = os.path.join(os.path.dirname(__file__), "..", "datasets")
    assert cli.main(["countries-s1", "--root", data, "--out", out, "--quick",
                     "--models", "qgfd,attention,distmult"] + SHORT) == 0
    result = read(out, "countries-s1")
    assert result["config"]["metric"] == "AUC-PR"
    assert all(0.0 < r["test"] <= 1.0 for r in result["runs"])
    raw = tmp_path / "kg" / "countries_S1"
    raw.mkdir(parents=True)
    for name in ("train", "valid", "test"):
        text = open(os.path.join(data, "kg", "countries_S1", f"{name}.txt")).read()
        if name == "test":
            text += "atlantis\tlocatedin\teurope\n"
        (raw / f"{name}.txt").write_text(text)
    capsys.readouterr()
    assert cli.main(["countries-s1", "--root", str(tmp_path), "--out", out] + SHORT) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'atlantis'" in err[0] and "test.txt" in err[0]


def test_kg_epochs_draw_batch_bars_only_with_progress(tmp_path, monkeypatch):
    import tqdm

    drawn = []

    class Bar(list):
        def __init__(self, iterable, **kwargs):
            drawn.append(kwargs.get("unit"))
            super().__init__(iterable)

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    task = load_task("wn18rr", _kg_root(tmp_path), extra={"quick": True})
    experiment = task.setup("distmult", 0, task.models["distmult"].options, torch.device("cpu"))
    experiment.train_epoch()
    assert drawn == []
    experiment.progress = True
    experiment.train_epoch()
    assert drawn == ["batch"]


def test_list_shows_every_task_once_under_its_kind(capsys):
    from qgfd_pyg.bench.tasks import task_names

    assert cli.main(["--list"]) == 0
    text = capsys.readouterr().out
    for kind in ("node", "link", "kg", "qa"):
        assert text.count(f"{kind} tasks:") == 1 and text.count(f"models ({kind}):") == 1
    for name in task_names():
        assert sum(line.split()[0] == name for line in text.splitlines() if line.strip()) == 1
    assert text.index("countries-s3") < text.index("qa tasks:")


@pytest.mark.parametrize("model", ["qgfd", "distmult"])
def test_kg_training_epochs_step_the_optimiser_and_lower_the_loss(tmp_path, model):
    task = load_task("wn18rr", _kg_root(tmp_path))
    task.batch_size = 16
    experiment = task.setup(model, 0, task.models[model].options, torch.device("cpu"))
    before = [p.detach().clone() for p in experiment.model.parameters()]
    losses = [experiment.train_epoch() for _ in range(15)]
    assert any(not torch.equal(a, b) for a, b in zip(before, experiment.model.parameters(),
                                                     strict=True))
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.slow
def test_results_of_separate_processes_merge_into_one_sweep(tmp_path):
    """One process per model (the GPU script), merged: the runs of both, the models in the
    files' order, the seeds of both; other options or a repeated run are refused."""
    from qgfd_pyg.bench.report import merge_results
    from qgfd_pyg.bench.tasks import load_task

    root = _kg_root(tmp_path)
    base = ["wn18rr", "--root", root, "--quick", "--no-progress", "--epochs", "1"]
    for model, seeds in (("distmult", "2"), ("qgfd", "1")):
        assert cli.main(base + ["--models", model, "--seeds", seeds,
                                "--out", str(tmp_path / model)]) == 0
    parts = [str(tmp_path / m / "wn18rr.json") for m in ("distmult", "qgfd")]
    task = load_task("wn18rr", root, None, {"quick": True})
    merge_results(parts, str(tmp_path / "all"), "wn18rr", task)
    merged = read(str(tmp_path / "all"), "wn18rr")
    assert merged["config"]["models"] == ["distmult", "qgfd"]
    assert (merged["config"]["seed_list"], merged["config"]["seeds"]) == ([0, 1], 2)
    expected = sum((read(str(tmp_path / m), "wn18rr")["runs"] for m in ("distmult", "qgfd")),
                   [])
    assert merged["runs"] == expected
    rows = {row["model"]: row for row in merged["summary"]}
    assert rows["distmult"]["seeds"] == 2 and rows["qgfd"]["seeds"] == 1
    assert rows["qgfd"]["test"]["mean"] == expected[2]["test"]
    assert rows["qgfd"]["hits@10"]["mean"] == expected[2]["hits@10"]  # the task's columns
    md = open(tmp_path / "all" / "wn18rr.md").read()
    assert "| distmult |" in md and "| qgfd |" in md and "--models qgfd" in md
    # each file's models' settings come along (what resuming the merged file checks)
    assert set(merged["config"]["specs"]) == {"distmult", "qgfd"}
    assert merged["config"]["specs"]["distmult"]["lr"] == task.models["distmult"].lr
    merge_results(parts[::-1], str(tmp_path / "reversed"), "wn18rr", task)
    config = read(str(tmp_path / "reversed"), "wn18rr")["config"]
    assert (config["models"], config["seed_list"]) == (["qgfd", "distmult"], [0, 1])
    with pytest.raises(ValueError, match="two files"):
        merge_results(parts + parts[1:], str(tmp_path / "x"), "wn18rr", task)
    assert cli.main(base + ["--models", "rotate", "--seeds", "1", "--patience", "2",
                            "--out", str(tmp_path / "rotate")]) == 0
    with pytest.raises(ValueError, match="other options than .*: patience"):
        merge_results(parts + [str(tmp_path / "rotate" / "wn18rr.json")], str(tmp_path / "x"),
                      "wn18rr", task)
    # the QGFD options describe the QGFD rows only: a file without them merges whatever its
    # --alpha, and the merged file keeps the options of the file with QGFD runs
    assert cli.main(base + ["--models", "rotate", "--seeds", "1", "--alpha", "0.3",
                            "--out", str(tmp_path / "alpha")]) == 0
    merge_results([str(tmp_path / "alpha" / "wn18rr.json")] + parts, str(tmp_path / "mixed"),
                  "wn18rr", task)
    mixed = read(str(tmp_path / "mixed"), "wn18rr")["config"]
    assert mixed["qgfd"] == read(str(tmp_path / "qgfd"), "wn18rr")["config"]["qgfd"]
    assert cli.main(base + ["--models", "qgfd", "--seeds", "1", "--alpha", "0.3",
                            "--out", str(tmp_path / "qgfd-alpha")]) == 0
    with pytest.raises(ValueError, match="other options than .*: qgfd"):
        merge_results(parts + [str(tmp_path / "qgfd-alpha" / "wn18rr.json")],
                      str(tmp_path / "x"), "wn18rr", task)
