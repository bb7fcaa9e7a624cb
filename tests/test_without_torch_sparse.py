"""The graph path with torch-sparse, torch-scatter and pyg-lib hidden (as on images where they
cannot be installed): a fresh interpreter, checked against the dense references."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r'''
import sys
for name in ("torch_sparse", "torch_scatter", "pyg_lib"):
    sys.modules[name] = None  # import of these now raises ImportError
import networkx as nx
import torch
from torch.testing import assert_close
from torch_geometric.typing import WITH_TORCH_SPARSE
from torch_geometric.utils import add_self_loops, remove_self_loops

from qgfd_pyg import QGFDConv, diffuse, from_networkx, graph_transition, set_spmm_backend
from qgfd_pyg.reference import dense_transition, pform_conv

assert not WITH_TORCH_SPARSE
torch.manual_seed(0)
n = 9
ei = torch.randint(0, n, (2, 25))
w = torch.rand(25, dtype=torch.float64) + 0.1
P = graph_transition(ei, n, w)
assert P.layout == torch.sparse_coo
dense = dense_transition(ei, n, w)
assert_close(P.to_dense(), dense)

V = torch.randn(n, 3, dtype=torch.float64, requires_grad=True)
Z = diffuse(V, P, 0.8, 4)
expected = V
for _ in range(4):
    expected = 0.2 * V + 0.8 * dense @ expected
assert_close(Z, expected)
g1, = torch.autograd.grad((Z ** 2).sum(), V)
g2, = torch.autograd.grad((expected ** 2).sum(), V)
assert_close(g1, g2)

x = torch.randn(n, 4)
attn = add_self_loops(remove_self_loops(ei)[0], num_nodes=n)[0]
conv = QGFDConv(4, 3, heads=2, alpha=0.7, steps=3)
flow = dense_transition(ei.flip(0), n)
assert_close(conv(x, ei).double(), pform_conv(conv, x, attn, [flow, flow]), atol=1e-5, rtol=0)
adj_t = torch.sparse_coo_tensor(ei.flip(0), torch.ones(25), (n, n)).coalesce()
unique = adj_t.indices().flip(0)
assert_close(conv(x, adj_t), conv(x, unique, adj_t.values()), atol=1e-6, rtol=0)
att = QGFDConv(4, 3, heads=2, alpha=0.7, steps=3, transition="attention")
out = att(x, ei)
assert_close(out.double(), pform_conv(att, x, attn, "attention"), atol=1e-5, rtol=0)
out.sum().backward()
assert all(p.grad is not None for p in att.parameters())

# half-precision layers with learnt transitions: forward and backward, close to float32
for transition in ("attention", "knn"):
    layer = QGFDConv(4, 3, heads=2, alpha=0.7, steps=3, transition=transition, k=3)
    reference = layer(x, ei)
    half = layer.half()
    out = half(x.half(), ei)
    assert out.dtype == torch.float16
    assert_close(out.float(), reference, atol=2e-2, rtol=2e-2)
    out.float().sum().backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all())
               for p in half.parameters())

P_path, nodes = from_networkx(nx.path_graph(3))
assert_close(P_path.to_dense(), torch.tensor([[0, 1, 0], [0.5, 0, 0.5], [0, 1, 0]]))
try:
    set_spmm_backend("torch_sparse")
except ValueError as error:
    assert "torch-sparse" in str(error)
else:
    raise AssertionError("the torch_sparse backend was accepted without torch-sparse")
print("ok")
'''


def test_graph_path_without_torch_sparse():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "ok"
