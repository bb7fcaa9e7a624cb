r"""Sparse-dense products :math:`\mathbf{P} \mathbf{X}` and :math:`\mathbf{P}^\top \mathbf{X}`
for the diffusion loop, with what does not change between steps cached on the transition.

Backends (:func:`set_spmm_backend`):

- ``"auto"`` (default): ``"numba"`` for CPU float32/float64 values when numba is installed
  (``pip install qgfd-pyg[fast]``), else ``"torch"``.
- ``"numba"``: a row-parallel CSR product compiled once with numba (CPU only).
- ``"torch"``: torch's own CSR product (MKL on CPU, cuSPARSE on GPU).
- ``"torch_sparse"``: ``torch_sparse.matmul``.

A SparseTensor transition keeps its CSR form and, once a backward pass asks for it, the CSR
form of :math:`\mathbf{P}^\top` as attributes, so neither is rebuilt per step or per call; both
are rebuilt when the entries change in place (``set_value_``, ``storage.value().mul_(...)``).
Products whose transition values need gradients (kNN over trainable keys) always go through
``torch_sparse.matmul``, which differentiates w.r.t. them.
"""
import threading
import warnings
from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.typing import WITH_TORCH_SPARSE, SparseTensor

from . import _numba
from .checks import check_choice

if WITH_TORCH_SPARSE:  # a SparseTensor transition exists only where torch-sparse does
    from torch_sparse import SparseStorage
    from torch_sparse import matmul as sparse_matmul



class EdgeListTransition:
    """A ``[size, size]`` transition held as its entries ``(row, col, value)`` (duplicates add
    up): the form ``torch.compile`` traces. Its product is one gather and one ``index_add``,
    differentiable in ``value`` and in the dense factor; the layers build it in place of a
    SparseTensor while being compiled (:func:`sparse_matrix`)."""

    def __init__(self, row: Tensor, col: Tensor, value: Tensor, size: int):
        self.row, self.col, self.value, self.size = row, col, value, size

    def matmul(self, x: Tensor, transpose: bool = False) -> Tensor:
        """``P @ x`` (``P^T @ x`` with ``transpose``) for ``x`` ``[size, d]``."""
        row, col = (self.col, self.row) if transpose else (self.row, self.col)
        return x.new_zeros(self.size, x.size(1)).index_add(
            0, row, self.value.to(x.dtype).unsqueeze(-1) * x[col])


Transition = Union[SparseTensor, Tensor, EdgeListTransition]
SPMM_BACKENDS = ("auto", "numba", "torch", "torch_sparse")
_backend = {"name": "auto"}


def set_spmm_backend(name: str) -> None:
    """Chooses how :func:`qgfd_pyg.diffuse` multiplies by a sparse transition.

    Args:
        name (str): ``"auto"`` (the starting choice: numba's routine on the CPU where numba
            is installed, torch's CSR product elsewhere), ``"numba"``, ``"torch"`` or
            ``"torch_sparse"`` (timings in ``benchmarks/results/perf_spmm.md``).
    """
    name = check_choice("backend", name, SPMM_BACKENDS)
    if name == "torch_sparse" and not WITH_TORCH_SPARSE:
        raise ValueError("backend 'torch_sparse' needs the torch-sparse package")
    if name == "numba" and _numba.routines() is None:
        raise ValueError("backend 'numba' needs the numba package (pip install qgfd-pyg[fast])")
    _backend["name"] = name


def get_spmm_backend() -> str:
    """The backend :func:`set_spmm_backend` chose (``"auto"`` until it is called)."""
    return _backend["name"]


def _numba_spmm(csr: Tuple[Tensor, Tensor, Tensor], x: Tensor,
                out: Optional[Tensor] = None) -> Tensor:
    rowptr, col, value = csr
    x = x.contiguous()
    shape = (rowptr.numel() - 1, x.size(1))
    if out is None or tuple(out.shape) != shape or out.dtype != x.dtype \
            or not out.is_contiguous():
        out = torch.empty(shape, dtype=x.dtype)
    if out.numel():
        _numba.set_threads()
        _numba.routines().csr_spmm(rowptr.numpy(), col.numpy(), value.to(x.dtype).numpy(),
                                  x.numpy(), out.numpy())
    return out


def csr_product(rowptr: Tensor, col: Tensor, value: Tensor, x: Tensor,
                out: Optional[Tensor] = None) -> Tensor:
    """``M @ x`` for the CSR matrix ``M`` given by ``(rowptr, col, value)`` (``x.size(0)``
    columns) and ``x`` ``[N, d]``: numba's routine where the backend allows it and ``x`` is a
    CPU float tensor without autograd (``out`` as for :func:`spmm`), else torch's CSR product
    (differentiable in ``x``, not in the entries)."""
    if _backend["name"] in ("auto", "numba") and _numba.usable(x):
        return _numba_spmm((rowptr, col, value.detach()), x, out)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_csr_tensor(rowptr, col, value.detach().to(x.dtype),
                                         (rowptr.numel() - 1, x.size(0)),
                                         check_invariants=False)
    return torch.sparse.mm(matrix, x)


def _csr(transition: SparseTensor, transpose: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(rowptr, col, value) of ``P`` or ``P^T``, built once and kept on the transition until
    its entries change: ``set_value_`` swaps the value tensor, an in-place op (``mul_``) bumps
    its version counter; either makes the cached form stale."""
    name = "_qgfd_csr_t" if transpose else "_qgfd_csr"
    value = transition.storage.value()
    version = None if value is None else value._version
    cached = getattr(transition, name, None)
    if cached is not None and cached[0] is value and cached[1] == version:
        return cached[2]
    rowptr, col, csr_value = (transition.t() if transpose else transition).csr()
    if csr_value is None:
        csr_value = torch.ones(col.numel(), device=col.device)
    csr = (rowptr, col, csr_value.detach())
    setattr(transition, name, (value, version, csr))  # holding value keeps its id unique
    return csr


def _torch_sparse_csr(transition: Tensor, transpose: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(rowptr, col, value) of a torch sparse ``P`` (COO, CSR or CSC) or of ``P^T``, built once
    and kept on the tensor until its values change in place (their version counter moves):
    the steps of a diffusion, and of its backward pass over ``P^T``, then never coalesce or
    convert again."""
    values = transition._values() if transition.layout == torch.sparse_coo \
        else transition.values()
    name = "_qgfd_csr_t" if transpose else "_qgfd_csr"
    cached = getattr(transition, name, None)
    if cached is not None and cached[0] == values._version:
        return cached[1]
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        if transpose:  # the CSC form of P is the CSR form of P^T
            csc = transition.to_sparse_csc()
            csr = (csc.ccol_indices(), csc.row_indices(), csc.values().detach())
        else:
            m = transition.to_sparse_csr()
            csr = (m.crow_indices(), m.col_indices(), m.values().detach())
    setattr(transition, name, (values._version, csr))
    return csr


def sparse_matrix(row: Tensor, col: Tensor, value: Tensor, size: int,
                  is_sorted: bool = False, rowptr: Optional[Tensor] = None,
                  csr2csc: Optional[Tensor] = None) -> Transition:
    """The ``[size, size]`` matrix holding ``value`` at ``(row, col)`` (duplicates add up):
    a :class:`torch_sparse.SparseTensor` where torch-sparse is installed, else a coalesced
    torch sparse COO tensor (half-precision values widened to float32). Both differentiate
    w.r.t. ``value`` through :func:`spmm`.
    ``is_sorted``: the entries are unique and sorted by row, then column (trusted), and then
    ``rowptr`` (the row offsets) and ``csr2csc`` (the permutation that sorts them by column,
    then row) may come along, so that neither is computed again. Under ``torch.compile`` an
    :class:`EdgeListTransition` (what the compiler can trace)."""
    if torch.compiler.is_compiling():
        return EdgeListTransition(row, col, value, size)
    if WITH_TORCH_SPARSE:
        if not is_sorted:
            return SparseTensor(row=row, col=col, value=value, sparse_sizes=(size, size))
        storage = SparseStorage(row=row, rowptr=rowptr, col=col, value=value,
                                sparse_sizes=(size, size), csr2csc=csr2csc, is_sorted=True,
                                trust_data=True)
        return SparseTensor.from_storage(storage)
    if value.dtype in (torch.float16, torch.bfloat16):  # torch's sparse kernels lack half
        value = value.float()  # precision on the CPU; the diffusion runs in float32 anyway
    out = torch.sparse_coo_tensor(torch.stack([row, col]), value, (size, size),
                                  check_invariants=False, is_coalesced=is_sorted)
    return out if is_sorted else out.coalesce()


def needs_value_grad(transition: Transition) -> bool:
    """Whether the transition's own entries require gradients."""
    if isinstance(transition, EdgeListTransition):
        return transition.value.requires_grad
    if isinstance(transition, SparseTensor):
        value = transition.storage.value()
        return value is not None and value.requires_grad
    return transition.requires_grad


def _gather_spmm(transition: Tensor, x: Tensor, transpose: bool) -> Tensor:
    """``P @ x`` for a torch sparse ``P`` whose entries need gradients, one gather and one
    scatter over the entries: autograd then keeps ``[nnz, d]`` products, where the backward
    of ``torch.sparse.mm`` w.r.t. the entries builds a dense ``[N, N]`` matrix."""
    coo = transition if transition.layout == torch.sparse_coo else transition.to_sparse_coo()
    coo = coo.coalesce()
    row, col = coo.indices()
    if transpose:
        row, col = col, row
    messages = coo.values().to(x.dtype).unsqueeze(-1) * x[col]
    return x.new_zeros(transition.size(1 if transpose else 0), x.size(1)).index_add(
        0, row, messages)


SCRATCH_BYTES = 2**28  # largest iterate buffer fused_diffusion keeps between calls
_scratch = threading.local()


def scratch_buffers(x: Tensor, count: int = 2) -> Tuple[Tensor, ...]:
    """``count`` ``[N, d]`` buffers like ``x`` that nothing keeps past a call (the iterates of
    :func:`fused_diffusion`, a flow step's normaliser and walks), kept between calls (per
    thread, the largest size so far, up to :data:`SCRATCH_BYTES` each): fresh memory costs
    its page faults, more than the products themselves for a few diffusion steps at 10^5
    nodes (two products of 181,000 x 64 took 66 ms into fresh buffers, 9 ms each into reused
    ones). Larger iterates get fresh buffers every call."""
    if x.numel() * x.element_size() > SCRATCH_BYTES:
        return tuple(torch.empty_like(x) for _ in range(count))
    pool = getattr(_scratch, "pool", ())
    if len(pool) < count or pool[0].dtype != x.dtype or pool[0].numel() < x.numel():
        size = max([x.numel()] + [b.numel() for b in pool if b.dtype == x.dtype])
        pool = tuple(torch.empty(size, dtype=x.dtype) for _ in range(max(count, len(pool))))
        _scratch.pool = pool
    return tuple(buffer[:x.numel()].view(x.shape) for buffer in pool[:count])


def fused_diffusion(transition: Transition, x: Tensor, theta, last: float, steps: int,
                    transpose: bool = False) -> Optional[Tensor]:
    """``sum_{t < steps} theta[t] P^t x + last P^steps x`` (``P^T`` with ``transpose``) in one
    compiled routine that adds each step's share in the pass that multiplies, or ``None``
    where that routine does not apply (no numba, another backend, a non-CPU / non-float
    ``x``, a dense ``P`` or one whose entries need gradients). Runs outside autograd (the
    caller's autograd function differentiates it)."""
    if isinstance(transition, EdgeListTransition):
        return None
    x = x.detach()
    if _backend["name"] not in ("auto", "numba") or not _numba.usable(x) \
            or x.dim() != 2 or needs_value_grad(transition):
        return None
    if isinstance(transition, SparseTensor):
        csr = _csr(transition, transpose)
    elif isinstance(transition, Tensor) and transition.layout != torch.strided:
        csr = _torch_sparse_csr(transition, transpose)
    else:
        return None
    rowptr, col, value = csr
    x = x.contiguous()
    (a, b), acc = scratch_buffers(x), torch.empty_like(x)
    _numba.set_threads()
    _numba.routines().csr_diffuse(rowptr.numpy(), col.numpy(), value.to(x.dtype).numpy(),
                                  x.numpy(), torch.tensor(theta, dtype=x.dtype).numpy(),
                                  float(last), int(steps), a.numpy(), b.numpy(), acc.numpy())
    return acc


def spmm(transition: Transition, x: Tensor, transpose: bool = False,
         out: Optional[Tensor] = None) -> Tensor:
    """``P @ x`` (or ``P^T @ x``) for a SparseTensor, torch sparse or dense ``[N, N]`` ``P``
    and ``x`` of shape ``[N, d]`` (or a dense batch: ``P`` ``[B, N, N]``, ``x``
    ``[B, N, d]``). ``out``, a spare ``[N, d]`` tensor that nothing else uses, may be written
    and returned instead of a new tensor (the numba routine does: a fresh output costs its
    page faults, about a fifth of a product at 10^6 nodes)."""
    if isinstance(transition, EdgeListTransition):
        return transition.matmul(x, transpose)
    if x.size(-1) == 0:  # torch_sparse divides by the width
        return x.new_zeros(x.shape)
    if isinstance(transition, SparseTensor):
        backend = _backend["name"]
        if backend == "torch_sparse" or needs_value_grad(transition):
            return sparse_matmul(transition.t() if transpose else transition, x)
        return csr_product(*_csr(transition, transpose), x, out)
    if transition.layout != torch.strided:
        if transition.requires_grad:
            return _gather_spmm(transition, x, transpose)
        return csr_product(*_torch_sparse_csr(transition, transpose), x, out)
    return (transition.mT if transpose else transition) @ x
