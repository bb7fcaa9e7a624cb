"""Path questions (MetaQA-style): the generator against hand-made answers, the splits, the
metrics on hand-made scores, the task end to end, and bad input."""
import os

import pytest
import torch

from qgfd_pyg.bench import cli
from qgfd_pyg.bench.qa import follow, adjacency, generate_questions, load_kg, path_metrics
from qgfd_pyg.bench.tasks import load_task

DATA = os.path.join(os.path.dirname(__file__), "..", "datasets")
SHORT = ["--seeds", "1", "--epochs", "2", "--patience", "1", "--no-progress"]


def test_two_hop_answers_are_exactly_the_reachable_entities():
    # 0 -r0-> 1, 0 -r0-> 2, 1 -r1-> 3, 2 -r1-> 4, 2 -r1-> 0, 5 -r1-> 3
    triples = torch.tensor([[0, 0, 1], [0, 0, 2], [1, 1, 3], [2, 1, 4], [2, 1, 0], [5, 1, 3]])
    adj = adjacency(triples, 2)
    assert follow(adj, 0, [0, 1]) == {3, 4, 0}
    assert follow(adj, 3, [3]) == {1, 5}  # inverse of r1 (relation 1 + 2)
    assert follow(adj, 3, [3, 2]) == {0}  # 3 <-r1- 1 <-r0- 0
    assert follow(adj, 4, [0]) == set()
    questions = generate_questions(triples, 6, 2, per_hop=50, hops=(2,), seed=0)
    for i in range(questions.anchor.numel()):
        anchor = int(questions.anchor[i])
        path = [r for r in questions.path[i].tolist() if r >= 0]
        assert len(path) == 2 and int(questions.hops[i]) == 2
        assert questions.answers(i) == sorted(follow(adj, anchor, path) - {anchor})
    keys = {(int(a), tuple(p.tolist())) for a, p in zip(questions.anchor, questions.path,
                                                         strict=True)}
    assert len(keys) == questions.anchor.numel()  # no question twice
    again = generate_questions(triples, 6, 2, per_hop=50, hops=(2,), seed=0)
    assert torch.equal(again.path, questions.path)  # deterministic
    with pytest.raises(ValueError, match="no path questions"):
        generate_questions(torch.tensor([[0, 0, 0]]), 1, 1, hops=(1,))


def test_splits_share_no_question_and_are_fixed_per_seed():
    task = load_task("path-qa", DATA, extra={"quick": True})
    splits = task.split(0)

    def keys(q):
        return {(int(a), tuple(p.tolist())) for a, p in zip(q.anchor, q.path, strict=True)}
    assert not keys(splits["test"]) & keys(splits["train"])
    assert not keys(splits["val"]) & keys(splits["train"])
    total = task.questions.anchor.numel()
    assert sum(len(keys(s)) for s in splits.values()) == total
    assert keys(task.split(0)["test"]) == keys(splits["test"]) != keys(task.split(1)["test"])


def test_kg_files_are_read_in_their_column_order():
    train, full, n, r = load_kg(DATA, "kinship")  # relation, head, tail
    assert (n, r) == (104, 25) and train.size(0) == 8548 and full.size(0) == 10686
    _, _, n, r = load_kg(DATA, "umls")  # head, relation, tail
    assert (n, r) == (135, 46)
    with pytest.raises(ValueError, match="unknown --kg"):
        load_kg(DATA, "freebase")


def test_path_metrics_on_hand_made_scores():
    scores = torch.tensor([[0.9, 0.5, 0.1, 0.3],
                           [0.9, 0.5, 0.1, 0.3],
                           [0.2, 0.2, 0.2, 0.0]])
    answers = torch.tensor([[True, False, False, False],
                            [False, False, True, True],   # best answer 0.3: rank 3
                            [False, True, False, False]])  # tied with two others: rank 2
    hits, rr = path_metrics(scores, answers)
    assert hits.tolist() == [1.0, 0.0, 0.0]
    assert rr.tolist() == pytest.approx([1.0, 1 / 3, 1 / 2])


@pytest.mark.slow
def test_path_qa_end_to_end_and_bad_input(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert cli.main(["path-qa", "--kg", "nations", "--root", DATA, "--out", out, "--quick"]
                    + SHORT) == 0
    import json
    with open(os.path.join(out, "path-qa-nations.json")) as f:
        result = json.load(f)
    assert [r["model"] for r in result["summary"]] == ["qgfd", "attention", "gat", "appnp", "rule"]
    for run in result["runs"]:
        assert 0.0 <= run["test"] <= 1.0
        assert all(f"mrr_{k}hop" in run for k in (1, 2, 3))
        assert (run["epochs"] == 1) == (run["model"] == "rule")  # the rule learns nothing
    before = open(os.path.join(out, "path-qa-nations.json")).read()
    capsys.readouterr()
    assert cli.main(["path-qa", "--kg", "nope", "--root", DATA, "--out", out] + SHORT) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown --kg" in err[0]
    assert open(os.path.join(out, "path-qa-nations.json")).read() == before


def test_rule_row_follows_the_path_on_the_training_graph(tmp_path):
    from qgfd_pyg.bench.qa import PathRule
    from qgfd_pyg.bench.relational import KGGraph

    train = torch.tensor([[0, 0, 1], [1, 1, 2], [1, 1, 3], [4, 0, 1]])
    rule = PathRule(5, 2)
    graph = KGGraph.from_triples(train, 2)
    # 0 -r0-> 1 -r1-> {2, 3};  2 -r1^-1-> 1 -r0^-1-> {0, 4};  3 -r0-> nothing
    scores = rule(torch.tensor([0, 2, 3]), torch.tensor([[0, 1, -1], [3, 2, -1], [0, -1, -1]]),
                  graph)
    assert scores.tolist() == [[0, 0, 1, 1, 0], [1, 0, 0, 0, 1], [0, 0, 0, 0, 0]]
    assert not list(rule.parameters())


def _write_metaqa(folder, extra_test_line=""):
    """MetaQA's layout: kb.txt at the top, {k}-hop/vanilla/qa_{train,dev,test}.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    kb = ["Top Hat|directed_by|Mark Sandrich", "Top Hat|starred_actors|Ginger Rogers",
          "Kitty Foyle|starred_actors|Ginger Rogers", "Kitty Foyle|directed_by|Sam Wood",
          "Our Town|directed_by|Sam Wood", "Swing Time|starred_actors|Ginger Rogers",
          "Swing Time|directed_by|George Stevens"]
    (folder / "kb.txt").write_text("\n".join(kb) + "\n")
    one = folder / "1-hop" / "vanilla"
    two = folder / "2-hop" / "vanilla"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    (one / "qa_train.txt").write_text(
        "what movies did [Ginger Rogers] act in\tTop Hat|Kitty Foyle|Swing Time\n"
        "who directed [Top Hat]\tMark Sandrich\nwho directed [Our Town]\tSam Wood\n")
    (two / "qa_train.txt").write_text(
        "who directed the films of [Ginger Rogers]\tMark Sandrich|Sam Wood|George Stevens\n")
    (one / "qa_dev.txt").write_text("who directed [Kitty Foyle]\tSam Wood\n")
    (two / "qa_dev.txt").write_text("who acted in films by [Sam Wood]\tGinger Rogers\n")
    (one / "qa_test.txt").write_text("which films star [Ginger Rogers]\tTop Hat|Kitty Foyle|"
                                     "Swing Time\n" + extra_test_line)
    (two / "qa_test.txt").write_text("who directed the films of [Ginger Rogers]\t"
                                     "Mark Sandrich|Sam Wood|George Stevens\n")


@pytest.mark.slow
def test_metaqa_layout_is_read_and_runs(tmp_path, capsys):
    from qgfd_pyg.bench.qa import read_metaqa

    _write_metaqa(tmp_path / "metaqa")
    task = read_metaqa(str(tmp_path / "metaqa"))
    assert (task.num_entities, task.num_relations) == (8, 2)
    train = task.split(0)["train"]
    # entities numbered in kb order: Top Hat 0, Mark Sandrich 1, Ginger Rogers 2, Kitty Foyle 3
    assert train.anchor.tolist() == [2, 0, 5, 2]
    assert train.hops.tolist() == [1, 1, 1, 2]  # every question keeps its hop count
    assert task.split(0)["test"].hops.tolist() == [1, 2]
    assert train.answers(0) == [0, 3, 6] and train.answers(1) == [1]
    words = train.path[0][train.path[0] >= 0].tolist()
    assert len(words) == 6 and len(set(words)) == 6  # what movies did <e> act in
    test = task.split(0)["test"]
    assert 0 in test.path[0].tolist()  # "which", "films", "star" unseen in training: <unk>
    out = str(tmp_path / "out")
    argv = ["path-qa", "--metaqa", str(tmp_path / "metaqa"), "--out", out] + SHORT
    assert cli.main(argv) == 0
    import json
    with open(os.path.join(out, "path-qa-metaqa.json")) as f:
        assert len(json.load(f)["runs"]) == 4


@pytest.mark.parametrize("line,message", [
    ("who directed Top Hat\tMark Sandrich\n", "expected 'question with [anchor]"),
    ("who directed [Top Hat]\n", "expected 'question with [anchor]"),
    ("who directed [Top Hat]\tNobody Known\n", "'Nobody Known' is not in kb.txt")])
def test_malformed_metaqa_lines_are_one_line_exit_2(tmp_path, capsys, line, message):
    _write_metaqa(tmp_path / "metaqa", line)
    capsys.readouterr()
    assert cli.main(["path-qa", "--metaqa", str(tmp_path / "metaqa"), "--out",
                     str(tmp_path / "out")] + SHORT) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "1-hop/vanilla/qa_test.txt:2" in err[0]
    assert not (tmp_path / "out").exists()
