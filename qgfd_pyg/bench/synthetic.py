"""Synthetic graphs for the performance scripts, the examples and the tests."""
import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data


def random_graph(n: int, edges: int, seed: int = 0) -> Tensor:
    """Random undirected graph with ~``edges`` directed edges (both directions of each pair)."""
    g = torch.Generator().manual_seed(seed)
    pairs = torch.randint(0, n, (2, edges // 2), generator=g)
    pairs = pairs[:, pairs[0] != pairs[1]]
    return torch.cat([pairs, pairs.flip(0)], dim=1)


def homophilous_graph(num_nodes: int = 400, num_classes: int = 4, features: int = 16,
                      seed: int = 0):
    """A homophilous random graph (80% of edges join nodes of one class) with noisy
    class-dependent features and a 50/25/25 split: ``(Data, num_classes)``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (num_nodes,), generator=g)
    x = torch.randn(num_nodes, features, generator=g) + 1.5 * F.one_hot(y, features)
    src = torch.randint(0, num_nodes, (4 * num_nodes,), generator=g)
    same = torch.stack([torch.nonzero(y == y[s]).view(-1)[
        torch.randint(0, int((y == y[s]).sum()), (1,), generator=g)] for s in src]).view(-1)
    other = torch.randint(0, num_nodes, (4 * num_nodes,), generator=g)
    dst = torch.where(torch.rand(4 * num_nodes, generator=g) < 0.8, same, other)
    edge_index = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1)
    order = torch.randperm(num_nodes, generator=g)
    masks = [torch.zeros(num_nodes, dtype=torch.bool) for _ in range(3)]
    for mask, part in zip(masks, order.tensor_split([num_nodes // 2, 3 * num_nodes // 4]),
                          strict=True):
        mask[part] = True
    return Data(x=x, y=y, edge_index=edge_index, train_mask=masks[0], val_mask=masks[1],
                test_mask=masks[2]), num_classes
