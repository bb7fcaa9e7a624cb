import math
import json
import os
import subprocess
import sys

import pytest
import torch
from tiny_data import write_ogbn_arxiv, write_planetoid

from qgfd_pyg.bench import cli, runner
from qgfd_pyg.bench.models import MODELS, InputDropout, build_model
from qgfd_pyg.bench.metrics import expected_calibration_error
from qgfd_pyg.bench.report import ResultStore
from qgfd_pyg.bench.tasks import load_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = ["--seeds", "1", "--epochs", "3", "--patience", "2", "--no-progress"]


def read(out, name):
    with open(os.path.join(out, f"{name}.json")) as f:
        return json.load(f)


def test_expected_calibration_error():
    y = torch.tensor([0, 1, 0, 1])
    sure = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(sure, y) == pytest.approx(0.0)
    over = torch.tensor([[0.9, 0.1]] * 4)  # 90% confident, 50% right
    assert expected_calibration_error(over, y) == pytest.approx(0.4)
    mixed = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.3, 0.7]])
    # bin (0.867, 0.933]: acc 0.5 vs 0.9; bin (0.667, 0.733]: acc 0.5 vs 0.7
    assert expected_calibration_error(mixed, y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.2)


def test_input_dropout_matches_dropout_in_distribution():
    x = (torch.rand(400, 300) < 0.02).float() * 3.0
    drop = InputDropout(0.5)
    outs = torch.stack([drop(x) for _ in range(200)])
    assert ((outs != 0) <= (x != 0)).all()  # zeros stay zero
    assert set(outs[:, x != 0].unique().tolist()) <= {0.0, 6.0}  # kept entries scaled by 2
    torch.testing.assert_close(outs.mean(0)[x != 0].mean(), torch.tensor(3.0), atol=0.05, rtol=0)
    drop.eval()
    assert drop(x) is x
    dense = InputDropout(0.5).train()(torch.ones(10, 10))
    assert set(dense.unique().tolist()) <= {0.0, 2.0}


def test_sparse_csr_input_gives_the_same_model_outputs():
    from qgfd_pyg.bench.train import as_model_input

    x = (torch.rand(30, 50) < 0.05).float()
    xs = as_model_input(x)
    assert xs.layout == torch.sparse_csr
    assert as_model_input(torch.randn(5, 4)).layout == torch.strided
    edge_index = torch.randint(0, 30, (2, 80))
    for name in MODELS:
        torch.manual_seed(0)
        model = build_model(name, 50, 3).eval()
        torch.testing.assert_close(model(xs, edge_index), model(x, edge_index), atol=1e-5,
                                   rtol=1e-5)
        model.train()
        torch.manual_seed(1)
        model(xs, edge_index).sum().backward()  # gradients through the sparse first layer
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    dropped = InputDropout(0.5).train()(xs)
    assert dropped.layout == torch.sparse_csr
    assert set(dropped.values().unique().tolist()) <= {0.0, 2.0}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_trains_one_step(name):
    model = build_model(name, 6, 3)
    x, edge_index = torch.randn(10, 6), torch.randint(0, 10, (2, 30))
    out = model(x, edge_index)
    assert out.shape == (10, 3)
    out.sum().backward()


@pytest.mark.slow
def test_cli_end_to_end_on_cora(tmp_path, capsys):
    assert cli.main(["cora", "--out", str(tmp_path)] + SHORT) == 0
    result = read(tmp_path, "cora")
    defaults = [m for m, spec in MODELS.items() if spec.default]  # gcn2 is opt-in
    assert result["complete"] and len(result["runs"]) == len(defaults)
    assert [row["model"] for row in result["summary"]] == defaults
    for run in result["runs"]:
        assert 0.0 <= run["test"] <= 1.0 and run["epochs"] <= 3 and run["params"] > 0
        assert 0.0 <= run["ece"] <= 1.0
        assert list(run) == ["model", "seed", "val", "val_loss", "best_epoch", "test", "ece",
                             "train_loss", "epochs", "sec_per_epoch", "peak_mem_mb", "params"]
    printed = capsys.readouterr().out
    assert "| qgfd |" in printed and "| appnp |" in printed
    assert "| gat |" in (tmp_path / "cora.md").read_text()


@pytest.mark.slow
def test_cli_on_tiny_ogb_and_planetoid_formats(tmp_path):
    write_ogbn_arxiv(str(tmp_path))
    write_planetoid(str(tmp_path), "PubMed")
    assert cli.main(["ogbn-arxiv", "--root", str(tmp_path), "--out", str(tmp_path)] + SHORT) == 0
    result = read(tmp_path, "ogbn-arxiv")
    assert result["config"]["metric"] == "acc (OGB Evaluator)"
    assert len(result["runs"]) == sum(spec.default for spec in MODELS.values())
    assert cli.main(["pubmed", "--root", str(tmp_path), "--out", str(tmp_path),
                     "--models", "qgfd,gcn"] + SHORT) == 0
    assert len(read(tmp_path, "pubmed")["runs"]) == 2


def test_tiny_loaders_keep_the_official_splits(tmp_path):
    write_ogbn_arxiv(str(tmp_path), n=200)
    task = load_task("ogbn-arxiv", str(tmp_path))
    train, val, test = task.split(0)
    assert len(train) == 100 and len(val) == 50 and len(test) == 50
    assert task.data.x.dtype == torch.float32 and task.data.y.dim() == 1
    n = write_planetoid(str(tmp_path), "PubMed", num_classes=3, per_class=5)
    task = load_task("pubmed", str(tmp_path))
    train, val, test = task.split(3)
    assert task.data.num_nodes == n
    assert train.tolist() == list(range(15)) and val.tolist() == list(range(15, 515))


@pytest.mark.slow
def test_resume_keeps_finished_runs(tmp_path, monkeypatch):
    out = str(tmp_path)
    assert cli.main(["cora", "--out", out, "--models", "gcn"] + SHORT) == 0
    first = read(out, "cora")["runs"][0]
    calls = []
    real = runner.fit

    def counting(task, model, seed, *args, **kwargs):
        calls.append((model, seed))
        return real(task, model, seed, *args, **kwargs)

    monkeypatch.setattr(runner, "fit", counting)
    argv = ["cora", "--out", out, "--models", "gcn", "--seeds", "2", "--epochs", "3",
            "--patience", "2", "--no-progress", "--resume"]
    assert cli.main(argv) == 0
    result = read(out, "cora")
    assert calls == [("gcn", 1)]
    assert result["runs"][0] == first and len(result["runs"]) == 2
    # A crash mid-sweep loses no finished seed: the file is rewritten after each run.
    monkeypatch.setattr(runner, "fit",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli.main(argv[:6] + ["3"] + argv[7:]) == 130  # one line, not a traceback
    assert len(read(out, "cora")["runs"]) == 2
    assert cli.main(argv[:-1] + ["--resume", "--epochs", "4"]) == 2  # options differ: refused
    # a baseline whose settings changed since its runs were stored: refused, not kept
    from qgfd_pyg.bench.models import MODELS
    monkeypatch.setitem(MODELS["gcn"].options, "hidden", 32)
    assert cli.main(argv) == 2
    monkeypatch.setitem(MODELS["gcn"].options, "hidden", 16)
    # resuming with other models adds their rows and keeps the earlier models' rows
    monkeypatch.setattr(runner, "fit", real)
    assert cli.main(["cora", "--out", out, "--models", "mlp", "--seeds", "1", "--epochs", "3",
                     "--patience", "2", "--no-progress", "--resume"]) == 0
    result = read(out, "cora")
    assert [row["model"] for row in result["summary"]] == ["mlp", "gcn"]
    assert result["config"]["models"] == ["mlp", "gcn"] and len(result["runs"]) == 3
    assert "| gcn |" in open(os.path.join(out, "cora.md")).read()


def test_result_store_refuses_resume_with_other_options(tmp_path):
    config = {"task": "cora", "models": ["gcn"], "seeds": 1, "epochs": 3, "qgfd": {},
              "metric": "accuracy", "seed_list": [0], "patience": 2}
    store = ResultStore(str(tmp_path), "cora", config, resume=False)
    store.add({"model": "gcn", "seed": 0, "test": 0.5, "val": 0.5, "ece": 0.1, "params": 1,
               "sec_per_epoch": 0.1, "epochs": 3, "peak_mem_mb": None}, {})
    with pytest.raises(ValueError, match="epochs"):
        ResultStore(str(tmp_path), "cora", {**config, "epochs": 5}, resume=True)
    assert ResultStore(str(tmp_path), "cora", {**config, "seeds": 4}, resume=True).done("gcn", 0)
    # the QGFD options describe QGFD's rows only: baselines and QGFD may run apart
    record = {"seed": 0, "test": 0.5, "val": 0.5, "ece": 0.1, "params": 1,
              "sec_per_epoch": 0.1, "epochs": 3, "peak_mem_mb": None}
    qgfd = ResultStore(str(tmp_path), "cora", {**config, "models": ["qgfd"],
                                               "qgfd": {"alpha": 0.5}}, resume=True)
    qgfd.add({**record, "model": "qgfd"}, {})
    with pytest.raises(ValueError, match="qgfd"):
        ResultStore(str(tmp_path), "cora", {**config, "models": ["qgfd"],
                                            "qgfd": {"alpha": 0.9}}, resume=True)
    gcn = ResultStore(str(tmp_path), "cora", {**config, "qgfd": {"alpha": 0.9}}, resume=True)
    assert gcn.config["qgfd"] == {"alpha": 0.5}  # the options of the stored QGFD rows
    gcn.add({**record, "model": "gcn", "seed": 1}, {})
    assert read(tmp_path, "cora")["config"]["qgfd"] == {"alpha": 0.5}


def test_resume_refuses_runs_of_a_model_whose_settings_changed(tmp_path):
    """Every model's settings (learning rate, weight decay, options) are stored; resuming
    keeps a model's runs only under the same settings, whichever model it is."""
    spec = {"lr": 0.005, "weight_decay": 0.0, "options": {"margin": 9.0, "hidden": 128}}
    config = {"task": "wn18rr", "models": ["rotate"], "seeds": 1, "epochs": 3, "qgfd": {},
              "metric": "filtered MRR", "seed_list": [0], "patience": 2,
              "specs": {"rotate": spec}}
    record = {"seed": 0, "test": 0.5, "val": 0.5, "params": 1, "sec_per_epoch": 0.1,
              "epochs": 3, "peak_mem_mb": None}
    ResultStore(str(tmp_path), "wn18rr", config, resume=False).add(
        {**record, "model": "rotate"}, {})
    assert read(tmp_path, "wn18rr")["config"]["specs"] == {"rotate": spec}
    changed = {**spec, "options": {"margin": 3.0, "hidden": 128}}
    with pytest.raises(ValueError, match=r"rotate: margin 9.0 -> 3.0"):
        ResultStore(str(tmp_path), "wn18rr", {**config, "specs": {"rotate": changed}},
                    resume=True)
    with pytest.raises(ValueError, match=r"rotate: lr 0.005 -> 0.01"):
        ResultStore(str(tmp_path), "wn18rr", {**config, "specs": {"rotate": {**spec,
                                                                               "lr": 0.01}}},
                    resume=True)
    assert ResultStore(str(tmp_path), "wn18rr", config, resume=True).done("rotate", 0)
    # another model joins with its own settings; the stored model's are kept beside them
    other = ResultStore(str(tmp_path), "wn18rr", {**config, "models": ["distmult"],
                                                  "specs": {"distmult": spec}}, resume=True)
    other.add({**record, "model": "distmult"}, {})
    assert read(tmp_path, "wn18rr")["config"]["specs"] == {"rotate": spec, "distmult": spec}


def test_cli_errors_and_listing(tmp_path, capsys):
    assert cli.main(["--list"]) == 0
    assert "ogbn-arxiv" in capsys.readouterr().out
    assert cli.main(["cora", "--models", "rotate", "--out", str(tmp_path)] + SHORT) == 2
    assert cli.main(["nope", "--out", str(tmp_path)] + SHORT) == 2
    assert cli.main(["pyg", "--out", str(tmp_path)] + SHORT) == 2
    assert cli.main(["pyg", "--dataset", "NoSuchSet:x", "--out", str(tmp_path)] + SHORT) == 2
    assert "NoSuchSet" in capsys.readouterr().err


@pytest.mark.slow
def test_generic_pyg_dataset_with_shipped_split(tmp_path):
    argv = ["pyg", "--dataset", "Planetoid:CiteSeer", "--models", "gcn", "--out", str(tmp_path)]
    assert cli.main(argv + SHORT) == 0
    assert read(tmp_path, "Planetoid-CiteSeer")["config"]["task"] == "Planetoid:CiteSeer"


def test_module_entry_point_help():
    done = subprocess.run([sys.executable, "-m", "qgfd_pyg.bench", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--resume" in done.stdout


@pytest.mark.parametrize("task", ["pubmed", "ogbn-arxiv", "pyg", "chameleon",
                                  "squirrel-filtered"])
def test_missing_data_is_one_line_exit_2_and_leaves_nothing(task, tmp_path, capsys):
    root, out = tmp_path / "data", tmp_path / "out"
    root.mkdir()
    extra = ["--dataset", "Planetoid:PubMed"] if task == "pyg" else []
    assert cli.main([task, "--root", str(root), "--out", str(out)] + extra + SHORT) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0] and str(root) in err[0]
    assert list(root.iterdir()) == [] and not out.exists()  # no empty raw/ folder, no results


@pytest.mark.parametrize("task", ["pubmed", "chameleon-filtered"])
def test_a_download_that_cannot_connect_is_one_line_exit_2_and_leaves_nothing(
        task, tmp_path, capsys, monkeypatch):
    """--download where the address cannot be reached (a closed local port): one line naming
    the address and the folder to fill by hand, exit 2, no empty raw/ or partial file."""
    from torch_geometric.datasets import Planetoid

    from qgfd_pyg.bench import node

    dead = "http://127.0.0.1:9/data"  # the discard port: nothing listens, refused at once
    monkeypatch.setattr(Planetoid, "url", dead)
    monkeypatch.setattr(node, "PLATONOV_URL", dead)
    root, out = tmp_path / "data", tmp_path / "out"
    assert cli.main([task, "--root", str(root), "--out", str(out), "--download"] + SHORT) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: could not download " + dead), err
    assert str(root) in err[0]
    assert not root.exists() and not out.exists()


def test_options_are_checked_before_any_data_is_read(tmp_path, capsys, monkeypatch):
    """--alpha 2 on a set whose data is missing: the option is the error, not the data."""
    monkeypatch.setattr(runner, "load_task", lambda *a, **k: pytest.fail("data was read"))
    for task, bad in (("pubmed", ["--alpha", "2"]), ("wn18rr", ["--steps", "-1"]),
                      ("ind-fb237-v1", ["--models", "qgfd", "--hidden", "0"])):
        argv = [task, "--root", str(tmp_path / "none"), "--out", str(tmp_path / "out")]
        assert cli.main(argv + SHORT + bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and bad[-2].lstrip("-").replace("-", "_") in err[0], (task, err)


@pytest.mark.slow
def test_a_run_never_replaces_runs_it_did_not_produce(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["cora", "--out", str(out), "--models", "gcn"] + SHORT) == 0
    before = (out / "cora.json").read_text()
    capsys.readouterr()
    assert cli.main(["cora", "--out", str(out), "--models", "mlp"] + SHORT) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds 1 finished run" in err[0] and "--resume" in err[0]
    assert (out / "cora.json").read_text() == before
    assert cli.main(["cora", "--out", str(out), "--models", "mlp", "--overwrite"] + SHORT) == 0
    assert [r["model"] for r in read(out, "cora")["runs"]] == ["mlp"]


@pytest.mark.slow
def test_results_go_to_the_working_directory_by_default(tmp_path):
    """A fresh process, the README's main job with one model: the committed tables of the
    checkout are not touched; the run lands in ./results."""
    committed = os.path.join(ROOT, "benchmarks", "results", "cora.json")
    before = open(committed).read()
    done = subprocess.run([sys.executable, "-m", "qgfd_pyg.bench", "cora", "--models", "mlp"]
                          + SHORT, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert read(tmp_path / "results", "cora")["runs"][0]["model"] == "mlp"
    assert open(committed).read() == before


@pytest.mark.slow
def test_bad_device_and_options_fail_before_any_result_is_touched(tmp_path, capsys,
                                                                   monkeypatch):
    assert cli.main(["cora", "--out", str(tmp_path), "--models", "gcn"] + SHORT) == 0
    before = (tmp_path / "cora.json").read_text()
    capsys.readouterr()
    monkeypatch.setattr(runner.torch.cuda, "is_available", lambda: False)
    for argv in (["--device", "cuda"], ["--device", "tpu"], ["--alpha", "1.5"],
                 ["--threads", "0"], ["--models", "gcn,qgfd", "--heads", "0"]):
        assert cli.main(["cora", "--out", str(tmp_path)] + SHORT + argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), argv
    assert (tmp_path / "cora.json").read_text() == before


@pytest.mark.slow
def test_run_benchmark_takes_a_config_and_returns_the_records(tmp_path):
    config = runner.RunConfig("cora", models=["qgfd"], seeds=1, epochs=2, patience=2,
                              progress=False, out=str(tmp_path), qgfd={"alpha": 0.5, "steps": 2})
    results = runner.run_benchmark(config)
    assert [r["model"] for r in results.runs] == ["qgfd"]
    stored = read(tmp_path, "cora")
    assert stored["config"]["qgfd"]["alpha"] == 0.5 and stored["config"]["qgfd"]["steps"] == 2
    assert stored["runs"] == results.runs
    with pytest.raises(ValueError, match="unknown QGFD options"):
        runner.run_benchmark(runner.RunConfig("cora", qgfd={"alhpa": 0.5}, out=str(tmp_path)))


@pytest.mark.slow
def test_progress_bars_only_on_a_terminal(tmp_path, monkeypatch):
    seen = []
    real = runner.fit
    monkeypatch.setattr(runner, "fit",
                        lambda *a, **k: seen.append(a[-1]) or real(*a, **k))
    argv = ["cora", "--out", str(tmp_path), "--models", "gcn", "--seeds", "1", "--epochs", "2"]
    assert cli.main(argv) == 0  # pytest captures stderr: not a terminal
    monkeypatch.setattr(runner.sys.stderr, "isatty", lambda: True, raising=False)
    assert cli.main(argv + ["--name", "tty"]) == 0
    assert cli.main(argv + ["--name", "off", "--no-progress"]) == 0
    assert seen == [False, True, False]


def test_fit_reports_the_test_metrics_of_the_best_validation_epoch(monkeypatch):
    """The shared fit loop, on a scripted task: the parameter counts the epochs, validation
    peaks at epoch 2, and the test metrics must be computed with epoch 2's parameters."""
    from qgfd_pyg.bench.tasks import Experiment, Task
    from qgfd_pyg.bench.train import fit

    val_by_epoch = {1: 0.5, 2: 0.9, 3: 0.7, 4: 0.6, 5: 0.95}
    progress_seen = []

    class Scripted(Experiment):
        def __init__(self):
            self.model = torch.nn.Linear(1, 1, bias=False)
            torch.nn.init.zeros_(self.model.weight)

        def train_epoch(self):
            progress_seen.append(self.progress)
            with torch.no_grad():
                self.model.weight += 1.0
            return 1.0 / float(self.model.weight)

        def evaluate(self, split):
            epoch = int(self.model.weight)
            if split == "val":
                return {"metric": val_by_epoch[epoch]}
            return {"metric": 10.0 * epoch, "extra": -epoch}

    class ScriptedTask(Task):
        kind, models, name, metric = "scripted", {}, "scripted", "m"

        def setup(self, model, seed, options, device):
            return Scripted()

    record = fit(ScriptedTask(), "x", 0, {}, 5, 2, torch.device("cpu"))
    assert record["epochs"] == 4  # no better validation for 2 epochs after epoch 2
    assert (record["best_epoch"], record["val"], record["test"], record["extra"]) == \
        (2, 0.9, 20.0, -2)
    assert record["train_loss"] == 0.5 and record["params"] == 1
    assert fit(ScriptedTask(), "x", 0, {}, 5, 5, torch.device("cpu"))["test"] == 50.0
    assert not any(progress_seen)  # the experiment draws its own bars only with progress
    fit(ScriptedTask(), "x", 0, {}, 1, 1, torch.device("cpu"), progress=True)
    assert progress_seen[-1] is True

    # a wall-clock budget: a fake clock that moves 1 s per reading; 4 readings per epoch
    # (start of training, epoch start and end, the budget check) put epoch 2's check at 6 s
    import qgfd_pyg.bench.train as train

    clock = iter(range(1000))
    monkeypatch.setattr(train.time, "perf_counter", lambda: float(next(clock)))
    timed = fit(ScriptedTask(), "x", 0, {}, 5, 5, torch.device("cpu"), max_seconds=5.5)
    assert (timed["epochs"], timed["best_epoch"], timed["test"]) == (2, 2, 20.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cora", "citeseer"])
def test_committed_node_results_still_load_and_resume(name, tmp_path, monkeypatch, capsys):
    """The committed 10-seed sweeps resume under today's runner: same stored options, nothing
    to train again, the same summary."""
    stored = read(os.path.join(ROOT, "benchmarks", "results"), name)
    (tmp_path / f"{name}.json").write_text(json.dumps(stored))
    monkeypatch.setattr(runner, "fit", lambda *a, **k: pytest.fail("retrained a stored run"))
    models = ",".join(stored["config"]["models"])
    assert cli.main([name, "--models", models, "--out", str(tmp_path), "--resume",
                     "--no-progress"]) == 0
    again = read(tmp_path, name)
    assert again["runs"] == stored["runs"] and again["summary"] == stored["summary"]


def test_mlp_and_gcnii_baselines(tmp_path):
    """mlp ignores the graph; GCNII has the paper's shape and weight-decay groups and runs
    only when asked for (the default model list leaves it out)."""
    from qgfd_pyg.bench.models import MODELS
    from qgfd_pyg.bench.train import make_optimizer

    x = torch.randn(6, 5)
    ring = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0]])
    mlp = MODELS["mlp"].build(5, 3, **MODELS["mlp"].options).eval()
    torch.testing.assert_close(mlp(x, ring), mlp(x, ring[:, :0]))
    gcn2 = MODELS["gcn2"].build(5, 3, **{**MODELS["gcn2"].options, "layers": 4},
                                cached=False).eval()
    assert len(gcn2.convs) == 4 and gcn2.convs[3].beta == pytest.approx(math.log(0.5 / 4 + 1))
    assert not torch.allclose(gcn2(x, ring), gcn2(x, ring[:, :0]))  # it uses the graph
    optimizer = make_optimizer(gcn2, MODELS["gcn2"])
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 5e-4]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == \
        len(list(gcn2.parameters()))
    models, _, _ = runner._check(runner.RunConfig("cora"))
    assert models == ["qgfd", "gat", "appnp", "gcn", "mlp"]


def test_missing_data_names_the_download_flag_only_where_it_can_fetch(tmp_path, capsys):
    for task, can in (("pubmed", True), ("chameleon-filtered", True), ("hotpotqa", True),
                      ("wn18rr", True), ("countries-s1", False)):
        assert cli.main([task, "--root", str(tmp_path), "--out", str(tmp_path)] + SHORT) == 2
        err = capsys.readouterr().err
        assert ("--download" in err) == can, (task, err)
        assert ("cannot be downloaded" in err) == (not can), (task, err)


@pytest.mark.slow
def test_download_flag_fetches_through_the_dataset_class(tmp_path, monkeypatch):
    """--download lets PyG's Planetoid fetch PubMed; the network call is replaced by a copy of
    files written in Planetoid's real format."""
    import shutil

    import torch_geometric.datasets.planetoid as planetoid

    source = tmp_path / "source"
    n = write_planetoid(str(source))
    fetched = []

    def fake_copy(url, folder, *args, **kwargs):  # PyG's fs.cp, which Planetoid fetches with
        fetched.append(url)
        name = url.rsplit("/", 1)[1]
        shutil.copy(source / "PubMed" / "raw" / name, os.path.join(folder, name))

    monkeypatch.setattr(planetoid.fs, "cp", fake_copy)
    root, out = tmp_path / "data", tmp_path / "out"
    assert cli.main(["pubmed", "--root", str(root), "--out", str(out), "--models", "mlp"]
                    + SHORT) == 2 and not fetched  # off by default
    assert cli.main(["pubmed", "--root", str(root), "--out", str(out), "--models", "mlp",
                     "--download"] + SHORT) == 0
    assert len(fetched) == 8 and all(u.startswith(planetoid.Planetoid.url) for u in fetched)
    assert load_task("pubmed", str(root)).data.num_nodes == n  # now on disk: no download


def test_download_flag_fetches_the_files_pyg_has_no_class_for(tmp_path, monkeypatch):
    import numpy as np
    import torch_geometric.data

    from qgfd_pyg.bench.node import PLATONOV_URL

    fetched = []

    def fake_download(url, folder, log=True, filename=None):
        fetched.append(url)
        rng = np.random.default_rng(0)
        masks = np.zeros((10, 6), dtype=bool)
        masks[:, :2] = True
        np.savez(os.path.join(folder, filename), node_features=rng.random((6, 3)),
                 node_labels=np.array([0, 1, 0, 1, 0, 1]), edges=np.array([[0, 1], [2, 3]]),
                 train_masks=masks, val_masks=np.roll(masks, 2, 1),
                 test_masks=np.roll(masks, 4, 1))
        return os.path.join(folder, filename)

    monkeypatch.setattr(torch_geometric.data, "download_url", fake_download)
    os.makedirs(tmp_path / "heterophilous")
    task = load_task("squirrel-filtered", str(tmp_path), download=True)
    assert fetched == [f"{PLATONOV_URL}/squirrel_filtered.npz"]
    assert task.data.num_nodes == 6 and task.num_splits == 10


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_runs_in_one_line_and_resume_continues(tmp_path):
    """A real SIGINT to the CLI in a fresh process, once the first run is written."""
    import signal
    import time

    out = tmp_path / "out"
    command = [sys.executable, "-m", "qgfd_pyg.bench", "cora", "--models", "mlp", "--seeds",
               "40", "--epochs", "2", "--patience", "2", "--no-progress", "--out", str(out)]
    # SIGINT as a user's terminal delivers it: a suite started in the background by a
    # non-interactive shell ignores SIGINT, and the child would inherit that (it then ran all
    # 40 runs and exited 0)
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "cora.json").exists() and len(read(out, "cora")["runs"]) >= 1:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    kept = len(read(out, "cora")["runs"])
    assert 1 <= kept < 40
    assert last == (f"interrupted: {kept} finished run{'s' * (kept != 1)} kept in "
                    f"{out / 'cora.json'}; run the same command with --resume to continue")
    done = subprocess.run(command + ["--resume"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming: {kept} finished runs kept" in done.stderr
    assert len(read(out, "cora")["runs"]) == 40


KEEP_PROBE = """
import sys, torch
from qgfd_pyg.bench import measure
memory = measure.PeakMemory(torch.device("cpu"))
if sys.argv[1] == "keep":
    assert measure.keep_freed_memory() and measure.FREED_MEMORY_KEPT
before = memory.current_mb()
x = torch.ones(2 ** 25)  # 128 MB, above glibc's mmap threshold
del x
held = memory.current_mb() - before
memory.reset()  # a run's peak starts here: what earlier runs freed goes back to the system
print(held, memory.current_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_keep_freed_memory_keeps_a_freed_tensor_until_released():
    """In a fresh process: by default a freed 128 MB tensor goes back to the system at once;
    after keep_freed_memory it stays resident (for the next tensors) until
    release_freed_memory, which a run's PeakMemory.reset calls."""
    held = {}
    for mode in ("system", "keep"):
        done = subprocess.run([sys.executable, "-c", KEEP_PROBE, mode], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        held[mode] = [float(v) for v in done.stdout.split()]
    assert held["system"][0] < 20, held
    assert 110 < held["keep"][0] < 150 and held["keep"][1] < 20, held


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_cli_keeps_freed_memory_unless_told_and_says_so(tmp_path):
    """A fresh CLI process keeps freed memory on the CPU by default and records it in the
    results (json environment, md environment line, the memory note);
    --no-keep-freed-memory leaves malloc as it is and says so."""
    base = [sys.executable, "-m", "qgfd_pyg.bench", "cora", "--models", "gcn", "--seeds", "1",
            "--epochs", "1", "--no-progress", "--out", str(tmp_path)]
    for extra, name in (([], "kept"), (["--no-keep-freed-memory"], "system")):
        done = subprocess.run(base + extra + ["--name", name], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    kept, system = read(tmp_path, "kept")["environment"], read(tmp_path, "system")["environment"]
    assert kept["malloc"].startswith("glibc keeps freed memory") and "kept for reuse" in \
        kept["memory_kind"]
    assert system["malloc"] == "the system's default" and "kept" not in system["memory_kind"]
    md = (tmp_path / "kept.md").read_text()
    assert "malloc: glibc keeps freed memory" in md and "kept for reuse" in md


def test_flow_backend_option_holds_during_the_sweep_and_is_recorded(tmp_path, monkeypatch,
                                                                     capsys):
    """--flow-backend triton: the flows' backend during every run, the process's own after;
    stored in the environment and named in the md; a bad name is one line and exit 2, before
    any data is loaded."""
    pytest.importorskip("triton")
    import qgfd_pyg as flow
    seen = []
    real = runner.fit
    monkeypatch.setattr(runner, "fit",
                        lambda *a, **k: seen.append(flow.get_flow_backend()) or real(*a, **k))
    argv = ["cora", "--out", str(tmp_path), "--models", "gcn", "--seeds", "2", "--epochs", "1",
            "--no-progress"]
    assert cli.main(argv + ["--flow-backend", "triton", "--name", "tri"]) == 0
    assert seen == ["triton", "triton"] and flow.get_flow_backend() == "torch"
    assert read(tmp_path, "tri")["environment"]["flow_backend"] == "triton"
    assert "flow backend: triton" in (tmp_path / "tri.md").read_text()
    capsys.readouterr()

    def no_load(*args, **kwargs):
        raise AssertionError("the data was loaded before the options were checked")
    monkeypatch.setattr(runner, "load_task", no_load)
    assert cli.main(argv + ["--flow-backend", "cuda", "--name", "bad"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "flow backend" in err[0]
    assert not (tmp_path / "bad.json").exists()
