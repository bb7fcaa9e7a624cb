"""Mini-batch and multi-process training paths."""
import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch_geometric.loader import NeighborLoader

from qgfd_pyg import QGFDConv
from qgfd_pyg.bench.synthetic import homophilous_graph

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "train_minibatch.py")


@pytest.mark.parametrize("steps", [1, 3])
def test_full_fanout_neighbor_batches_equal_full_graph(steps):
    data, _ = homophilous_graph(num_nodes=150)
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
    data, _ = homophilous_graph(num_nodes=150)
    conv = QGFDConv(data.num_features, 8, heads=2, alpha=0.8, steps=3).eval()
    with torch.no_grad():
        full = conv(data.x, data.edge_index)
        batch = next(iter(NeighborLoader(data, num_neighbors=[-1] * 3, batch_size=16)))
        out = conv(batch.x, batch.edge_index)[:batch.batch_size]
    assert not torch.allclose(out, full[batch.n_id[:batch.batch_size]], atol=1e-5)


def process_tree(root: int) -> list:
    """``root`` and every process below it (read from /proc: torchrun starts its workers in
    sessions of their own, so the launcher's process group does not hold them)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def run_example(args, tmp_path, launcher=(), limit=300):
    out = tmp_path / "summary.json"
    cmd = [sys.executable, *launcher, EXAMPLE, "--dataset", "synthetic", "--epochs", "15",
           "--out", str(out), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:  # a file, not a pipe: an orphan cannot hold it open
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
                                env=env)
        try:  # about 15 s on 2 cores; a hang must fail with its output, not stall the suite
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            for pid in process_tree(proc.pid):  # the launcher and every worker it started
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"{' '.join(cmd)} ran past {limit} s; its stderr ended with:\n"
                        f"{log.read_text()[-3000:]}")
    assert proc.returncode == 0, log.read_text()[-3000:]
    return json.loads(out.read_text())


def test_minibatch_training_learns(tmp_path):
    summary = run_example([], tmp_path)
    assert summary["world_size"] == 1
    assert summary["losses"][-1] < summary["losses"][0]
    assert summary["test_acc"] > 0.6  # 4 classes: chance is 0.25


@pytest.mark.slow
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
