"""Mini-batch and multi-process training paths (issue: performance and scale)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch_geometric.loader import NeighborLoader

from qgfd_pyg import QGFDConv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "train_minibatch.py")
sys.path.insert(0, os.path.join(ROOT, "examples"))
from train_minibatch import synthetic  # noqa: E402


@pytest.mark.parametrize("steps", [1, 3])
def test_full_fanout_neighbor_batches_equal_full_graph(steps):
    data, _ = synthetic(num_nodes=150)
    conv = QGFDConv(data.num_features, 8, heads=2, alpha=0.8, steps=steps).eval()
    with torch.no_grad():
        full = conv(data.x, data.edge_index)
        loader = NeighborLoader(data, num_neighbors=[-1] * (steps + 1), batch_size=16,
                                input_nodes=torch.arange(0, 150, 3))
        seen = 0
        for batch in loader:
            out = conv(batch.x, batch.edge_index)[:batch.batch_size]
            torch.testing.assert_close(out, full[batch.n_id[:batch.batch_size]],
                                       atol=1e-5, rtol=0)
            seen += batch.batch_size
    assert seen == 50


def test_too_few_hops_are_not_exact():
    """One hop fewer than steps + 1 misses part of the receptive field: the check above bites."""
    data, _ = synthetic(num_nodes=150)
    conv = QGFDConv(data.num_features, 8, heads=2, alpha=0.8, steps=3).eval()
    with torch.no_grad():
        full = conv(data.x, data.edge_index)
        batch = next(iter(NeighborLoader(data, num_neighbors=[-1] * 3, batch_size=16)))
        out = conv(batch.x, batch.edge_index)[:batch.batch_size]
    assert not torch.allclose(out, full[batch.n_id[:batch.batch_size]], atol=1e-5)


def run_example(args, tmp_path, launcher=()):
    out = tmp_path / "summary.json"
    cmd = [sys.executable, *launcher, EXAMPLE, "--dataset", "synthetic", "--epochs", "15",
           "--out", str(out), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    try:  # about 15 s on 2 cores; a hang must fail with its output, not stall the suite
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env=env)
    except subprocess.TimeoutExpired as error:
        tail = (error.stderr or b"")[-3000:]
        pytest.fail(f"{' '.join(cmd)} ran past 300 s; its stderr ended with:\n"
                    f"{tail.decode(errors='replace') if isinstance(tail, bytes) else tail}")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_minibatch_training_learns(tmp_path):
    summary = run_example([], tmp_path)
    assert summary["world_size"] == 1
    assert summary["losses"][-1] < summary["losses"][0]
    assert summary["test_acc"] > 0.6  # 4 classes: chance is 0.25


def test_two_process_distributed_data_parallel(tmp_path):
    # --standalone: torchrun's own rendezvous on a port it picks, so no port can be taken
    # between choosing and binding it
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    summary = run_example([], tmp_path, launcher)
    assert summary["world_size"] == 2
    first, second = summary["parameter_checksums"]
    assert first == pytest.approx(second, rel=1e-6)  # DDP kept the replicas identical
    assert summary["losses"][-1] < summary["losses"][0]
    assert summary["test_acc"] > 0.6
