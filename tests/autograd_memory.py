"""What autograd keeps for the backward pass: the measure behind the memory tests."""
import torch


def saved_bytes(fn):
    """Bytes of the tensors autograd saves for the backward pass while ``fn`` runs, and what
    ``fn`` returned."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(saved), out
