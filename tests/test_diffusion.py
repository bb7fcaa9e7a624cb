import pytest
import torch
from autograd_memory import saved_bytes

from qgfd_pyg import diffuse, graph_transition, kernel_coefficients, knn_transition
from qgfd_pyg.reference import heat_coefficients, kernel_matrix, pform, random_transition


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.85, 1.0])
@pytest.mark.parametrize("steps", [0, 1, 3, 8])
@pytest.mark.parametrize("transition", ["graph", "knn"])
def test_z_form_equals_p_form(alpha, steps, transition, device):
    n = 20
    P = random_transition(n) if transition == "graph" else knn_transition(torch.randn(n, 6), 4)
    p0 = torch.softmax(torch.randn(7, n, dtype=torch.float64), dim=1)  # 7 queries
    V = torch.randn(n, 5)
    Z = diffuse(V.to(device), P.to(device), alpha=alpha, steps=steps).cpu()
    expected = pform(p0, P.to_dense().double(), alpha, steps) @ V.double()
    torch.testing.assert_close((p0 @ Z.double()), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("heat_time", [0.5, 2.0])
def test_heat_kernel_equals_its_p_form(heat_time):
    P = random_transition()
    V = torch.randn(20, 3, dtype=torch.float64)
    theta, tail = heat_coefficients(5, heat_time)  # e^-s s^k / k!, written out independently
    M = kernel_matrix(P.to_dense().double(), theta, tail)
    torch.testing.assert_close(M.sum(1), torch.ones(20, dtype=torch.float64))  # stays stochastic
    Z = diffuse(V, P.to_dense().double(), steps=5, kernel="heat", heat_time=heat_time)
    torch.testing.assert_close(Z, M @ V)
    Z = diffuse(V, P, steps=5, kernel="heat", heat_time=heat_time)  # sparse P: same
    torch.testing.assert_close(Z, M @ V)


def test_kernel_coefficients_written_out():
    theta, tail = kernel_coefficients("ppr", 3, alpha=0.5)
    assert theta == pytest.approx([0.5, 0.25, 0.125])  # (1 - a) a^k
    assert tail == pytest.approx([1.0, 0.5, 0.25, 0.125])  # a^k
    theta, tail = kernel_coefficients("heat", 4, heat_time=2.0)
    e = 0.1353352832366127  # e^-2
    assert theta == pytest.approx([e, 2 * e, 2 * e, 4 / 3 * e])  # e^-2 2^k / k!
    assert tail == pytest.approx([1.0, 1 - e, 1 - 3 * e, 1 - 5 * e, 1 - 19 / 3 * e])


def test_sparse_tensor_torch_sparse_and_dense_transitions_agree():
    P = random_transition()
    V = torch.randn(20, 4)
    Z = diffuse(V, P, 0.7, 5)
    torch.testing.assert_close(diffuse(V, P.to_dense(), 0.7, 5), Z)
    torch.testing.assert_close(diffuse(V, P.to_dense().to_sparse_csr(), 0.7, 5), Z)
    torch.testing.assert_close(diffuse(V, P.to_dense().to_sparse_coo(), 0.7, 5), Z)


def test_alpha_zero_is_identity_and_multi_dim_values():
    P = random_transition()
    V = torch.randn(20, 3, 4)
    assert torch.equal(diffuse(V, P, alpha=0.0, steps=10), V)
    Z = diffuse(V, P, 0.5, 3)
    assert Z.shape == V.shape
    torch.testing.assert_close(Z.reshape(20, 12), diffuse(V.reshape(20, 12), P, 0.5, 3))


def test_convergence_is_geometric_and_early_stop():
    n = 50
    P = graph_transition(torch.randint(0, n, (2, 200)), n)
    V = torch.randn(n, 8, dtype=torch.float64)
    for alpha in (0.5, 0.85):
        Z, info = diffuse(V, P.to_dense().double(), alpha, 40, return_info=True)
        r = torch.tensor(info.residuals)
        assert info.steps == 40 and len(r) == 40 and not info.converged
        ratios = r[1:] / r[:-1]
        assert (ratios <= alpha + 1e-9).all()
        limit = (1 - alpha) * torch.linalg.solve(torch.eye(n, dtype=torch.float64)
                                                 - alpha * P.to_dense().double(), V)
        assert (Z - limit).abs().max() <= alpha**40 * 2 * V.abs().max() + 1e-9
        Z_tol, info = diffuse(V, P.to_dense().double(), alpha, 200, tol=1e-6, return_info=True)
        assert info.converged and info.steps < 200 and info.residuals[-1] < 1e-6
        assert (Z_tol - limit).abs().max() < 1e-6 / (1 - alpha) * 2


def test_gradients_flow_to_values_and_transition():
    keys = torch.randn(15, 4, requires_grad=True)
    V = torch.randn(15, 3, requires_grad=True)
    diffuse(V, knn_transition(keys, 4), 0.8, 4).pow(2).sum().backward()
    assert V.grad.abs().sum() > 0 and keys.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(alpha=1.5), "alpha"),
    (dict(alpha=-0.1), "alpha"),
    (dict(alpha=float("nan")), "alpha"),
    (dict(steps=-1), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(tol=0.0), "tol"),
    (dict(kernel="gauss"), "kernel"),
    (dict(kernel="heat", heat_time=-1.0), "heat_time"),
    (dict(values=torch.randn(7, 3)), "rows"),
    (dict(transition=torch.randn(5, 6)), "square"),
])
def test_diffuse_rejects_bad_input(kwargs, match):
    args = dict(values=torch.randn(5, 3), transition=graph_transition(
        torch.tensor([[0, 1], [1, 2]]), 5))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        diffuse(**args)


@pytest.mark.parametrize("kernel", ["ppr", "heat"])
def test_fixed_transition_gradient_is_the_transposed_diffusion(kernel):
    P = random_transition(12, 40)
    V = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    f = lambda v: diffuse(v, P, 0.7, 4, kernel=kernel)  # noqa: E731
    assert torch.autograd.gradcheck(f, (V,))
    assert torch.autograd.gradgradcheck(f, (V,))
    # against plain autograd through the same loop over a P that itself needs gradients
    Pd = P.to_dense().double().requires_grad_()
    w = torch.randn(12, 3, dtype=torch.float64)
    (g_fixed,) = torch.autograd.grad((f(V) * w).sum(), V)
    (g_auto,) = torch.autograd.grad((diffuse(V, Pd, 0.7, 4, kernel=kernel) * w).sum(), V)
    torch.testing.assert_close(g_fixed, g_auto)


@pytest.mark.parametrize("layout", ["csr", "coo", "dense"])
def test_gradient_through_torch_tensor_transitions(layout):
    P = random_transition(10, 30)
    dense = P.to_dense()  # a SparseTensor or torch sparse P alike
    T = {"csr": dense.to_sparse_csr, "coo": dense.to_sparse_coo,
         "dense": lambda: dense}[layout]().double()
    V = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: diffuse(v, T, 0.7, 3), (V,))


def test_gradient_after_early_stop_uses_the_steps_taken():
    P = random_transition(30, 120)
    V = torch.randn(30, 4, dtype=torch.float64, requires_grad=True)
    Z, info = diffuse(V, P, 0.5, 100, tol=1e-4, return_info=True)
    assert info.converged and info.steps < 100
    w = torch.randn(30, 4, dtype=torch.float64)
    (g,) = torch.autograd.grad((Z * w).sum(), V)
    (g_ref,) = torch.autograd.grad((diffuse(V, P, 0.5, info.steps) * w).sum(), V)
    torch.testing.assert_close(g, g_ref)


def test_backward_memory_fixed_transition_and_checkpoint():
    n, d, steps = 64, 8, 6
    V = torch.randn(n, d, requires_grad=True)
    one_copy = n * d * 4
    kept, _ = saved_bytes(lambda: diffuse(V, random_transition(n, 300), 0.8, steps))
    assert kept == 0  # a fixed P keeps nothing of the steps
    keys = torch.randn(n, 5, requires_grad=True)
    results = {}
    for checkpoint in (False, True):
        V.grad = keys.grad = None
        kept, Z = saved_bytes(
            lambda c=checkpoint: diffuse(V, knn_transition(keys, 4), 0.8, steps, checkpoint=c))
        Z.pow(2).sum().backward()
        results[checkpoint] = (kept, Z.detach(), V.grad.clone(), keys.grad.clone())
    assert results[False][0] >= steps * one_copy  # autograd: a copy per step
    # recomputation: nothing of the diffusion steps (the kNN transition itself is built
    # outside and kept by autograd as before)
    transition_kept, _ = saved_bytes(lambda: knn_transition(keys, 4))
    assert results[True][0] <= transition_kept + one_copy
    for a, b in zip(results[False][1:], results[True][1:], strict=True):
        torch.testing.assert_close(a, b)


def test_reused_buffers_leave_inputs_alone_and_match_dense():
    P = random_transition(25, 90)
    V = torch.randn(25, 6)
    V_before = V.clone()
    with torch.no_grad():  # the loop reuses dead iterates' memory only when nothing records
        Z = diffuse(V, P, 0.9, 9)
    assert torch.equal(V, V_before)
    torch.testing.assert_close(Z, diffuse(V, P.to_dense(), 0.9, 9))
    G = torch.randn(25, 6)
    G_before = G.clone()
    V.requires_grad_()
    (g,) = torch.autograd.grad((diffuse(V, P, 0.9, 9) * G).sum(), V)  # backward reuses too
    (g_dense,) = torch.autograd.grad((diffuse(V, P.to_dense(), 0.9, 9) * G).sum(), V)
    torch.testing.assert_close(g, g_dense)
    assert torch.equal(G, G_before) and torch.equal(V.detach(), V_before)


@pytest.mark.parametrize("needs_grad", [False, True])
def test_a_batch_of_dense_transitions_equals_the_p_form_per_item(needs_grad):
    """One transition per item (e.g. per query): p0_b Z_b equals the dense p-form's
    p_T,b V_b for every item, values and gradients."""
    from qgfd_pyg.reference import pform

    torch.manual_seed(3)
    B, N, d, Lq = 3, 7, 4, 2
    P = torch.rand(B, N, N, dtype=torch.float64)
    P = (P * (torch.rand(B, N, N) < 0.5)).add(torch.eye(N)).div_(1.0)
    P = P / P.sum(-1, keepdim=True)
    P.requires_grad_(needs_grad)
    V = torch.randn(B, N, d, dtype=torch.float64, requires_grad=True)
    p0 = torch.softmax(torch.randn(B, Lq, N, dtype=torch.float64), -1)
    got = p0 @ diffuse(V, P, alpha=0.7, steps=5)
    expected = torch.stack([pform(p0[b], P[b], 0.7, 5) @ V[b] for b in range(B)])
    torch.testing.assert_close(got, expected)
    weights = torch.randn_like(got)
    grads = torch.autograd.grad((got * weights).sum(), [V] + ([P] if needs_grad else []))
    ref = torch.autograd.grad((expected * weights).sum(), [V] + ([P] if needs_grad else []))
    for a, b in zip(grads, ref, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="batch of 3"):
        diffuse(torch.randn(N, d, dtype=torch.float64), P.detach())


def test_reused_iterate_buffers_never_leak_between_calls():
    """The fused diffusion keeps its two iterate buffers between calls: results of earlier
    calls stay intact, and calls of other sizes and dtypes (bigger, smaller, past the
    pool's limit) all match the dense product."""
    from qgfd_pyg import spmm as spmm_module

    results = []
    for n, dtype in ((30, torch.float32), (12, torch.float32), (40, torch.float64),
                     (30, torch.float32)):
        P = random_transition(n, 4 * n)
        V = torch.randn(n, 3, dtype=dtype)
        Z = diffuse(V, P, 0.7, 4)
        expected = diffuse(V, P.to_dense().to(dtype), 0.7, 4)
        torch.testing.assert_close(Z, expected)
        results.append((Z, Z.clone()))
    for Z, copy in results:  # no later call wrote into an earlier result
        assert torch.equal(Z, copy)
    limit = spmm_module.SCRATCH_BYTES
    try:
        spmm_module.SCRATCH_BYTES = 0  # every call on fresh buffers
        P = random_transition(25, 90)
        V = torch.randn(25, 4)
        torch.testing.assert_close(diffuse(V, P, 0.7, 4), diffuse(V, P.to_dense(), 0.7, 4))
    finally:
        spmm_module.SCRATCH_BYTES = limit
