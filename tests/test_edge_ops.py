import pytest
import torch

from qgfd_pyg._numba import routines
from qgfd_pyg.edge_ops import EdgeLayout, edge_aggregate, edge_dot


@pytest.mark.parametrize("implementation", ["chunked", "segments"])
def test_edge_ops_match_gathers_in_value_and_gradient(implementation):
    if implementation == "segments" and routines() is None:
        pytest.skip("numba is not installed")
    n, e, H, C = 9, 40, 3, 4
    src, dst = torch.randint(0, n - 1, (e,)), torch.randint(0, n - 1, (e,))  # node n-1 isolated
    layout = EdgeLayout(src, dst, n) if implementation == "segments" else None
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


def test_chunk_elements_none_is_the_default_and_bad_values_are_refused():
    n, e, H, C = 6, 20, 2, 3
    src, dst = torch.randint(0, n, (e,)), torch.randint(0, n, (e,))
    q, k = torch.randn(n, H, C), torch.randn(n, H, C)
    w = torch.rand(e, H)
    expected = torch.zeros(n, H, C).index_add_(0, dst, w[..., None] * k[src])
    torch.testing.assert_close(edge_aggregate(w, k, src, dst, n, None), expected)
    torch.testing.assert_close(edge_dot(q, k, src, dst, None), (q[dst] * k[src]).sum(-1))
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError, match="chunk_elements"):
            edge_aggregate(w, k, src, dst, n, bad)
