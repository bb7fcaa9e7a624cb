import json
import os

import pytest
import torch
from tiny_data import hotpot_question, write_hotpot

from qgfd_pyg.bench import cli
from qgfd_pyg.bench.hotpot import (ParagraphRanker, Question, prepare, ranking_metrics,
                                   sentence_graph)


def test_ranking_metrics_on_hand_made_scores():
    def q(support, kind):
        return Question(torch.zeros(1), torch.eye(1), torch.zeros(1, dtype=torch.long),
                        torch.zeros(4), support, kind)
    questions = [q((0, 1), "bridge"), q((2, 3), "bridge"), q((0, 3), "comparison")]
    scores = [torch.tensor([0.9, 0.8, 0.1, 0.0]),  # both found
              torch.tensor([0.9, 0.1, 0.8, 0.0]),  # one of two
              torch.tensor([0.5, 0.5, 0.5, 0.9])]  # ties go to the earlier paragraph: 3, 0
    out = ranking_metrics(scores, questions)
    assert out["metric"] == pytest.approx(5 / 6) and out["em"] == pytest.approx(2 / 3)
    assert out["recall@2_bridge"] == pytest.approx(3 / 4) and out["recall@2_comparison"] == 1.0


def test_sentence_graph_joins_reading_order_titles_and_shared_names():
    paragraphs = [["Ada Brook wrote Tide.", "She met Carl Dunn."],   # sentences 0, 1
                  ["Tide is a novel.", "It sold well."],               # 2, 3
                  ["Carl Dunn was a sailor."]]                         # 4
    edge_index, member = sentence_graph(paragraphs, ["Ada Brook", "Tide (novel)", "Sailors"])
    edges = set(map(tuple, edge_index.t().tolist()))
    expected = {(0, 1), (2, 3),  # reading order
                (0, 2),          # "Tide" is paragraph 1's title, its parenthetical stripped
                (1, 4)}          # the name "Carl Dunn" in two paragraphs
    assert edges == expected | {(b, a) for a, b in expected}
    assert member.tolist() == [0, 0, 1, 1, 2]


def test_qgfd_ranker_equals_the_dense_p_form():
    question = prepare([hotpot_question(0)])[0]
    n = question.seed.numel()
    edge_index, _ = sentence_graph([p[1] for p in hotpot_question(0)["context"]],
                                   [p[0] for p in hotpot_question(0)["context"]])
    A = torch.eye(n)  # brute force: self loops plus the graph's edges, rows normalised
    for s, t in edge_index.t().tolist():
        A[s, t] += 1.0
    P = A / A.sum(1, keepdim=True)
    p0 = torch.softmax(question.seed / 0.05, 0)
    p = p0
    for _ in range(4):
        p = 0.3 * p0 + 0.7 * p @ P
    expected = torch.zeros(5).index_add_(0, question.member, p)
    torch.testing.assert_close(ParagraphRanker(0.7, 4, 0.05)(question), expected)
    top = torch.sort(expected, descending=True).indices[:2].tolist()
    assert sorted(top) == [0, 1]  # the bridge paragraph, reached through the title
    attention = ParagraphRanker(0.0, 0, 0.05)(question)
    assert 1 not in torch.sort(attention, descending=True).indices[:2].tolist()


@pytest.mark.slow
def test_hotpotqa_end_to_end_and_bad_input(tmp_path, capsys):
    root, out = write_hotpot(tmp_path / "data"), str(tmp_path / "out")
    argv = ["hotpotqa", "--root", root, "--out", out, "--seeds", "2", "--no-progress",
            "--quick"]
    assert cli.main(argv) == 0
    with open(os.path.join(out, "hotpotqa.json")) as f:
        result = json.load(f)
    rows = {row["model"]: row for row in result["summary"]}
    assert list(rows) == ["qgfd", "attention", "tfidf"]
    assert rows["qgfd"]["test"]["mean"] == 1.0 and rows["qgfd"]["em"]["mean"] == 1.0
    assert rows["attention"]["test"]["mean"] == 0.5 and rows["tfidf"]["test"]["mean"] == 0.5
    assert result["config"]["questions"] == 24 and result["config"]["val_questions"] == 12
    assert cli.main(argv + ["--alpha", "0.5", "--name", "fixed"]) == 0  # fixes one option
    with open(os.path.join(out, "fixed.json")) as f:
        assert json.load(f)["config"]["qgfd"]["alpha"] == 0.5
    assert cli.main(argv + ["--hidden", "8"]) == 2  # not an option of these models
    before = open(os.path.join(out, "hotpotqa.json")).read()
    bad = hotpot_question(99)
    bad["supporting_facts"][1][0] = "No Such Title"
    write_hotpot(tmp_path / "data", extra=[bad])
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "question 24" in err and "supporting_facts" in err and len(err.splitlines()) == 1
    assert open(os.path.join(out, "hotpotqa.json")).read() == before
    assert cli.main(["hotpotqa", "--root", str(tmp_path / "none"), "--out", out]) == 2
    assert "hotpot_dev_distractor_v1.json" in capsys.readouterr().err


def test_split_and_grid_choice_use_validation_only(tmp_path):
    """Per seed a random validation part and a disjoint test part; the grid point kept is the
    best on validation (here alpha 0.7: the bridge paragraph is reached; alpha 0 misses it)."""
    from qgfd_pyg.bench.hotpot import HotpotExperiment, HotpotTask

    items = [hotpot_question(k) for k in range(10)]
    task = HotpotTask("tiny", items, val_questions=4)
    for seed in (0, 1):
        val, test = task.split(seed)
        assert len(val) == 4 and len(test) == 6
        ids = {id(q) for q in val} | {id(q) for q in test}
        assert len(ids) == 10
    assert [id(q) for q in task.split(0)[0]] != [id(q) for q in task.split(1)[0]]
    experiment = HotpotExperiment(task, 0, dict(alpha=[0.0, 0.7], steps=[4],
                                                temperature=[0.05]))
    assert experiment.train_epoch() == 0.0
    assert float(experiment.model.alpha) == pytest.approx(0.7)
    assert experiment.evaluate("test")["metric"] == 1.0


def test_the_shipped_subset_file_is_read_when_the_full_set_is_absent(tmp_path):
    from qgfd_pyg.bench.hotpot import DEV_FILE, SUBSET_FILE
    from qgfd_pyg.bench.tasks import load_task

    root = write_hotpot(tmp_path / "data")
    folder = os.path.join(root, "HotpotQA")
    os.rename(os.path.join(folder, DEV_FILE), os.path.join(folder, SUBSET_FILE))
    assert len(load_task("hotpotqa", root, None, {"quick": True}).questions) == 24
    write_hotpot(tmp_path / "data", extra=[hotpot_question(50)])  # the full set wins
    assert len(load_task("hotpotqa", root, None, {"quick": True}).questions) == 25
