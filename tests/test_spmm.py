import pytest
import torch
from qgfd_pyg.reference import random_transition

from qgfd_pyg import diffuse, get_spmm_backend, graph_transition, set_spmm_backend
from qgfd_pyg._numba import routines
from qgfd_pyg.spmm import SPMM_BACKENDS, spmm


def _available_backends():
    return [b for b in SPMM_BACKENDS if b != "numba" or routines() is not None]


def test_spmm_backends_agree_in_value_and_gradient():
    P = random_transition(40, 160)
    V = torch.randn(40, 5, requires_grad=True)
    weights = torch.randn(40, 5)
    results = {}
    try:
        for backend in _available_backends():
            set_spmm_backend(backend)
            assert get_spmm_backend() == backend
            V.grad = None
            Z = diffuse(V, P, 0.8, 4)
            (Z * weights).sum().backward()
            results[backend] = (Z.detach(), V.grad.clone())
    finally:
        set_spmm_backend("auto")
    assert len(results) >= 3
    for Z, grad in results.values():
        torch.testing.assert_close(Z, results["torch"][0])
        torch.testing.assert_close(grad, results["torch"][1])
    with pytest.raises(ValueError, match="backend"):
        set_spmm_backend("cusparse")


@pytest.mark.parametrize("backend", ["numba", "torch", "torch_sparse"])
def test_spmm_and_its_transpose_match_dense(backend):
    if backend not in _available_backends():
        pytest.skip("numba is not installed")
    # rows without entries, an isolated last node and float64 values
    P = graph_transition(torch.tensor([[0, 0, 2, 3], [1, 2, 2, 0]]), 6)
    x = torch.randn(6, 3, dtype=torch.float64)
    try:
        set_spmm_backend(backend)
        torch.testing.assert_close(spmm(P, x), P.to_dense().double() @ x)
        torch.testing.assert_close(spmm(P, x, transpose=True), P.to_dense().double().T @ x)
        assert spmm(P, x[:, :0]).shape == (6, 0)
    finally:
        set_spmm_backend("auto")


def test_csr_forms_are_built_once_and_kept_on_the_transition():
    from qgfd_pyg.spmm import _csr

    P = random_transition(30, 100)
    V = torch.randn(30, 4, requires_grad=True)
    diffuse(V, P, 0.8, 3).sum().backward()
    forward, transposed = _csr(P, False), _csr(P, True)
    torch.testing.assert_close(
        torch.sparse_csr_tensor(*transposed, (30, 30)).to_dense(), P.to_dense().T)
    diffuse(V, P, 0.8, 3).sum().backward()
    assert _csr(P, False) is forward and _csr(P, True) is transposed


@pytest.mark.parametrize("backend", _available_backends())
@pytest.mark.parametrize("change", ["set_value_", "mul_"])
def test_in_place_changes_of_the_entries_reach_forward_and_backward(backend, change):
    """The cached CSR forms of P and P^T follow in-place changes of P's values."""
    set_spmm_backend(backend)
    try:
        P = random_transition(25, 90)
        V = torch.randn(25, 4, dtype=torch.float64, requires_grad=True)
        diffuse(V, P, 0.8, 4).sum().backward()  # builds and caches both forms
        if change == "set_value_":
            P.set_value_(torch.rand(P.nnz()), layout="coo")
        else:
            P.storage.value().mul_(torch.rand(P.nnz()))
        dense = P.to_dense().double()
        w = torch.randn(25, 4, dtype=torch.float64)
        Z = diffuse(V, P, 0.8, 4)
        (g,) = torch.autograd.grad((Z * w).sum(), V)
        Z_dense = diffuse(V, dense, 0.8, 4)
        (g_dense,) = torch.autograd.grad((Z_dense * w).sum(), V)
        torch.testing.assert_close(Z, Z_dense, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(g, g_dense, atol=1e-5, rtol=1e-5)
    finally:
        set_spmm_backend("auto")


def test_numba_backend_without_numba_is_a_clear_error(monkeypatch):
    from qgfd_pyg import _numba

    monkeypatch.setitem(_numba._state, "routines", None)
    with pytest.raises(ValueError, match="numba"):
        set_spmm_backend("numba")
    assert get_spmm_backend() == "auto"
    P, V = random_transition(), torch.randn(20, 3)  # "auto" falls back to torch's CSR product
    torch.testing.assert_close(diffuse(V, P, 0.5, 2), diffuse(V, P.to_dense(), 0.5, 2))


@pytest.mark.parametrize("layout", [torch.sparse_coo, torch.sparse_csr])
@pytest.mark.parametrize("transpose", [False, True])
def test_torch_sparse_entries_with_gradients_match_dense_and_keep_no_dense_matrix(layout,
                                                                                  transpose):
    """Learnt entries of a torch sparse transition (what ``sparse_matrix`` builds without
    torch-sparse): value and both gradients as the dense product's, with duplicates adding
    up, and autograd keeps ``[nnz, d]``-sized tensors, not a dense ``[N, N]`` one."""
    from autograd_memory import saved_bytes

    n, d = 300, 4
    index = torch.tensor([[0, 0, 2, 3, 3, 299], [1, 1, 2, 0, 299, 5]])  # (0, 1) twice
    entries = torch.rand(6, dtype=torch.float64, requires_grad=True)
    x = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(n, d, dtype=torch.float64)

    def product():
        P = torch.sparse_coo_tensor(index, entries, (n, n)).coalesce()
        return spmm(P if layout == torch.sparse_coo else P.to_sparse_csr(), x, transpose)

    saved, out = saved_bytes(product)
    assert saved < n * n * 8 / 10
    dense = torch.zeros(n, n, dtype=torch.float64).index_put(tuple(index), entries,
                                                               accumulate=True)
    expected = (dense.T if transpose else dense) @ x
    torch.testing.assert_close(out, expected)
    got = torch.autograd.grad((out * weights).sum(), (entries, x))
    want = torch.autograd.grad((expected * weights).sum(), (entries, x))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("backend", [b for b in _available_backends() if b != "torch_sparse"])
@pytest.mark.parametrize("layout", [torch.sparse_coo, torch.sparse_csr])
def test_torch_sparse_transitions_match_dense_and_follow_in_place_changes(backend, layout):
    """A torch sparse P (what the builders return without torch-sparse) runs as a CSR product
    whose forms for P and P^T are built once per tensor, and rebuilt when its values change in
    place."""
    from qgfd_pyg.spmm import _torch_sparse_csr

    dense = random_transition(25, 90).to_dense().double()
    P = dense.to_sparse_coo().coalesce() if layout == torch.sparse_coo \
        else dense.to_sparse_csr()
    V = torch.randn(25, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(25, 4, dtype=torch.float64)
    set_spmm_backend(backend)
    try:
        for _ in range(2):
            Z = diffuse(V, P, 0.8, 4)
            (g,) = torch.autograd.grad((Z * w).sum(), V)
            Z_dense = diffuse(V, dense, 0.8, 4)
            (g_dense,) = torch.autograd.grad((Z_dense * w).sum(), V)
            torch.testing.assert_close(Z, Z_dense)
            torch.testing.assert_close(g, g_dense)
            forward, transposed = _torch_sparse_csr(P, False), _torch_sparse_csr(P, True)
            assert _torch_sparse_csr(P, False) is forward
            torch.testing.assert_close(torch.sparse_csr_tensor(*transposed, (25, 25)).to_dense(),
                                       dense.T)
            values = P._values() if layout == torch.sparse_coo else P.values()
            values.mul_(torch.rand(values.numel(), dtype=torch.float64))  # then again
            dense = P.to_dense()
    finally:
        set_spmm_backend("auto")
