"""relational_flow and the hop weights, against brute-force dense loops written here."""
import pytest
import torch

from qgfd_pyg import (QGFDConv, RelationalGraph, diffuse, ppr_hop_weights, relational_flow)
from qgfd_pyg import _numba
from qgfd_pyg.relational import active as active_module
from qgfd_pyg.relational import graph as graph_module
from qgfd_pyg.relational import steps as steps_module
from qgfd_pyg.reference import dense_transition


def _graphs():
    """(edge_index, edge_type, R, N): repeated edges, a self loop, an isolated node (5), a
    dangling node (6: edges in, none out), a node with out-edges of one relation only."""
    ei = torch.tensor([[0, 0, 0, 1, 1, 2, 3, 3, 4, 2, 0],
                       [1, 1, 2, 2, 6, 3, 0, 3, 0, 6, 4]])
    et = torch.tensor([0, 0, 1, 0, 2, 1, 2, 0, 1, 2, 0])
    yield ei, et, 3, 7
    g = torch.Generator().manual_seed(3)
    n, e, r = 12, 40, 4
    ei = torch.randint(0, n - 2, (2, e), generator=g)  # nodes 10, 11 isolated
    ei = torch.cat([ei, ei[:, :6]], 1)  # repeated edges
    yield ei, torch.randint(0, r, (ei.size(1),), generator=g), r, n


def _dense_flow(p0, ei, et, R, N, a, theta, weight=None, normalization="node",
                dangling="keep"):
    """p_T = sum_k theta_k p0 P_0 .. P_{k-1}, one query at a time, dense [N, N] matrices."""
    A = torch.zeros(R, N, N, dtype=torch.float64)
    w = torch.ones(ei.size(1), dtype=torch.float64) if weight is None else weight.double()
    A.index_put_((et, ei[0], ei[1]), w, accumulate=True)
    rows = []
    for b in range(p0.size(0)):
        x = p0[b].double()
        th = theta[b] if theta.dim() == 2 else theta
        acc = th[0].double() * x
        for t in range(a.size(0)):
            if normalization == "node":
                M = (a[t, b].double().view(R, 1, 1) * A).sum(0)
                out_mass = M.sum(1, keepdim=True)
                P = torch.where(out_mass > 0, M / out_mass.clamp_min(1e-300),
                                torch.zeros(N, N, dtype=torch.float64))
                if dangling == "keep":  # no out-mass: the node keeps its mass
                    P = P + torch.diag((out_mass.view(-1) == 0).double())
            else:  # each relation's own walk (or its counts), mixed; a missing relation's
                P = torch.zeros(N, N, dtype=torch.float64)  # share stays / drops
                for r in range(R):
                    deg = A[r].sum(1, keepdim=True)
                    walk = A[r] if normalization == "none" else torch.where(
                        deg > 0, A[r] / deg.clamp_min(1e-300), torch.zeros_like(A[r]))
                    P = P + a[t, b, r].double() * walk
                    if dangling == "keep":
                        P = P + a[t, b, r].double() * torch.diag((deg.view(-1) == 0).double())
            x = x @ P
            acc = acc + th[t + 1].double() * x
        rows.append(acc)
    return torch.stack(rows)


@pytest.fixture(params=["compiled", "torch", "torch-chunks"])
def backend(request, monkeypatch):
    """The numba routines where installed, and the torch path (GPUs, no numba): all queries
    at once, and one query per chunk (so that the column chunks are exercised)."""
    if request.param.startswith("torch"):
        monkeypatch.setattr(_numba, "usable", lambda *t: False)
    if request.param == "torch-chunks":
        monkeypatch.setattr(steps_module, "CHUNK_ELEMENTS", 7)
        monkeypatch.setattr(steps_module, "PAIR_MEMORY", 0.0)
    elif _numba.routines() is None:
        pytest.skip("numba is not installed")
    return request.param


@pytest.mark.parametrize("hops", ["ppr", "shared", "per_query"])
@pytest.mark.parametrize("steps", [0, 1, 3])
def test_flow_equals_dense_loop_values_and_gradients(backend, hops, steps):
    for ei, et, R, N in _graphs():
        B = 5
        graph = RelationalGraph(ei, et, R, N)
        p0 = torch.softmax(torch.randn(B, N, dtype=torch.float64), 1)
        p0[0] = 0.0
        p0[0, 6 if N == 7 else 10] = 1.0  # a one-hot seed on an isolated / dangling node
        p0.requires_grad_()
        a = torch.rand(steps, B, R, dtype=torch.float64)
        if steps:
            a[0, 1] = 0.0  # a query that stands still for one step
            a[-1, 2, 0] = 0.0  # a relation switched off
        a.requires_grad_()
        if hops == "ppr":
            theta, given = ppr_hop_weights(0.7, steps).double(), None
        elif hops == "shared":
            theta = torch.randn(steps + 1, dtype=torch.float64, requires_grad=True)
            given = theta
        else:
            theta = torch.randn(B, steps + 1, dtype=torch.float64, requires_grad=True)
            given = theta
        out = relational_flow(p0, graph, a, alpha=0.7, hop_weights=given)
        ref = _dense_flow(p0, ei, et, R, N, a, theta)
        torch.testing.assert_close(out, ref)
        g = torch.randn_like(ref)
        inputs = [p0, a] + ([theta] if given is not None else [])
        inputs = [x for x in inputs if x.numel()]
        got = torch.autograd.grad((out * g).sum(), inputs, allow_unused=True)
        want = torch.autograd.grad((ref * g).sum(), inputs, allow_unused=True)
        for x, y in zip(got, want, strict=True):
            torch.testing.assert_close(x, y)


@pytest.mark.parametrize("shape", [(13, 5), (5, 13), (8, 8), (1, 17), (17, 1), (16, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_transpose_matches_torch(monkeypatch, shape, dtype):
    """The flow's layout change (numba's tiles of 8 along the long side where installed,
    here at any size: partial last tiles, either side the longer) against torch's own
    transpose."""
    monkeypatch.setattr(steps_module, "TILED_TRANSPOSE_MIN", 1)
    x = torch.randn(*shape, dtype=dtype)
    out = steps_module._transpose(x)
    assert out.is_contiguous() and torch.equal(out, x.t())
    into = torch.full((shape[1], shape[0]), float("nan"), dtype=dtype)
    assert steps_module._transpose(x, out=into) is into and torch.equal(into, x.t())


@pytest.mark.parametrize("queries", [5, 20])  # [B, N] wide, and taller than wide
def test_transposes_keep_values_and_gradients(backend, monkeypatch, queries):
    """The seeds, the result and their gradients change layout (in tiles of 8 along the long
    side with numba, here at any size: partial tiles)."""
    monkeypatch.setattr(steps_module, "TILED_TRANSPOSE_MIN", 1)
    for ei, et, R, N in _graphs():
        graph = RelationalGraph(ei, et, R, N)
        p0 = torch.rand(queries, N, dtype=torch.float64, requires_grad=True)
        a = torch.rand(2, queries, R, dtype=torch.float64, requires_grad=True)
        theta = ppr_hop_weights(0.8, 2).double()
        out = relational_flow(p0, graph, a, alpha=0.8)
        ref = _dense_flow(p0, ei, et, R, N, a, theta)
        torch.testing.assert_close(out, ref)
        g = torch.randn_like(ref)
        for x, y in zip(torch.autograd.grad((out * g).sum(), [p0, a]),
                        torch.autograd.grad((ref * g).sum(), [p0, a]), strict=True):
            torch.testing.assert_close(x, y)


def test_inference_results_survive_later_calls(backend):
    """Without autograd the walks run in buffers kept between calls: a result is its own
    memory, unchanged by later calls on other graphs and batch sizes, and equal to the dense
    loop's."""
    results = []
    with torch.no_grad():
        for B, (ei, et, R, N) in zip((3, 6), _graphs(), strict=True):
            p0 = torch.softmax(torch.randn(B, N, dtype=torch.float64), 1)
            a = torch.rand(3, B, R, dtype=torch.float64)
            theta = torch.randn(B, 4, dtype=torch.float64)
            out = relational_flow(p0, RelationalGraph(ei, et, R, N), a, hop_weights=theta)
            results.append((out, out.clone(), _dense_flow(p0, ei, et, R, N, a, theta)))
            relational_flow(p0, RelationalGraph(ei, et, R, N), a.flip(0), hop_weights=theta)
    for out, copy, ref in results:
        torch.testing.assert_close(out, copy, rtol=0, atol=0)
        torch.testing.assert_close(out, ref)


def _path_graph():
    """A path 0 -> 1 -> ... -> 8 of mixed relations with a branch 2 -> 9 -> 10, a repeated
    edge, edges into 10 from 0-5 (reached from some active rows, not others), node 11
    isolated: mass from a one-hot seed reaches a few rows per step."""
    ei = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 2, 9, 3, 3, 1, 0, 1, 2, 3, 4, 5],
                       [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 4, 2, 0, 10, 10, 10, 10, 10, 10]])
    et = torch.tensor([0, 1, 0, 2, 1, 0, 2, 1, 2, 0, 1, 2, 1, 0, 1, 2, 0, 1, 2])
    return ei, et, 3, 12


@pytest.mark.parametrize("normalization", ["node", "relation", "none"])
@pytest.mark.parametrize("dangling", ["keep", "drop"])
@pytest.mark.parametrize("seed_grad", [False, True])
def test_sparse_seeds_values_and_gradients(backend, monkeypatch, normalization, dangling,
                                           seed_grad):
    """Seeds on a few nodes (the compiled flow then reads and writes only the rows that can
    hold mass at each step; every row where the seeds need a gradient), with and without
    autograd: values and the gradients of the relation weights, the hop weights and the
    seeds equal the dense loop's. Memory the flow allocates or keeps between calls starts
    as NaN, so that a read of a row it skipped shows."""
    real, runs = torch.empty_like, []
    monkeypatch.setattr(torch, "empty_like", lambda x, *args, **kwargs: (
        lambda out: out.fill_(float("nan")) if out.is_floating_point() else out)(
        real(x, *args, **kwargs)))
    monkeypatch.setattr(active_module, "SPARSE_MIN_QUERIES", 1)  # the active-row flow here
    monkeypatch.setattr(active_module, "SPARSE_ROWS", 1.0)
    forward = active_module._flow_forward
    monkeypatch.setattr(active_module, "_flow_forward",
                        lambda *args, **kwargs: runs.append(1) or forward(*args, **kwargs))
    for ei, et, R, N in (_path_graph(), next(_graphs())):
        graph = RelationalGraph(ei, et, R, N)
        B, T = 5, 3
        p0 = torch.zeros(B, N, dtype=torch.float64)
        p0[0, 0] = 1.0
        p0[1, 2] = 1.0
        p0[2, 0], p0[2, 4] = 0.3, 0.7  # two seeds
        p0[4, N - 1] = 1.0  # an isolated node (the small graph's 6: dangling)
        p0.requires_grad_(seed_grad)  # row 3: no mass at all
        raw = torch.rand(T, B, R, dtype=torch.float64) + 0.1
        raw[0, 0, 0] = 0.0  # a relation switched off: its edges carry nothing
        raw[1, 1] = 0.0  # a query that stands still (or drops all) for a step
        if normalization == "relation":
            raw[1, 1, 1] = 1.0  # rows must be distributions
        raw.requires_grad_()
        a = raw / raw.sum(-1, keepdim=True) if normalization == "relation" else raw
        theta = torch.randn(B, T + 1, dtype=torch.float64, requires_grad=True)
        options = dict(normalization=normalization, dangling=dangling)
        out = relational_flow(p0, graph, a, hop_weights=theta, **options)
        ref = _dense_flow(p0, ei, et, R, N, a, theta, **options)
        torch.testing.assert_close(out, ref)
        g = torch.randn_like(ref)
        inputs = [raw, theta] + ([p0] if seed_grad else [])
        for x, y in zip(torch.autograd.grad((out * g).sum(), inputs, retain_graph=True),
                        torch.autograd.grad((ref * g).sum(), inputs), strict=True):
            torch.testing.assert_close(x, y)
        with torch.no_grad():
            for buffer in steps_module.scratch_buffers(torch.empty(N, B, dtype=torch.float64), 5):
                buffer.fill_(float("nan"))
            torch.testing.assert_close(
                relational_flow(p0, graph, a, hop_weights=theta, **options), ref.detach())
    # the compiled path took the seeds through the active-row flow without autograd, and
    # with it where they need no gradient (the torch paths never)
    assert len(runs) == (0 if backend != "compiled" else 2 if seed_grad else 4)


def test_active_row_flow_takes_large_batches_of_sparse_seeds(monkeypatch):
    """The active-row flow runs for batches of at least SPARSE_MIN_QUERIES seeds on at most
    half of the rows that need no gradient; dense seeds, small batches and seeds that need a
    gradient take the per-step path (its checks cost more than they save there)."""
    if _numba.routines() is None:
        pytest.skip("numba is not installed")
    runs = []
    forward = active_module._flow_forward
    monkeypatch.setattr(active_module, "_flow_forward",
                        lambda *args, **kwargs: runs.append(1) or forward(*args, **kwargs))
    ei, et, R, N = _path_graph()
    graph = RelationalGraph(ei, et, R, N)
    B = active_module.SPARSE_MIN_QUERIES
    one_hot = torch.zeros(B, N)
    one_hot[torch.arange(B), torch.arange(B) % (N // 2)] = 1.0  # half of the rows
    a = torch.rand(2, B, R)
    for p0, grad, expected in ((one_hot, False, 1), (one_hot[:B - 1], False, 0),
                               (torch.softmax(torch.randn(B, N), 1), False, 0),
                               (one_hot, True, 0)):
        runs.clear()
        p0 = p0.clone().requires_grad_(grad)
        out = relational_flow(p0, graph, a[:, :p0.size(0)], alpha=0.8)
        torch.testing.assert_close(out.double(), _dense_flow(
            p0.detach(), ei, et, R, N, a[:, :p0.size(0)], ppr_hop_weights(0.8, 2).double()))
        assert len(runs) == expected


def test_flow_float32_and_return_steps(backend):
    ei, et, R, N = next(_graphs())
    graph = RelationalGraph(ei, et, R, N, edge_weight=torch.rand(ei.size(1)) + 0.1)
    p0 = torch.softmax(torch.randn(3, N), 1)
    a = torch.rand(2, 3, R)
    out, walks = relational_flow(p0, graph, list(a), hop_weights=torch.tensor([0., 0., 1.]),
                                 return_steps=True)
    assert len(walks) == 3 and torch.equal(walks[0], p0)
    torch.testing.assert_close(out, walks[2])
    ref = _dense_flow(p0, ei, et, R, N, a, torch.tensor([0., 1., 0.]), graph.weight)
    torch.testing.assert_close(walks[1].double(), ref, atol=1e-6, rtol=1e-5)
    # a walk keeps its mass: every step is row-stochastic
    torch.testing.assert_close(walks[2].sum(1), torch.ones(3))


def test_same_transition_every_step_equals_diffuse():
    ei, _, _, N = next(_graphs())
    graph = RelationalGraph(ei, torch.zeros(ei.size(1), dtype=torch.long), 1, N)
    p0 = torch.softmax(torch.randn(4, N, dtype=torch.float64), 1)
    # the graph's random walk; the dangling node 6 and isolated node 5 keep their mass
    P = dense_transition(ei, N, add_self_loops=False)
    M = diffuse(torch.eye(N, dtype=torch.float64), P, alpha=0.8, steps=5)
    out = relational_flow(p0, graph, torch.ones(5, 4, 1, dtype=torch.float64), alpha=0.8)
    torch.testing.assert_close(out, p0 @ M)
    # the PPR recursion written out: p_{t+1} = (1 - a) p0 + a p_t P
    p = p0
    for _ in range(5):
        p = 0.2 * p0 + 0.8 * p @ P
    torch.testing.assert_close(out, p)


def test_masked_graph_equals_graph_without_the_edges():
    ei, et, R, N = next(_graphs())
    graph = RelationalGraph(ei, et, R, N)
    drop = torch.tensor([0, 4, 9])
    keep = torch.ones(ei.size(1), dtype=torch.bool)
    keep[drop] = False
    smaller = RelationalGraph(ei[:, keep], et[keep], R, N)
    p0 = torch.softmax(torch.randn(3, N), 1)
    a = torch.rand(3, 3, R)
    torch.testing.assert_close(relational_flow(p0, graph.masked(drop), a),
                               relational_flow(p0, smaller, a))
    # the original is untouched
    torch.testing.assert_close(relational_flow(p0, graph, a),
                               _dense_flow(p0, ei, et, R, N, a, ppr_hop_weights(0.85, 3)).float())


@pytest.mark.parametrize("call, match", [
    (lambda g, p, a: relational_flow(p, g, a[:, :, :2]), "weighs 2 relations but the graph has 3"),
    (lambda g, p, a: relational_flow(p, g, -a), "relation_weights\\[0\\] contains negative"),
    (lambda g, p, a: relational_flow(p, g, a * float("nan")),
     "relation_weights\\[0\\] contains NaN"),
    (lambda g, p, a: relational_flow(p[:, :5], g, a), "p0 must be a tensor \\[B, 7\\]"),
    (lambda g, p, a: relational_flow(p, g, a[:, :2]), "relation_weights\\[0\\] must be \\[B=4"),
    (lambda g, p, a: relational_flow(p, g, a[0]), "relation_weights must be \\[T, B, R\\]"),
    (lambda g, p, a: relational_flow(p, g, a, hop_weights=torch.ones(4)),
     "hop_weights must be \\[T \\+ 1 = 3\\]"),
    (lambda g, p, a: relational_flow(p, g, a, alpha=1.5), "alpha must lie in"),
    (lambda g, p, a: relational_flow(p, g, a, normalization="row"), "normalization must be"),
    (lambda g, p, a: relational_flow(p, g, a, dangling="loop"), "dangling must be"),
    (lambda g, p, a: relational_flow(p, g, a, normalization="relation"),
     "relation_weights\\[0\\] rows must be distributions"),
    (lambda g, p, a: relational_flow(p, "graph", a), "graph must be a RelationalGraph"),
    (lambda g, p, a: RelationalGraph(g.col_in.view(1, -1), g.rel_in, 3), "edge_index must have"),
    (lambda g, p, a: RelationalGraph(torch.tensor([[0], [1]]), torch.tensor([3]), 3),
     "edge_type holds relations in \\[3, 3\\], outside \\[0, 3\\)"),
    (lambda g, p, a: RelationalGraph(torch.tensor([[0], [1]]), torch.tensor([0, 1]), 3),
     "edge_type must be a tensor \\[1\\]"),
    (lambda g, p, a: RelationalGraph(torch.tensor([[0], [1]]), torch.tensor([0]), 0),
     "num_relations must be a positive integer"),
    (lambda g, p, a: RelationalGraph(torch.tensor([[0], [1]]), torch.tensor([0]), 1,
                                     edge_weight=torch.tensor([-1.0])), "negative"),
])
def test_bad_input_is_a_value_error(call, match):
    ei, et, R, N = next(_graphs())
    graph = RelationalGraph(ei, et, R, N)
    with pytest.raises(ValueError, match=match):
        call(graph, torch.softmax(torch.randn(4, N), 1), torch.rand(2, 4, R))


# -- hop weights in diffuse and QGFDConv ------------------------------------------------------

def _powers_sum(P, V, theta):
    out, x = theta[0] * V, V
    for k in range(1, theta.numel()):
        x = P @ x
        out = out + theta[k] * x
    return out


def test_diffuse_hop_weights_values_gradients_and_ppr_start():
    ei = torch.randint(0, 9, (2, 30))
    P = dense_transition(ei, 9)
    V = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    theta = torch.randn(5, dtype=torch.float64, requires_grad=True)
    sparse = P.to_sparse()
    out = diffuse(V, sparse, steps=4, hop_weights=theta)
    ref = _powers_sum(P, V, theta)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    for x, y in zip(torch.autograd.grad((out * g).sum(), [V, theta]),
                    torch.autograd.grad((ref * g).sum(), [V, theta]), strict=True):
        torch.testing.assert_close(x, y)
    # the PageRank weights written out: (1 - a) a^k, and a^T on the last
    torch.testing.assert_close(ppr_hop_weights(0.5, 3), torch.tensor([0.5, 0.25, 0.125, 0.125]))
    torch.testing.assert_close(diffuse(V, sparse, steps=4, hop_weights=ppr_hop_weights(0.6, 4)),
                               diffuse(V, sparse, alpha=0.6, steps=4))


def test_diffuse_list_of_transitions_takes_the_steps_in_order():
    Ps = [dense_transition(torch.randint(0, 6, (2, 14)), 6) for _ in range(3)]
    V = torch.randn(6, 2, dtype=torch.float64)
    theta = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    # p0 Z = sum_k theta_k p0 P_0 .. P_{k-1} V
    ref = theta[0] * V + theta[1] * Ps[0] @ V + theta[2] * Ps[0] @ Ps[1] @ V \
        + theta[3] * Ps[0] @ Ps[1] @ Ps[2] @ V
    torch.testing.assert_close(diffuse(V, [P.to_sparse() for P in Ps], hop_weights=theta), ref)
    torch.testing.assert_close(diffuse(V, [Ps[0]] * 3, alpha=0.7),
                               diffuse(V, Ps[0], alpha=0.7, steps=3))
    with pytest.raises(ValueError, match="empty list"):
        diffuse(V, [])
    with pytest.raises(ValueError, match="differ in size"):
        diffuse(V, [Ps[0], torch.eye(5, dtype=torch.float64)])
    with pytest.raises(ValueError, match="tol"):
        diffuse(V, Ps, tol=1e-3)
    with pytest.raises(ValueError, match="hop_weights must be a tensor \\[steps \\+ 1 = 4\\]"):
        diffuse(V, Ps, hop_weights=torch.ones(3))


@pytest.mark.parametrize("transition", ["graph", "attention"])
def test_conv_learnt_hop_weights(transition):
    x, ei = torch.randn(10, 6), torch.randint(0, 10, (2, 30))
    fixed = QGFDConv(6, 4, heads=2, alpha=0.6, steps=3, transition=transition)
    learnt = QGFDConv(6, 4, heads=2, alpha=0.6, steps=3, transition=transition,
                      learn_hop_weights=True)
    learnt.load_state_dict(fixed.state_dict(), strict=False)
    torch.testing.assert_close(learnt.hop_weights.detach(), ppr_hop_weights(0.6, 3))
    torch.testing.assert_close(learnt(x, ei), fixed(x, ei))  # starts as the PPR layer
    learnt(x, ei).pow(2).sum().backward()
    assert learnt.hop_weights.grad is not None and learnt.hop_weights.grad.abs().sum() > 0
    # only the last hop: the output reads p0 (P^3 V), the dense check
    with torch.no_grad():
        learnt.hop_weights.copy_(torch.tensor([0.0, 0.0, 0.0, 1.0]))
        only_last = QGFDConv(6, 4, heads=2, alpha=1.0, steps=3, transition=transition)
        only_last.load_state_dict(fixed.state_dict())
        torch.testing.assert_close(learnt(x, ei), only_last(x, ei))
    with pytest.raises(ValueError, match="tol=None"):
        QGFDConv(6, 4, learn_hop_weights=True, tol=1e-3)


@pytest.mark.parametrize("rows", [3, 1])  # per query, and shared by every query
def test_many_relations_use_sparse_degrees(monkeypatch, rows):
    monkeypatch.setattr(graph_module, "DENSE_DEGREE_RELATIONS", 2)
    for ei, et, R, N in _graphs():
        graph = RelationalGraph(ei, et, R, N)
        assert graph.degree.is_sparse
        p0 = torch.softmax(torch.randn(3, N, dtype=torch.float64), 1)
        a = torch.rand(2, rows, R, dtype=torch.float64, requires_grad=True)
        out = relational_flow(p0, graph, a)
        ref = _dense_flow(p0, ei, et, R, N, a.expand(2, 3, R), ppr_hop_weights(0.85, 2))
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(torch.autograd.grad(out.sum(), a)[0],
                                   torch.autograd.grad(ref.sum(), a)[0])


@pytest.mark.parametrize("normalization", ["node", "relation"])
@pytest.mark.parametrize("dangling", ["keep", "drop"])
def test_normalizations_and_dangling_mass_against_the_dense_loop(backend, normalization,
                                                                  dangling):
    for ei, et, R, N in _graphs():
        graph = RelationalGraph(ei, et, R, N, edge_weight=torch.rand(ei.size(1)) + 0.5)
        p0 = torch.softmax(torch.randn(4, N, dtype=torch.float64), 1).requires_grad_()
        a = torch.softmax(torch.randn(3, 4, R, dtype=torch.float64), -1)
        a[1, 0] = torch.eye(R, dtype=torch.float64)[0]  # one relation only
        a.requires_grad_()
        out = relational_flow(p0, graph, a, alpha=0.6, normalization=normalization,
                              dangling=dangling)
        ref = _dense_flow(p0, ei, et, R, N, a, ppr_hop_weights(0.6, 3).double(), graph.weight,
                          normalization, dangling)
        torch.testing.assert_close(out, ref)
        g = torch.randn_like(ref)
        for x, y in zip(torch.autograd.grad((out * g).sum(), [p0, a]),
                        torch.autograd.grad((ref * g).sum(), [p0, a]), strict=True):
            torch.testing.assert_close(x, y)
        with torch.no_grad():  # inference: the steps reuse two buffers (numba path)
            torch.testing.assert_close(
                relational_flow(p0, graph, a, alpha=0.6, normalization=normalization,
                                dangling=dangling), ref)
        if dangling == "keep":  # with distributions a_t, every step keeps the mass
            torch.testing.assert_close(out.sum(1), torch.ones(4, dtype=torch.float64))
        else:
            assert bool((out.sum(1) < 1).all())  # the dead ends lose theirs


@pytest.mark.parametrize("normalization", ["node", "relation", "none"])
@pytest.mark.parametrize("dangling", ["keep", "drop"])
def test_weights_shared_by_all_queries_equal_the_dense_loop(backend, normalization, dangling):
    """relation_weights [1, R] at a step: one transition for every query (one sparse
    product); values and gradients as when each query carries the same row, also mixed
    with per-query steps, on a masked graph and with sparse degrees."""
    for ei, et, R, N in _graphs():
        graph = RelationalGraph(ei, et, R, N, edge_weight=torch.rand(ei.size(1)) + 0.5
                                ).masked(torch.tensor([3]))  # edge 3 hidden
        B = 4
        p0 = torch.softmax(torch.randn(B, N, dtype=torch.float64), 1)
        p0[0] = 0.0
        p0[0, 6 if N == 7 else 10] = 1.0  # the dangling / isolated node
        p0.requires_grad_()
        shared = torch.softmax(torch.randn(3, 1, R, dtype=torch.float64), -1)
        shared[1, 0] = torch.eye(R, dtype=torch.float64)[1]  # one relation only
        shared.requires_grad_()
        own = torch.softmax(torch.randn(B, R, dtype=torch.float64), -1).requires_grad_()
        theta = torch.randn(B, 5, dtype=torch.float64, requires_grad=True)
        steps = [shared[0], own, shared[1], shared[2]]  # a per-query step among shared ones
        out = relational_flow(p0, graph, steps, hop_weights=theta,
                              normalization=normalization, dangling=dangling)
        dense_a = torch.stack([s.expand(B, R) for s in steps])
        ref = _dense_flow(p0, ei, et, R, N, dense_a, theta, graph.weight, normalization,
                          dangling)
        torch.testing.assert_close(out, ref)
        g = torch.randn_like(ref)
        inputs = [p0, shared, own, theta]
        for x, y in zip(torch.autograd.grad((out * g).sum(), inputs),
                        torch.autograd.grad((ref * g).sum(), inputs), strict=True):
            torch.testing.assert_close(x, y)
        with torch.no_grad():
            torch.testing.assert_close(
                relational_flow(p0, graph, shared, hop_weights=theta[:, :4],
                                normalization=normalization, dangling=dangling),
                _dense_flow(p0, ei, et, R, N, shared.expand(3, B, R), theta[:, :4],
                            graph.weight, normalization, dangling))



def test_torch_path_bounds_its_pair_temporaries(monkeypatch):
    """The torch path's per-query step never holds a [pairs, B] tensor past its bound: every
    operand of its sparse products has at most max(CHUNK_ELEMENTS, PAIR_MEMORY * N * B)
    elements (here 3 queries' worth of pairs), and the chunked flow equals the dense loop."""
    monkeypatch.setattr(_numba, "usable", lambda *t: False)
    ei, et, R, N = list(_graphs())[1]
    graph = RelationalGraph(ei, et, R, N)
    pairs = graph.pairs.node.numel()
    assert pairs == torch.unique(ei[0] * R + et).numel()  # the (source, relation) pairs
    monkeypatch.setattr(steps_module, "CHUNK_ELEMENTS", 3 * pairs)
    monkeypatch.setattr(steps_module, "PAIR_MEMORY", 0.0)
    seen = []
    real = steps_module.csr_product

    def recording(rowptr, col, value, x, out=None):
        seen.append(tuple(x.shape))
        return real(rowptr, col, value, x, out)
    monkeypatch.setattr(steps_module, "csr_product", recording)
    B, T = 8, 2
    p0 = torch.softmax(torch.randn(B, N, dtype=torch.float64), 1).requires_grad_()
    a = torch.rand(T, B, R, dtype=torch.float64, requires_grad=True)
    theta = ppr_hop_weights(0.8, T).double()
    out = relational_flow(p0, graph, a, alpha=0.8)
    out.backward(torch.ones_like(out))
    assert seen and max(rows * cols for rows, cols in seen) <= 3 * pairs
    assert {cols for _, cols in seen} == {3, 2}  # 8 queries: chunks of 3, 3 and 2
    torch.testing.assert_close(out, _dense_flow(p0, ei, et, R, N, a, theta))


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("normalization", ["node", "relation"])
def test_triton_backend_equals_dense_loop(monkeypatch, normalization, chunked):
    """set_flow_backend("triton"): the per-query product and its gradients from the Triton
    kernels (Triton's interpreter on the CPU), values and gradients against the dense loop;
    chunked: one query per column chunk of the relation weights' pair buffer."""
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.setattr(_numba, "usable", lambda *t: False)
    if chunked:
        monkeypatch.setattr(steps_module, "CHUNK_ELEMENTS", 1)
        monkeypatch.setattr(steps_module, "PAIR_MEMORY", 0.0)
    from qgfd_pyg import set_flow_backend
    from qgfd_pyg.relational import triton_kernels as flow_triton
    calls = []
    for name in ("typed_product", "typed_product_backward"):
        real = getattr(flow_triton, name)
        monkeypatch.setattr(flow_triton, name,
                            lambda *args, real=real, name=name: calls.append(name) or real(*args))
    set_flow_backend("triton")
    try:
        for ei, et, R, N in _graphs():
            B, T = 3, 2
            graph = RelationalGraph(ei.to(device), et.to(device), R, N)
            p0 = torch.softmax(torch.randn(B, N, dtype=torch.float64), 1).requires_grad_()
            a = torch.rand(T, B, R, dtype=torch.float64)
            a[-1, 2, 0] = 0.0
            if normalization == "relation":
                a = a / a.sum(-1, keepdim=True)
            a.requires_grad_()
            theta = torch.randn(B, T + 1, dtype=torch.float64, requires_grad=True)
            out = relational_flow(p0.to(device), graph, a.to(device), hop_weights=theta.to(device),
                                  normalization=normalization).cpu()
            ref = _dense_flow(p0, ei, et, R, N, a, theta, normalization=normalization)
            torch.testing.assert_close(out, ref)
            g = torch.randn_like(ref)
            got = torch.autograd.grad((out * g).sum(), [p0, a, theta])
            want = torch.autograd.grad((ref * g).sum(), [p0, a, theta])
            for x, y in zip(got, want, strict=True):
                torch.testing.assert_close(x, y)
        assert set(calls) == {"typed_product", "typed_product_backward"}  # the kernels ran
    finally:
        set_flow_backend("torch")


def test_set_flow_backend_checks_its_argument():
    from qgfd_pyg import set_flow_backend
    with pytest.raises(ValueError, match="backend"):
        set_flow_backend("cuda")


@pytest.mark.parametrize("normalization", ["node", "relation", "none"])
@pytest.mark.parametrize("dangling", ["keep", "drop"])
def test_traced_step_is_the_eager_step(normalization, dangling):
    """The torch.compile form of a step (gathers and index_add over the edges) against the
    eager step (numba's or the CSR path), forward and gradients; the graph has nodes without
    out-edges and relations a node lacks, so both dangling rules act."""
    from qgfd_pyg.relational.steps import relational_step, traced_step

    torch.manual_seed(0)
    N, R, B = 12, 3, 4
    edge_index = torch.randint(0, 8, (2, 30))  # nodes 8..11 have no edges
    graph = RelationalGraph(edge_index, torch.randint(0, R, (30,)), R, N,
                            edge_weight=torch.rand(30) + 0.5)
    x = torch.rand(N, B, requires_grad=True)
    a = torch.rand(R, B)
    if normalization == "relation":
        a = a / a.sum(0, keepdim=True)
    a.requires_grad_(True)
    got = traced_step(graph, x, a, normalization, dangling)
    grads = torch.autograd.grad(got.square().sum(), (x, a))
    want = relational_step(graph, x, a, normalization, dangling)
    torch.testing.assert_close(got, want)
    for g, w in zip(grads, torch.autograd.grad(want.square().sum(), (x, a)), strict=True):
        torch.testing.assert_close(g, w)
