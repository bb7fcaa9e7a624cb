import pytest
import torch

from qgfd_pyg._numba import kernels as numba_kernels
from qgfd_pyg.edge_ops import EdgeLayout, edge_aggregate, edge_dot


@pytest.mark.parametrize("kernels", ["chunked", "segments"])
def test_edge_ops_match_gathers_in_value_and_gradient(kernels):
    if kernels == "segments" and numba_kernels() is None:
        pytest.skip("numba is not installed")
    n, e, H, C = 9, 40, 3, 4
    src, dst = torch.randint(0, n - 1, (e,)), torch.randint(0, n - 1, (e,))  # node n-1 isolated
    layout = EdgeLayout(src, dst, n) if kernels == "segments" else None
    q, k, z = (torch.randn(n, H, C, dtype=torch.float64, requires_grad=True) for _ in range(3))
    w = torch.rand(e, H, dtype=torch.float64, requires_grad=True)
    for chunk in (1, 7, 10**6):  # chunk_elements: one edge at a time, ragged, everything
        assert torch.autograd.gradcheck(
            lambda a, b, c=chunk: edge_dot(a, b, src, dst, c, layout), (q, k))
        assert torch.autograd.gradcheck(
            lambda a, b, c=chunk: edge_aggregate(a, b, src, dst, n, c, layout), (w, z))
    torch.testing.assert_close(edge_dot(q, k, src, dst, layout=layout),
                               (q[dst] * k[src]).sum(-1))
    expected = torch.zeros(n, H, C, dtype=torch.float64).index_add_(0, dst, w[..., None] * z[src])
    torch.testing.assert_close(edge_aggregate(w, z, src, dst, n, layout=layout), expected)
    # float32 through the layer's own path, against the chunked gathers
    out = edge_aggregate(w.float(), z.float(), src, dst, n, layout=layout)
    torch.testing.assert_close(out, expected.float())
