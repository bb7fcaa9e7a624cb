import json
import os

import pytest
import torch
from qgfd_pyg.bench import cli
from qgfd_pyg.bench.toy import ChainTask, chain_graph


def _hops_from(edge_index, source, n):
    """Brute-force BFS distances from ``source``."""
    dist, frontier = {source: 0}, [source]
    while frontier:
        nxt = []
        for u in frontier:
            for s, t in edge_index.t().tolist():
                if s == u and t not in dist:
                    dist[t] = dist[u] + 1
                    nxt.append(t)
        frontier = nxt
    return dist


def test_chain_labels_sit_exactly_h_hops_from_their_anchor():
    data, masks = chain_graph(3, chains=6, num_classes=4, seed=1)
    assert data.num_nodes == 24 and data.edge_index.size(1) == 2 * 6 * 3
    anchors = torch.nonzero(data.x[:, 4] == 1).view(-1).tolist()
    assert anchors == [0, 4, 8, 12, 16, 20]
    for a in anchors:
        dist = _hops_from(data.edge_index, a, data.num_nodes)
        assert sorted(dist.values()) == [0, 1, 2, 3]  # its own path, nothing else
        far = [v for v, d in dist.items() if d == 3][0]
        assert data.x[far, :4].tolist() == [float(c == data.y[a]) for c in range(4)]
        assert all(data.x[v].abs().sum() == 0 for v, d in dist.items() if 0 < d < 3)
    train, val, test = masks
    assert (train.sum(), val.sum(), test.sum()) == (3, 1, 2)
    assert not (train & val).any() and not (train & test).any() and not (val & test).any()
    assert set(torch.nonzero(train | val | test).view(-1).tolist()) == set(anchors)


@pytest.mark.parametrize("model,reaches", [("qgfd", True), ("attention", False),
                                           ("gat", False), ("appnp", True)])
def test_only_models_that_reach_h_hops_see_the_label(model, reaches):
    """The anchor's output depends on the far end's features iff the model's reach >= h
    (h = 5: beyond GAT's two layers and one-hop attention, within APPNP's K = 10 and QGFD's
    1 + 10 steps)."""
    task = ChainTask(5, chains=2)
    torch.manual_seed(0)
    net = task.models[model].build(5, 4, **task.models[model].options).eval()
    x = task.data.x.clone().requires_grad_(True)
    net(x, task.data.edge_index)[0].sum().backward()
    assert bool(x.grad[5].abs().sum() > 0) == reaches  # node 5: the far end of path 0
    assert x.grad[6:].abs().sum() == 0  # the other path
    if model == "attention":  # learnt hop weights would let training reach past one hop
        assert net.hop_weights() is None


@pytest.mark.parametrize("model", sorted(ChainTask.models))
def test_every_toy_model_trains_without_dropout_or_weight_decay(model):
    """The features are noise-free and the far end's share of a walk is ~2^-h: every model
    of the toy, baselines included, runs without dropout (two training passes agree) and
    without weight decay."""
    task = ChainTask(3, chains=4)
    spec = task.models[model]
    assert spec.weight_decay == 0.0
    torch.manual_seed(0)
    net = spec.build(5, 4, **spec.options).train()
    torch.testing.assert_close(net(task.data.x, task.data.edge_index),
                               net(task.data.x, task.data.edge_index))
    assert "without dropout and weight decay" in task.protocol({"epochs": 5, "patience": 2},
                                                               "a stopping rule")


@pytest.mark.slow
def test_chain_runs_from_the_cli_and_rejects_bad_hops(tmp_path, capsys):
    out = str(tmp_path)
    argv = ["chain", "--hops", "3", "--models", "qgfd,attention", "--seeds", "1",
            "--epochs", "2", "--no-progress", "--out", out]
    assert cli.main(argv) == 0
    with open(os.path.join(out, "chain-3.json")) as f:
        result = json.load(f)
    assert result["config"]["hops"] == 3 and result["config"]["models"] == ["qgfd", "attention"]
    assert "paths of 3 hops" in open(os.path.join(out, "chain-3.md")).read()
    capsys.readouterr()
    assert cli.main(["chain", "--hops", "0", "--out", out]) == 2
    assert "hops" in capsys.readouterr().err


@pytest.mark.slow
def test_learnt_hop_weights_row_and_boolean_option(tmp_path, capsys):
    out = str(tmp_path / "out")
    argv = ["chain", "--hops", "2", "--models", "qgfd-hops", "--seeds", "1", "--epochs", "2",
            "--out", out, "--no-progress"]
    assert cli.main(argv) == 0
    with open(os.path.join(out, "chain-2.json")) as f:
        runs = json.load(f)["runs"]
    assert len(runs) == 1 and runs[0]["model"] == "qgfd-hops"
    from qgfd_pyg.bench.toy import ChainTask
    options = ChainTask.models["qgfd-hops"].options
    assert options["learn_hop_weights"] is True and options["transition"] == "graph"
    # a boolean QGFD option takes true/false, anything else is one line and exit 2
    assert cli.main(argv + ["--learn-hop-weights", "false", "--name", "off"]) == 0
    with open(os.path.join(out, "off.json")) as f:
        assert json.load(f)["config"]["qgfd"]["learn_hop_weights"] is False
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.main(argv + ["--learn-hop-weights", "maybe"])
    assert stop.value.code == 2 and "expected true or false" in capsys.readouterr().err
