"""What autograd keeps for the backward pass: the measure behind the memory tests."""
import torch


def stored_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds: its elements, or a sparse tensor's entries and indices."""
    if t.layout == torch.sparse_coo:
        return stored_bytes(t._values()) + stored_bytes(t._indices())
    if t.layout == torch.sparse_csr:
        return sum(stored_bytes(p) for p in (t.values(), t.crow_indices(), t.col_indices()))
    return t.numel() * t.element_size()


def saved_bytes(fn):
    """Bytes of the tensors autograd saves for the backward pass while ``fn`` runs, and what
    ``fn`` returned."""
    saved = []

    def pack(t):
        saved.append(stored_bytes(t))
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(saved), out
