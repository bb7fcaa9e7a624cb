"""A task kind from another package joins the runner without a change to a shared file: its
module, named under the entry point group ``qgfd_pyg.bench.kinds``, declares its tasks, its
command-line options and its --quick budget, and the protocol line comes from the fit loop."""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # end to end: a fresh process / environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KIND = '''
import torch
import torch.nn.functional as F

from qgfd_pyg.bench.models import ModelSpec
from qgfd_pyg.bench.tasks import QUICK, FullBatchExperiment, Task, TaskOption, register


class LineFit(FullBatchExperiment):
    def __init__(self, task):
        self.model = torch.nn.Linear(1, 1)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.1)
        self.x = torch.linspace(-1, 1, task.points).view(-1, 1)
        self.y = 3 * self.x

    def training_loss(self):
        return F.mse_loss(self.model(self.x), self.y)

    def evaluate(self, split):
        with torch.no_grad():
            loss = float(self.training_loss())
        return {"metric": -loss, "loss": loss}


class WidgetTask(Task):
    kind = "widgets"
    models = {"line": ModelSpec(torch.nn.Linear, 0.1, 0.0, {}, "a straight line")}
    metric = "negative MSE"
    budget = (50, 10)
    quick_budget = (3, 1)
    val_loss = True
    options = (QUICK, TaskOption("--points", "widgets: how many points to fit", int))

    def __init__(self, points):
        self.name, self.points = "widgets", points

    def check_options(self, model, options):
        pass

    def setup(self, model, seed, options, device):
        return LineFit(self)

    def protocol_notes(self, config):
        return f"{self.points} points"


@register("widgets", WidgetTask, "a kind that another package adds")
def load(root, dataset, extra):
    return WidgetTask(extra.get("points", 8))
'''


def test_a_kind_from_another_package_gets_its_options_budget_and_protocol(tmp_path):
    site = tmp_path / "site"
    (site / "widgetkind-0.1.dist-info").mkdir(parents=True)
    (site / "widgetkind.py").write_text(textwrap.dedent(KIND))
    (site / "widgetkind-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: widgetkind\nVersion: 0.1\n")
    (site / "widgetkind-0.1.dist-info" / "entry_points.txt").write_text(
        "[qgfd_pyg.bench.kinds]\nwidgets = widgetkind\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), ROOT])}
    bench = [sys.executable, "-m", "qgfd_pyg.bench"]
    listed = subprocess.run(bench + ["--list"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "widgets" in listed.stdout and "a kind that another package adds" in listed.stdout
    helped = subprocess.run(bench + ["--help"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert "--points" in helped.stdout and "--quick" in helped.stdout
    done = subprocess.run(bench + ["widgets", "--points", "5", "--quick", "--seeds", "1",
                                   "--no-progress", "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "epochs 3" in done.stderr  # the kind's --quick budget: 3 epochs, patience 1
    md = (tmp_path / "out" / "widgets.md").read_text()
    assert ("Adam, up to 3 epochs, early stopping after 1 epochs in which neither validation "
            "negative MSE nor validation loss improved; 5 points") in md
