r"""The per-query typed product of :func:`qgfd_pyg.relational_flow` in two Triton kernels:
no ``[pairs, B]`` or ``[edges, B]`` operand passes through memory, each source row is read
once per edge.

Forward, one program per target node ``j`` and block of queries:
:math:`y_{j b} = \sum_{e: i \to j} w_e\, a_{r_e b}\, x_{i b}`. Backward, one program per
source node ``i`` and block of queries: for each of its (source, relation) pairs ``p`` the
pair's gradient :math:`s_{p b} = \sum_{e \in p} w_e\, g_{j_e b}`, summed into
:math:`\partial x_{i b} = \sum_p a_{r_p b}\, s_{p b}` and stored as
:math:`s_{p b}\, x_{i b}`, which a CSR product sums per relation into :math:`\partial a`
(queries in column chunks, so that this buffer keeps the torch path's bound). Imported
lazily (Triton is optional) when :func:`qgfd_pyg.set_flow_backend` asks for
``"triton"``; CUDA tensors, or CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``,
how the tests run it).
"""
from typing import List, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _rows_kernel(ROWPTR, COL, REL, W, A, X, OUT, B, BLOCK_B: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    inside = cols < B
    acc = tl.zeros([BLOCK_B], dtype=OUT.dtype.element_ty)
    for e in range(tl.load(ROWPTR + row), tl.load(ROWPTR + row + 1)):
        source = tl.load(COL + e)
        weight = tl.load(W + e) * tl.load(A + tl.load(REL + e) * B + cols, mask=inside,
                                          other=0.0)
        acc += weight * tl.load(X + source * B + cols, mask=inside, other=0.0)
    tl.store(OUT + row * B + cols, acc, mask=inside)


@triton.jit
def _pairs_backward_kernel(NODE_PTR, PAIR_REL, EDGE_PTR, COL, W, A, X, G, GRAD_X, PART, B,
                           START, WIDTH, BLOCK_B: tl.constexpr):
    node = tl.program_id(0).to(tl.int64)
    lanes = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)  # within the chunk
    cols = START + lanes
    inside = lanes < WIDTH
    x = tl.load(X + node * B + cols, mask=inside, other=0.0)
    grad = tl.zeros([BLOCK_B], dtype=GRAD_X.dtype.element_ty)
    for p in range(tl.load(NODE_PTR + node), tl.load(NODE_PTR + node + 1)):
        pair = tl.zeros([BLOCK_B], dtype=GRAD_X.dtype.element_ty)
        for e in range(tl.load(EDGE_PTR + p), tl.load(EDGE_PTR + p + 1)):
            pair += tl.load(W + e) * tl.load(G + tl.load(COL + e) * B + cols, mask=inside,
                                             other=0.0)
        grad += tl.load(A + tl.load(PAIR_REL + p) * B + cols, mask=inside, other=0.0) * pair
        tl.store(PART + p * WIDTH + lanes, pair * x, mask=inside)
    tl.store(GRAD_X + node * B + cols, grad, mask=inside)


def _block(width: int, device: torch.device) -> int:
    return min(128 if device.type == "cuda" else 32, triton.next_power_of_2(max(1, width)))


def typed_product(rowptr: Tensor, col: Tensor, rel: Tensor, weight: Tensor, a: Tensor,
                  x: Tensor) -> Tensor:
    """``y[j, b] = sum_{e: i -> j} w_e a[r_e, b] x[i, b]`` over the edges in CSR order by
    target (``rowptr``, sources ``col``, relations ``rel``, weights ``weight``), for
    contiguous ``x`` ``[N, B]`` and ``a`` ``[R, B]`` of one dtype."""
    out = torch.empty(rowptr.numel() - 1, x.size(1), dtype=x.dtype, device=x.device)
    if out.numel():
        block = _block(x.size(1), x.device)
        _rows_kernel[(out.size(0), triton.cdiv(x.size(1), block))](
            rowptr, col, rel, weight.to(x.dtype), a, x, out, x.size(1), BLOCK_B=block)
    return out


def typed_product_backward(pairs, col: Tensor, weight: Tensor, a: Tensor, x: Tensor,
                           grad: Tensor, chunks: List[slice]) -> Tuple[Tensor, List[Tensor]]:
    """The gradient w.r.t. ``x`` ``[N, B]`` and, per column chunk, the pairs' parts
    ``[P, columns]`` whose sums per relation give the gradient w.r.t. ``a``; ``col`` and
    ``weight`` are the edges' targets and weights in the by-source order (a pair's edges
    consecutive), ``pairs`` the graph's :class:`~qgfd_pyg.relational.graph._Pairs`."""
    grad_x = torch.empty_like(x)
    parts = []
    for cols in chunks:
        start, stop = cols.start, min(cols.stop, x.size(1))
        part = x.new_empty(pairs.node.numel(), stop - start)
        if x.size(0) and part.size(1):
            block = _block(part.size(1), x.device)
            _pairs_backward_kernel[(x.size(0), triton.cdiv(part.size(1), block))](
                pairs.node_ptr, pairs.rel, pairs.edge_ptr, col, weight.to(x.dtype), a, x,
                grad, grad_x, part, x.size(1), start, part.size(1), BLOCK_B=block)
        parts.append(part)
    return grad_x, parts
