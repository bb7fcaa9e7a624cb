"""torch.compile(fullgraph=True) as a user calls it: a fresh process, the compiled module's
call the first thing it runs, no graph break allowed; output and gradients equal to eager."""
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # fresh processes

SCRIPT = r"""
import sys
import torch
from qgfd_pyg import QGFD, QGFDConv, RelationalGraph, relational_flow

case, backend = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
x, edge_index = torch.randn(30, 6), torch.randint(0, 30, (2, 90))
edge_attr = torch.randn(90, 2)
if case == "conv":  # GATConv's call: edge features, residual, attention weights back
    model = QGFDConv(6, 4, heads=2, edge_dim=2, residual=True, alpha=0.8, steps=3)
    args = (x, edge_index, edge_attr)
    run = lambda m, *a: m(*a, return_attention_weights=True)[0]
elif case == "network":  # the ready network: attention transition, learnt hop weights
    model = QGFD(6, 8, num_layers=2, out_channels=3, heads=2, steps=3, dropout=0.0,
                 attn_dropout=0.0)
    args = (x, edge_index)
    run = lambda m, *a: m(*a)
else:  # relational_flow: per-query, per-step relation weights, learnt hop weights
    graph = RelationalGraph(edge_index, torch.randint(0, 3, (90,)), 3, 30)

    class Flow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.rand(3, 4, 3))
            self.hop = torch.nn.Parameter(torch.rand(4))

        def forward(self, p0):
            return relational_flow(p0, graph, self.a.softmax(-1), hop_weights=self.hop)

    model = Flow()
    args = (torch.softmax(torch.randn(4, 30), 1),)
    run = lambda m, *a: m(*a)
compiled = torch.compile(model, fullgraph=True, backend=backend)
out = run(compiled, *args)  # the first call of the process: compiled
grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
eager = run(model, *args)
torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-4)
for got, want in zip(grads, torch.autograd.grad(eager.square().sum(),
                                                list(model.parameters())), strict=True):
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
print("same as eager")
"""


def compile_in_fresh_process(case: str, backend: str) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, case, backend], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same as eager" in done.stdout


@pytest.mark.parametrize("case", ["conv", "network", "relational_flow"])
def test_fullgraph_compile_as_the_first_call(case):
    compile_in_fresh_process(case, "aot_eager")


def test_fullgraph_compile_with_inductor():
    """The default backend: the graph lowered and compiled to C++ (a minute on 2 cores)."""
    compile_in_fresh_process("conv", "inductor")
