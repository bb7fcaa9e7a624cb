"""Tiny data sets written in the real on-disk formats, so the loaders of data sets that cannot be
downloaded here (PubMed, ogbn-arxiv) run through their real code paths in the tests."""
import os
import pickle

import numpy as np
import pandas as pd
import scipy.sparse as sp


def write_planetoid(root: str, name: str = "PubMed", num_classes: int = 3, features: int = 12,
                    per_class: int = 5, num_test: int = 40, seed: int = 0) -> int:
    """Planetoid's ``ind.<name>.*`` pickles: public split = first len(y) nodes train, next 500
    val, ``test.index`` test. Returns the number of nodes."""
    rng = np.random.default_rng(seed)
    num_train = num_classes * per_class
    num_all = num_train + 500 + 10  # allx: labelled + val + a few unlabelled
    n = num_all + num_test
    labels = rng.integers(0, num_classes, n)
    labels[:num_train] = np.repeat(np.arange(num_classes), per_class)
    centers = rng.normal(0, 1, (num_classes, features))
    feats = (centers[labels] + rng.normal(0, 1.0, (n, features)) > 0.8).astype(np.float32)
    onehot = np.eye(num_classes)[labels]
    graph = {i: [] for i in range(n)}
    for _ in range(4 * n):  # homophilous edges
        i = int(rng.integers(n))
        same = np.flatnonzero(labels == labels[i])
        j = int(rng.choice(same)) if rng.random() < 0.8 else int(rng.integers(n))
        if i != j:
            graph[i].append(j)
            graph[j].append(i)
    test_index = rng.permutation(np.arange(num_all, n))
    parts = {"x": sp.csr_matrix(feats[:num_train]), "y": onehot[:num_train],
             "allx": sp.csr_matrix(feats[:num_all]), "ally": onehot[:num_all],
             "tx": sp.csr_matrix(feats[test_index]), "ty": onehot[test_index], "graph": graph}
    raw = os.path.join(root, name, "raw")
    os.makedirs(raw, exist_ok=True)
    for key, value in parts.items():
        with open(os.path.join(raw, f"ind.{name.lower()}.{key}"), "wb") as f:
            pickle.dump(value, f)
    with open(os.path.join(raw, f"ind.{name.lower()}.test.index"), "w") as f:
        f.write("\n".join(map(str, test_index)) + "\n")
    return n


def write_ogbn_arxiv(root: str, n: int = 300, features: int = 16, num_classes: int = 40,
                     seed: int = 0) -> int:
    """OGB's raw layout of ogbn-arxiv (csv.gz files, time split, release marker)."""
    rng = np.random.default_rng(seed)
    base = os.path.join(root, "ogbn_arxiv")
    raw, split = os.path.join(base, "raw"), os.path.join(base, "split", "time")
    os.makedirs(raw, exist_ok=True)
    os.makedirs(split, exist_ok=True)
    labels = rng.integers(0, num_classes, n)
    feats = rng.normal(0, 1, (n, features)) + np.eye(num_classes, features)[labels] * 2
    src = rng.integers(0, n, 5 * n)
    dst = np.where(rng.random(5 * n) < 0.7,
                   [rng.choice(np.flatnonzero(labels == labels[s])) for s in src],
                   rng.integers(0, n, 5 * n))
    keep = src != dst
    edges = np.stack([src[keep], dst[keep]], axis=1)

    def write(path, array):
        pd.DataFrame(array).to_csv(path, header=False, index=False, compression="gzip")

    write(os.path.join(raw, "edge.csv.gz"), edges)
    write(os.path.join(raw, "node-feat.csv.gz"), feats.astype(np.float32))
    write(os.path.join(raw, "node-label.csv.gz"), labels.reshape(-1, 1))
    write(os.path.join(raw, "num-node-list.csv.gz"), np.array([[n]]))
    write(os.path.join(raw, "num-edge-list.csv.gz"), np.array([[len(edges)]]))
    write(os.path.join(raw, "node_year.csv.gz"), rng.integers(2010, 2021, (n, 1)))
    order = rng.permutation(n)
    parts = np.split(order, [n // 2, 3 * n // 4])
    for part, idx in zip(("train", "valid", "test"), parts, strict=True):
        write(os.path.join(split, f"{part}.csv.gz"), np.sort(idx).reshape(-1, 1))
    with open(os.path.join(base, "RELEASE_v1.txt"), "w") as f:
        f.write("tiny generated stand-in for tests\n")
    return n


def write_ogbl(root: str, name: str = "ogbl-collab", n: int = 120, seed: int = 0) -> int:
    """OGB's raw layout of an ``ogbl-*`` link data set (csv.gz graph, split dicts as .pt)."""
    import torch

    rng = np.random.default_rng(seed)
    short = name.replace("-", "_")
    base = os.path.join(root, short)
    split_name = "time" if name == "ogbl-collab" else "target"
    raw, split = os.path.join(base, "raw"), os.path.join(base, "split", split_name)
    os.makedirs(raw, exist_ok=True)
    os.makedirs(split, exist_ok=True)
    group = rng.integers(0, 4, n)  # edges mostly inside four groups: learnable
    pairs = set()
    while len(pairs) < 4 * n:
        i = int(rng.integers(n))
        same = np.flatnonzero(group == group[i])
        j = int(rng.choice(same)) if rng.random() < 0.9 else int(rng.integers(n))
        if i != j:
            pairs.add((min(i, j), max(i, j)))
    edges = np.array(sorted(pairs))[rng.permutation(len(pairs))]
    parts = np.split(edges, [int(0.8 * len(edges)), int(0.9 * len(edges))])

    def write(file, array):
        pd.DataFrame(array).to_csv(os.path.join(raw, file), header=False, index=False,
                                   compression="gzip")

    write("edge.csv.gz", parts[0])
    write("num-node-list.csv.gz", np.array([[n]]))
    write("num-edge-list.csv.gz", np.array([[len(parts[0])]]))
    if name == "ogbl-collab":
        feats = rng.normal(0, 1, (n, 8)) + np.eye(4, 8)[group] * 2
        write("node-feat.csv.gz", feats.astype(np.float32))
        write("edge_weight.csv.gz", np.ones((len(parts[0]), 1), dtype=np.int64))
        write("edge_year.csv.gz", rng.integers(2000, 2018, (len(parts[0]), 1)))
    torch.save({"edge": parts[0]}, os.path.join(split, "train.pt"))
    for key, part in (("valid", parts[1]), ("test", parts[2])):
        neg = rng.integers(0, n, (3 * len(part), 2))
        torch.save({"edge": part, "edge_neg": neg}, os.path.join(split, f"{key}.pt"))
    with open(os.path.join(base, "RELEASE_v1.txt"), "w") as f:
        f.write("tiny generated stand-in for tests\n")
    return n


WN18RR_RELATIONS = ("_hypernym", "_derivationally_related_form", "_member_meronym",
                    "_also_see")


def write_kg(raw: str, relations=WN18RR_RELATIONS, n: int = 40, seed: int = 0) -> None:
    """``train/valid/test.txt`` with tab-separated (head, relation, tail) lines, as WN18RR and
    FB15k-237 ship them: chains of relation 0 (a hierarchy) whose relation-1 links are
    symmetric, so that held-out triples follow from training ones."""
    rng = np.random.default_rng(seed)
    names = [f"{10000000 + 37 * i:08d}" for i in range(n)]
    triples = set()
    for i in range(1, n):
        triples.add((names[i], relations[0], names[int(rng.integers(0, i))]))
    for _ in range(2 * n):
        i, j = (int(x) for x in rng.integers(0, n, 2))
        if i != j:
            triples.add((names[i], relations[1], names[j]))
            triples.add((names[j], relations[1], names[i]))
    for _ in range(n // 2):
        i, j = (int(x) for x in rng.integers(0, n, 2))
        triples.add((names[i], relations[2 + (i % (len(relations) - 2))], names[j]))
    triples = sorted(triples)
    order = rng.permutation(len(triples))
    cut = [int(0.8 * len(order)), int(0.9 * len(order))]
    os.makedirs(raw, exist_ok=True)
    for name, idx in zip(("train", "valid", "test"), np.split(order, cut), strict=True):
        with open(os.path.join(raw, f"{name}.txt"), "w") as f:
            f.writelines("\t".join(triples[k]) + "\n" for k in sorted(idx))


def hotpot_question(k: int, distractors: int = 3) -> dict:
    """A bridge question in HotpotQA's JSON layout: the first supporting paragraph shares the
    question's words, the second shares none and is reached only through its title, which the
    first mentions; the distractors share one word each with the question."""
    bridge = f"Orla Vance{k}"
    context = [
        [f"Glimmer Tower{k}", [f"Glimmer Tower{k} is a spire in Quorn designed by {bridge}.",
                               "It opened after nine years of work."]],
        [bridge, [f"{bridge} grew up in Pellham{k}.", "Her parents ran a bakery."]],
    ] + [[f"Distractor{k}x{j}", [f"A glimmer of hope{j} lit the hall.", "Nothing else."]]
         for j in range(distractors)]
    return {"_id": f"q{k}", "type": "bridge", "level": "easy",
            "question": f"Where did the designer of Glimmer Tower{k} grow up?",
            "answer": f"Pellham{k}",
            "supporting_facts": [[f"Glimmer Tower{k}", 0], [bridge, 0]],
            "context": context}


def write_hotpot(root, questions: int = 24, extra=None) -> str:
    """``root/HotpotQA/hotpot_dev_distractor_v1.json`` with ``questions`` bridge questions
    (and the items of ``extra`` after them); returns ``root``."""
    import json
    import os

    folder = os.path.join(str(root), "HotpotQA")
    os.makedirs(folder, exist_ok=True)
    items = [hotpot_question(k) for k in range(questions)] + list(extra or [])
    with open(os.path.join(folder, "hotpot_dev_distractor_v1.json"), "w") as f:
        json.dump(items, f)
    return str(root)
