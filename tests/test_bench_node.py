"""The heterophilous node tasks: Chameleon / Squirrel through PyG's WikipediaNetwork and the
filtered versions through the loader of Platonov et al.'s numpy layout."""
import os

import numpy as np
import pytest
import torch

from qgfd_pyg.bench.node import platonov_npz
from qgfd_pyg.bench.tasks import load_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "datasets")


def write_npz(path, **drop):
    rng = np.random.default_rng(0)
    arrays = dict(node_features=rng.random((5, 3), dtype=np.float32),
                  node_labels=np.array([0, 1, 2, 1, 0]),
                  edges=np.array([[0, 1], [1, 2], [3, 4]]),
                  train_masks=np.array([[1, 1, 0, 0, 0], [0, 0, 1, 1, 0]], dtype=bool),
                  val_masks=np.array([[0, 0, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=bool),
                  test_masks=np.array([[0, 0, 0, 1, 1], [0, 1, 0, 0, 1]], dtype=bool))
    for key in drop:
        arrays.pop(key)
    np.savez(path, **arrays)
    return arrays


def test_npz_loader_makes_edges_undirected_and_keeps_every_split(tmp_path):
    arrays = write_npz(tmp_path / "g.npz")
    task = platonov_npz(str(tmp_path / "g.npz"), "g")
    edges = set(map(tuple, task.data.edge_index.t().tolist()))
    assert edges == {(0, 1), (1, 0), (1, 2), (2, 1), (3, 4), (4, 3)}
    assert task.num_classes == 3 and task.num_splits == 2
    torch.testing.assert_close(task.data.x, torch.from_numpy(arrays["node_features"]))
    for seed in (0, 1, 2, 3):  # seed s uses split s % 2
        train, val, test = task.split(seed)
        assert train.tolist() == np.flatnonzero(arrays["train_masks"][seed % 2]).tolist()
        assert val.tolist() == np.flatnonzero(arrays["val_masks"][seed % 2]).tolist()
        assert test.tolist() == np.flatnonzero(arrays["test_masks"][seed % 2]).tolist()


def test_npz_loader_names_what_is_wrong(tmp_path):
    write_npz(tmp_path / "bad.npz", edges=None)
    with pytest.raises(ValueError, match="lacks the arrays \\['edges'\\]"):
        platonov_npz(str(tmp_path / "bad.npz"), "bad")
    arrays = write_npz(tmp_path / "out.npz")
    arrays["edges"] = np.array([[0, 7]])
    np.savez(tmp_path / "out.npz", **arrays)
    with pytest.raises(ValueError, match="outside the 5 nodes"):
        platonov_npz(str(tmp_path / "out.npz"), "out")


@pytest.mark.parametrize("task,nodes,edges,features", [
    ("chameleon-filtered", 890, 2 * 8854, 2325),
    ("squirrel-filtered", 2223, 2 * 46998, 2089),
    ("chameleon", 2277, 62792, 2325)])
def test_shipped_sets_load_with_their_published_sizes(task, nodes, edges, features, tmp_path):
    root = tmp_path / "data"  # PyG writes its processed/ cache next to the raw files
    (root / "wiki" / "chameleon" / "geom_gcn").mkdir(parents=True)
    os.symlink(os.path.join(DATA, "wiki", "chameleon", "geom_gcn", "raw"),
               root / "wiki" / "chameleon" / "geom_gcn" / "raw")
    os.symlink(os.path.join(DATA, "heterophilous"), root / "heterophilous")
    loaded = load_task(task, str(root))
    data = loaded.data
    assert (data.num_nodes, data.edge_index.size(1), data.x.size(1)) == (nodes, edges, features)
    assert loaded.num_classes == 5 and loaded.num_splits == 10
    ei = data.edge_index
    reverse = set(map(tuple, ei.flip(0).t().tolist()))
    assert reverse == set(map(tuple, ei.t().tolist()))  # undirected
    train, val, test = loaded.split(3)
    assert len(set(train.tolist()) | set(val.tolist()) | set(test.tolist())) \
        == train.numel() + val.numel() + test.numel()  # disjoint


def write_binary_npz(path, n=40):
    """A two-class set in Platonov et al.'s layout, 20% positives (imbalanced, as Tolokers)."""
    rng = np.random.default_rng(1)
    labels = np.zeros(n, dtype=np.int64)
    labels[::5] = 1
    features = rng.normal(size=(n, 4)).astype(np.float32)
    features[:, 0] += 1.5 * labels  # informative, not separable
    order = np.arange(n)
    masks = [order % 2 == 0, order % 4 == 1, order % 4 == 3]
    np.savez(path, node_features=features, node_labels=labels,
             edges=np.stack([order[:-1], order[1:]], 1),
             train_masks=masks[0][None], val_masks=masks[1][None], test_masks=masks[2][None])


def test_two_class_node_task_is_scored_by_roc_auc_with_accuracy_beside(tmp_path):
    """The majority rate (what accuracy gives a model that always says 'negative') and
    ROC-AUC disagree: a scripted model whose class-1 scores rank the test nodes but whose
    argmax is always class 0 has accuracy = majority rate and the AUC of its ranking."""
    from qgfd_pyg.bench.train import fit

    write_binary_npz(tmp_path / "two.npz")
    task = platonov_npz(str(tmp_path / "two.npz"), "two")
    assert task.metric == "ROC-AUC" and ("accuracy", "test accuracy") in task.columns
    experiment = task.setup("mlp", 0, {}, torch.device("cpu"))
    test = experiment.idx["test"]  # nodes 3, 7, ..., 39: positives 15, 35 (2 of 10)
    assert test.tolist() == list(range(3, 40, 4))
    # class-1 logit below class 0's everywhere; the ranking: 15 first, 35 below node 3 only
    score = torch.zeros(40)
    score[test] = torch.tensor([3.0, 1.0, 0.5, 4.0, 0.2, 0.1, 0.3, 0.4, 2.0, 0.6])

    class Scripted(torch.nn.Module):
        def forward(self, x, edge_index):
            return torch.stack([torch.full((40,), 5.0), score], 1)

    experiment.model = Scripted()
    result = experiment.evaluate("test")
    # by hand: node 15 (4.0) beats 8 negatives, node 35 (2.0) beats 7 of 8 (not node 3's 3.0)
    assert result["metric"] == pytest.approx(15 / 16)
    assert result["accuracy"] == pytest.approx(8 / 10)  # the majority rate
    record = fit(task, "mlp", 0, {}, 3, 3, torch.device("cpu"))
    assert 0.0 <= record["test"] <= 1.0 and 0.0 <= record["accuracy"] <= 1.0
    assert record["test"] != record["accuracy"]


def test_multi_class_node_task_keeps_accuracy(tmp_path):
    write_npz(tmp_path / "three.npz")
    task = platonov_npz(str(tmp_path / "three.npz"), "three")
    assert task.metric == "accuracy" and not task.binary
