"""Knowledge-graph completion with RelationalQGFD on a folder of triples, end to end.

    python examples/kg_completion.py                      # UMLS, shipped in datasets/kg/umls
    python examples/kg_completion.py --data datasets/kg/nations --columns rht --epochs 20

The folder holds ``train.txt``, ``valid.txt`` and ``test.txt``, one tab-separated triple per
line (``--columns`` gives their order: ``hrt``, or ``rht`` as kinship and nations ship). The
model is trained on link prediction over the training facts (each batch's own facts hidden
from its flow), the epoch with the best validation MRR is kept, test queries (head and tail)
are ranked against every entity with the other true answers filtered out, and the relations
the flow follows for each query relation are printed as its rule.
"""
import argparse
import copy
import os
import sys

import torch
import torch.nn.functional as F

from qgfd_pyg import RelationalQGFD


def read(folder: str, columns: str):
    """Integer triples per split, and the entity and relation names."""
    rows = {}
    for split in ("train", "valid", "test"):
        path = os.path.join(folder, f"{split}.txt")
        if not os.path.isfile(path):
            sys.exit(f"{path} not found: the folder needs train.txt, valid.txt and test.txt")
        with open(path) as f:
            rows[split] = [dict(zip(columns, line.rstrip("\n").split("\t"), strict=True))
                           for line in f if line.strip()]
    entities = sorted({x[k] for split in rows.values() for x in split for k in "ht"})
    relations = sorted({x["r"] for split in rows.values() for x in split})
    e_id = {e: i for i, e in enumerate(entities)}
    r_id = {r: i for i, r in enumerate(relations)}
    triples = {split: torch.tensor([[e_id[x["h"]], r_id[x["r"]], e_id[x["t"]]] for x in xs])
               for split, xs in rows.items()}
    return triples, entities, relations


def queries(triples: torch.Tensor, num_relations: int) -> torch.Tensor:
    """(anchor, relation, answer): tail queries, then head queries as inverse relations."""
    h, r, t = triples.unbind(1)
    return torch.cat([triples, torch.stack([t, r + num_relations, h], 1)])


@torch.no_grad()
def mrr(model, graph, items: torch.Tensor, known) -> float:
    """Filtered mean reciprocal rank (ties count half) of ``items`` (anchor, relation, answer)."""
    model.eval()
    total = 0.0
    for chunk in items.split(1024):
        anchor, relation, answer = chunk.t()
        scores = model(anchor, relation, graph)
        target = scores.gather(1, answer.view(-1, 1))
        for row, (h, r, t) in enumerate(chunk.tolist()):
            others = [x for x in known[(h, r)] if x != t]
            scores[row, others] = float("-inf")
        rank = 1 + (scores > target).sum(1) + 0.5 * ((scores == target).sum(1) - 1)
        total += float((1.0 / rank).sum())
    return total / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="datasets/kg/umls")
    parser.add_argument("--columns", default="hrt", choices=["hrt", "rht"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    triples, entities, relations = read(args.data, args.columns)
    N, R, train = len(entities), len(relations), triples["train"]
    known = {}
    for h, r, t in queries(torch.cat(list(triples.values())), R).tolist():
        known.setdefault((h, r), []).append(t)

    model = RelationalQGFD(N, R, hidden=64, steps=args.steps, normalization="relation",
                           dangling="drop")
    graph = model.flow_graph(train[:, [0, 2]].t(), train[:, 1])
    valid, test = queries(triples["valid"], R), queries(triples["test"], R)
    print(f"{N} entities, {R} relations, {len(train)} training facts; "
          f"untrained: valid MRR {mrr(model, graph, valid, known):.3f}")

    train_queries, fact = queries(train, R), torch.arange(len(train)).repeat(2)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    best = (-1.0, None)
    for epoch in range(args.epochs):
        model.train()
        for batch in torch.randperm(len(train_queries)).split(512):
            anchor, relation, answer = train_queries[batch].t()
            scores = model(anchor, relation, graph.masked(fact[batch]))
            loss = F.cross_entropy(scores, answer)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        score = mrr(model, graph, valid, known)
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, valid MRR {score:.3f}")
        if score > best[0]:
            best = (score, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[1])
    print(f"test MRR {mrr(model, graph, test, known):.3f} (the epoch of the best valid MRR)")

    names = relations + [f"inverse of {r}" for r in relations] + ["stay"]
    weights = model.explain(torch.arange(R))[:, 0]  # [R, steps, 2R + 1], the first head
    print("the path each query relation follows (the first head's top relation per step):")
    for r, steps in enumerate(weights):
        path = " -> ".join(f"{names[int(w.argmax())]} ({float(w.max()):.2f})" for w in steps)
        print(f"  {relations[r]}: {path}")


if __name__ == "__main__":
    main()
