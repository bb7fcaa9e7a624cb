r"""The dense p-form of QGFD, written the slow and obvious way: the reference that the tests
check the Z-form against and that the performance scripts time.

Nothing here calls :func:`qgfd_pyg.diffuse`: the seed distribution is a dense matrix and is
iterated as :math:`p_{t+1} = (1-\alpha) p_0 + \alpha p_t \mathbf{P}`, so its results are an
independent computation of what the package computes in the Z-form. Costs
:math:`O(T L_q N^2)` time and :math:`O(L_q N)` memory per head: for small inputs only.
"""
import math
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.typing import SparseTensor


def dense_transition(edge_index: Tensor, num_nodes: int, edge_weight: Optional[Tensor] = None,
                     add_self_loops: bool = True) -> Tensor:
    """``D^-1 A`` with ``A[i, j]`` = summed weight of the edges ``(i, j)``, as a dense float64
    matrix; a unit self-loop on every node without one (``add_self_loops``) and on every row
    without out-weight."""
    A = torch.zeros(num_nodes, num_nodes, dtype=torch.float64)
    w = torch.ones(edge_index.size(1), dtype=torch.float64) if edge_weight is None \
        else edge_weight.double()
    A.index_put_((edge_index[0], edge_index[1]), w, accumulate=True)
    if add_self_loops:
        has_loop = torch.zeros(num_nodes, dtype=torch.bool)
        loops = edge_index[0] == edge_index[1]
        has_loop[edge_index[0, loops]] = True
        idx = (~has_loop).nonzero().view(-1)
        A[idx, idx] += 1.0
    dangling = A.sum(1) == 0
    A[dangling, dangling] = 1.0
    return A / A.sum(1, keepdim=True)


def pform(p0: Tensor, P, alpha: float, steps: int) -> Tensor:
    """:math:`p_T` from :math:`p_{t+1} = (1-\\alpha) p_0 + \\alpha p_t P`. ``p0`` is
    ``[..., Lq, N]``; ``P`` a dense ``[..., N, N]`` matrix (broadcast against ``p0``) or a
    SparseTensor ``[N, N]``, in which case each step runs as the sparse product
    :math:`(P^\\top p_t^\\top)^\\top` (the cheapest way this form allows)."""
    if isinstance(P, SparseTensor):
        N = P.size(0)
        Pt = P.t().to_torch_sparse_csr_tensor().to(p0.dtype)

        def times_P(p: Tensor) -> Tensor:
            return (Pt @ p.reshape(-1, N).T).T.reshape(p.shape)
    else:
        def times_P(p: Tensor) -> Tensor:
            return p @ P.to(p.dtype)
    p = p0
    for _ in range(steps):
        p = (1 - alpha) * p0 + alpha * times_P(p)
    return p


def steps_until(values: Tensor, P: Tensor, alpha: float, steps: int, tol: float) -> int:
    """The step count at which QGFD's early stop ends: iterates
    :math:`Z_{t+1} = (1-\\alpha) V + \\alpha P Z_t` densely (``values`` ``[..., N, d]``,
    ``P`` ``[..., N, N]``) until :math:`\\max |Z_{t+1} - Z_t| <` ``tol`` over all of them."""
    V = values.double()
    P = P.double()
    Z = V
    for t in range(steps):
        Z_next = (1 - alpha) * V + alpha * P @ Z
        if float((Z_next - Z).abs().max()) < tol:
            return t + 1
        Z = Z_next
    return steps


def heat_coefficients(steps: int, time: float) -> Tuple[List[float], float]:
    """:math:`\\theta_k = e^{-s} s^k / k!` for ``k < steps`` and the tail weight
    :math:`1 - \\sum_k \\theta_k` that the truncated kernel puts on :math:`P^T`."""
    theta = [math.exp(-time) * time**k / math.factorial(k) for k in range(steps)]
    return theta, 1.0 - sum(theta)


def kernel_matrix(P: Tensor, theta: List[float], tail: float) -> Tensor:
    """:math:`M = \\sum_k \\theta_k P^k + \\text{tail}\\, P^T`, so that :math:`p_T = p_0 M` for a
    general diffusion kernel."""
    M = torch.zeros_like(P)
    power = torch.eye(P.size(0), dtype=P.dtype)
    for th in theta:
        M = M + th * power
        power = power @ P
    return M + tail * power


def pform_conv(conv, x: Tensor, attn_index: Tensor, P_per_head: Union[List[Tensor], str],
               steps: Optional[int] = None) -> Tensor:
    """A dot-product :class:`qgfd_pyg.QGFDConv`'s output the slow way: dense :math:`p_0` per
    head over ``attn_index`` (source, target), :math:`p_t` iterated over that head's dense
    ``P`` for ``steps`` (default ``conv.steps``), then :math:`p_T V`, concat/mean and bias.
    ``P_per_head="attention"`` iterates over each head's own dense :math:`p_0`."""
    N, H, C = x.size(0), conv.heads, conv.out_channels
    steps = conv.steps if steps is None else steps
    q = conv.lin_query(x).view(N, H, C).double()
    k = conv.lin_key(x).view(N, H, C).double()
    v = conv.lin_value(x).view(N, H, C).double()
    allowed = torch.zeros(N, N, dtype=torch.bool)
    allowed[attn_index[1], attn_index[0]] = True  # query i (target) may attend to key j (source)
    outs = []
    for h in range(H):
        scores = q[:, h] @ k[:, h].T / math.sqrt(C)
        scores = scores.masked_fill(~allowed, float("-inf"))
        p0 = torch.softmax(scores, dim=1).nan_to_num(0.0)  # rows without edges: no attention
        P = p0 if P_per_head == "attention" else P_per_head[h].double()
        pT = pform(p0, P, conv.alpha, steps)
        outs.append(pT @ v[:, h])
    out = torch.stack(outs, dim=1)
    out = out.reshape(N, H * C) if conv.concat else out.mean(1)
    if conv.bias is not None:
        out = out + conv.bias.double()
    return out


def random_transition(n: int = 20, e: int = 60):
    """The graph transition of ``e`` random directed edges among ``n`` nodes (a test input)."""
    from .transition import graph_transition
    return graph_transition(torch.randint(0, n, (2, e)), n)
