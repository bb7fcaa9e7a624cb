"""Plain dense reference implementations (the original p-form), for checking the Z-form."""
import math

import torch


def dense_transition(edge_index, num_nodes, edge_weight=None, add_self_loops=True):
    """D^-1 A with A[i, j] = weight of edge (i, j), built with dense matrices."""
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
    deg = A.sum(1)
    dangling = deg == 0
    A[dangling, dangling] = 1.0
    return A / A.sum(1, keepdim=True)


def pform(p0, P, alpha, steps):
    """p_T from p_{t+1} = (1 - alpha) p0 + alpha p_t P, iterated as dense matrices."""
    p = p0
    for _ in range(steps):
        p = (1 - alpha) * p0 + alpha * p @ P
    return p


def kernel_matrix(P, theta, tail_T):
    """M = sum_k theta_k P^k + tail P^T, so that p_T = p0 M for a general kernel."""
    n = P.size(0)
    M = torch.zeros_like(P)
    power = torch.eye(n, dtype=P.dtype)
    for th in theta:
        M = M + th * power
        power = power @ P
    return M + tail_T * power


def pform_conv(conv, x, attn_index, P_per_head):
    """QGFDConv's output computed the slow way: dense p0 per head, p_t iterated, p_T V."""
    N, H, C = x.size(0), conv.heads, conv.out_channels
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
        pT = pform(p0, P_per_head[h].double(), conv.alpha, conv.steps)
        outs.append(pT @ v[:, h])
    out = torch.stack(outs, dim=1)
    out = out.reshape(N, H * C) if conv.concat else out.mean(1)
    if conv.bias is not None:
        out = out + conv.bias.double()
    return out


def random_transition(n=20, e=60):
    """The graph transition of ``e`` random directed edges among ``n`` nodes."""
    from qgfd_pyg import graph_transition
    return graph_transition(torch.randint(0, n, (2, e)), n)
