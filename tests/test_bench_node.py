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
