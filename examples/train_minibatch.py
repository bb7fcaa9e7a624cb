"""Mini-batch (and multi-process) training of a QGFD model with PyG's NeighborLoader.

One QGFDConv with ``steps`` diffusion steps reads ``steps + 1`` hops, so the loader samples
``steps + 1`` hops of neighbours per seed node (``--fanout -1`` takes them all, which makes the
mini-batch outputs equal to full-graph ones). The same script runs

    python examples/train_minibatch.py --dataset cora                       # one process
    torchrun --standalone --nproc_per_node 2 examples/train_minibatch.py    # 2 processes, DDP
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_endpoint HOST:PORT ...    # a cluster

With more than one process (WORLD_SIZE > 1, as torchrun sets it) it joins a torch.distributed
process group (gloo on CPU, nccl on GPUs), gives every rank its share of the training nodes, and
wraps the model in DistributedDataParallel (uneven shares are handled by DDP's join). Rank 0
evaluates and can write a JSON summary (--out).
"""
import argparse
import contextlib
import gc
import json
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.algorithms.join import Join
from torch.nn.parallel import DistributedDataParallel
from torch_geometric.loader import NeighborLoader

from qgfd_pyg import QGFDConv
from qgfd_pyg.bench.synthetic import homophilous_graph


class Net(torch.nn.Module):
    def __init__(self, in_channels, hidden, num_classes, heads, alpha, steps, dropout=0.5):
        super().__init__()
        self.dropout = dropout
        self.lin = torch.nn.Linear(in_channels, hidden)
        self.conv = QGFDConv(hidden, num_classes, heads=heads, concat=False, alpha=alpha,
                             steps=steps)

    def forward(self, x, edge_index):
        x = F.dropout(x, self.dropout, self.training)
        x = F.dropout(F.relu(self.lin(x)), self.dropout, self.training)
        return self.conv(x, edge_index)


def load(name, root):
    if name == "synthetic":
        return homophilous_graph()
    from torch_geometric.datasets import Planetoid
    dataset = Planetoid(root, {"cora": "Cora", "citeseer": "CiteSeer"}[name])
    return dataset[0], dataset.num_classes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synthetic", choices=["synthetic", "cora",
                                                                    "citeseer"])
    parser.add_argument("--root", default="datasets")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--fanout", type=int, default=10, help="neighbours per hop (-1: all)")
    parser.add_argument("--alpha", type=float, default=0.85)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="rank 0 writes a JSON summary here")
    args = parser.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) \
        if torch.cuda.is_available() else torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(args.seed)  # same initial weights on every rank

    data, num_classes = load(args.dataset, args.root)
    train_nodes = data.train_mask.nonzero().view(-1).tensor_split(world)[rank]
    loader = NeighborLoader(data, num_neighbors=[args.fanout] * (args.steps + 1),
                            input_nodes=train_nodes, batch_size=args.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(args.seed + rank))
    model = Net(data.num_features, args.hidden, num_classes, args.heads, args.alpha,
                args.steps).to(device)
    if world > 1:
        model = DistributedDataParallel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=5e-4)

    losses = []
    for _ in range(args.epochs):
        model.train()
        total, count = 0.0, 0
        with Join([model]) if world > 1 else contextlib.nullcontext():
            for batch in loader:
                batch = batch.to(device)
                optimizer.zero_grad()
                out = model(batch.x, batch.edge_index)[:batch.batch_size]
                loss = F.cross_entropy(out, batch.y[:batch.batch_size])
                loss.backward()
                optimizer.step()
                total, count = total + float(loss) * batch.batch_size, count + batch.batch_size
        losses.append(total / max(count, 1))

    core = model.module if world > 1 else model
    checksum = torch.tensor([sum(float(p.double().sum()) for p in core.parameters())])
    checksums = [checksum.clone() for _ in range(world)]
    if world > 1:
        dist.all_gather(checksums, checksum)
    if rank == 0:
        core.eval()
        with torch.no_grad():  # small graphs: full-graph inference
            pred = core(data.x.to(device), data.edge_index.to(device)).argmax(-1).cpu()
        summary = {"world_size": world, "losses": losses,
                   "val_acc": float((pred == data.y)[data.val_mask].float().mean()),
                   "test_acc": float((pred == data.y)[data.test_mask].float().mean()),
                   "parameter_checksums": [float(c) for c in checksums]}
        print(json.dumps(summary))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(summary, f)
    if world > 1:
        # Tear down in order, while every rank is still here: a DDP reducer destroyed at
        # interpreter exit can deadlock in gloo's destructor (a gloo thread waits for the GIL
        # while the main thread joins it).
        dist.barrier()
        del model, core
        gc.collect()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
