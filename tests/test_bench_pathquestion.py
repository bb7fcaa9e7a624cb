"""PathQuestion: the reader on real lines of each file (answer sets, the anchor, the words),
the gold path never reaching a model, the references (PPR against a power iteration written
here, the untrained model), and the tasks end to end through the runner."""
import json
import os

import pytest
import torch

from qgfd_pyg.bench import cli
from qgfd_pyg.bench.pathquestion import FILES, parse_line, read_pathquestion
from qgfd_pyg.bench.qa import answer_mask, path_metrics
from qgfd_pyg.bench.relational import (KGGraph, KGQGFD, PersonalizedPageRank, log_uniform_target,
                                       untrained)

# one real line of each file (PQL's lines start with a space, as they ship)
LINES = {
    "PQ-2H.txt": "which nationality is frederica_of_mecklenburg-strelitz 's couple ?\t"
                 "united_kingdom(united_kingdom/)\tfrederica_of_mecklenburg-strelitz#spouse#"
                 "ernest_augustus_i_of_hanover#nationality#united_kingdom#<end>#united_kingdom",
    "PQ-3H.txt": "the child of archduke_johann_of_austria 's parents 's father ?\t"
                 "gabriel_de_borbon(gabriel_de_borbon/charles_iv_of_spain/)\t"
                 "archduke_johann_of_austria#parents#maria_louisa_of_spain#parents#"
                 "maria_amalia_of_saxony#children#gabriel_de_borbon#<end>#gabriel_de_borbon",
    "PQL-2H.txt": " what is the Kenneth_Peach 's film 's notable_types ?\t"
                  "Adaptation(Adaptation/)\tKenneth_Peach#__film__cinematographer__film#"
                  "Dirty_Work#__common__topic__notable_types#Adaptation",
    "PQL-3H.txt": " what is the recording of recording of Robin_Hood 's recording ?\t"
                  "Robin_Hood(Robin_Hood/)\tRobin_Hood#__music__release_track__recording#"
                  "Robin_Hood#__music__release_track__recording#Robin_Hood#"
                  "__music__release_track__recording#Robin_Hood",
}
# the facts their paths take, as the KB files hold them, and one more each
KB = {
    "2H-kb.txt": ["frederica_of_mecklenburg-strelitz\tspouse\ternest_augustus_i_of_hanover",
                  "ernest_augustus_i_of_hanover\tnationality\tunited_kingdom",
                  "ernest_augustus_i_of_hanover\tparents\tfrederica_of_mecklenburg-strelitz"],
    "3H-kb.txt": ["maria_amalia_of_saxony\tchildren\tgabriel_de_borbon",
                  "archduke_johann_of_austria\tparents\tmaria_louisa_of_spain",
                  "maria_amalia_of_saxony\tchildren\tcharles_iv_of_spain",
                  "maria_louisa_of_spain\tparents\tmaria_amalia_of_saxony"],
    "PQL2-KB.txt": ["Dirty_Work\t__common__topic__notable_types\tAdaptation",
                    "Kenneth_Peach\t__film__cinematographer__film\tDirty_Work"],
    "PQL3-KB.txt": ["Robin_Hood\t__music__release_track__recording\tRobin_Hood",
                    "Robin_Hood\t__music__recording__releases\tLive_From_Las_Vegas"],
}


@pytest.mark.parametrize("file, expected", [
    ("PQ-2H.txt", ("which nationality is frederica_of_mecklenburg-strelitz 's couple ?",
                   ["united_kingdom"], 2, "frederica_of_mecklenburg-strelitz")),
    ("PQ-3H.txt", ("the child of archduke_johann_of_austria 's parents 's father ?",
                   ["gabriel_de_borbon", "charles_iv_of_spain"], 3,
                   "archduke_johann_of_austria")),
    ("PQL-2H.txt", ("what is the Kenneth_Peach 's film 's notable_types ?", ["Adaptation"], 2,
                    "Kenneth_Peach")),
    ("PQL-3H.txt", ("what is the recording of recording of Robin_Hood 's recording ?",
                    ["Robin_Hood"], 3, "Robin_Hood")),
])
def test_parse_line_on_real_lines(file, expected):
    question, answers, path, hops = parse_line(LINES[file], file)
    assert (question, answers, hops, path[0]) == expected
    assert "<end>" not in path and len(path) == 2 * hops + 1


def _folder(tmp_path, lines=LINES, kb=KB, copies=1):
    folder = tmp_path / "PathQuestion"
    folder.mkdir(parents=True, exist_ok=True)
    for name, line in lines.items():
        (folder / name).write_text("\n".join([line] * copies) + "\n")
    for name, rows in kb.items():
        (folder / name).write_text("\n".join(rows) + "\n")
    return folder


def test_reader_gives_anchor_words_and_answer_sets(tmp_path):
    folder = _folder(tmp_path)
    task = read_pathquestion(str(folder / "PQ-3H.txt"), str(folder / "3H-kb.txt"), "pq-3h")
    names = ["maria_amalia_of_saxony", "gabriel_de_borbon", "archduke_johann_of_austria",
             "maria_louisa_of_spain", "charles_iv_of_spain"]  # in order of appearance
    q = task.questions
    assert q.anchor.tolist() == [names.index("archduke_johann_of_austria")]
    assert sorted(q.answers(0)) == sorted([names.index("gabriel_de_borbon"),
                                          names.index("charles_iv_of_spain")])
    assert q.hops.tolist() == [3] and task.num_entities == 5 and task.num_relations == 2
    # words: <unk> 0, <e> 1, then the question's words in order, the anchor's name as <e>
    # the child of <e> s parents s father
    assert q.path[0].tolist() == [2, 3, 4, 1, 5, 6, 5, 7]
    assert task.words == ["<unk>", "<e>", "the", "child", "of", "s", "parents", "father"]
    assert task.vocab == 8 and task.controller == "text" and task.anchor_answers


def test_the_gold_path_never_reaches_a_model(tmp_path):
    """Changing the gold path's relations and middle entities (the anchor and the answer
    kept) changes nothing a model receives: anchor, words, answers, graph."""
    first = read_pathquestion(str(_folder(tmp_path / "a") / "PQ-2H.txt"),
                              str(tmp_path / "a" / "PathQuestion" / "2H-kb.txt"), "pq-2h")
    changed = dict(LINES)
    changed["PQ-2H.txt"] = LINES["PQ-2H.txt"].replace(
        "#spouse#ernest_augustus_i_of_hanover#nationality#", "#parents#somebody_else#born_in#")
    second = read_pathquestion(str(_folder(tmp_path / "b", changed) / "PQ-2H.txt"),
                               str(tmp_path / "b" / "PathQuestion" / "2H-kb.txt"), "pq-2h")
    for x, y in zip(first.questions, second.questions, strict=True):
        assert torch.equal(x, y)
    assert torch.equal(first.graph_triples, second.graph_triples)
    assert first.words == second.words  # the words themselves, not only their ids


@pytest.mark.parametrize("line, message", [
    ("a question\tanswer(answer/)", "expected question<TAB>answer\\(answers\\)<TAB>path"),
    ("q ?\tunited_kingdom(united_kingdom/)\tx#spouse", "is not subject#relation#entity"),
    ("q ?\tother(other/)\tx#spouse#united_kingdom", "is not united_kingdom\\(answer1"),
])
def test_malformed_lines_name_the_file_and_line(tmp_path, line, message):
    folder = _folder(tmp_path, {"PQ-2H.txt": LINES["PQ-2H.txt"] + "\n" + line})
    with pytest.raises(ValueError, match="PQ-2H.txt:2: .*" + message):
        read_pathquestion(str(folder / "PQ-2H.txt"), str(folder / "2H-kb.txt"), "pq-2h")


def test_unknown_entity_and_missing_files(tmp_path):
    folder = _folder(tmp_path, kb={**KB, "2H-kb.txt": KB["2H-kb.txt"][:1]})
    with pytest.raises(ValueError, match="PQ-2H.txt:1: entity 'united_kingdom' is not in"):
        read_pathquestion(str(folder / "PQ-2H.txt"), str(folder / "2H-kb.txt"), "pq-2h")
    from qgfd_pyg.bench.data import MissingData
    with pytest.raises(MissingData, match="PathQuestion not found"):
        read_pathquestion(str(tmp_path / "no.txt"), str(folder / "2H-kb.txt"), "pq-2h")


def test_ppr_reference_equals_a_power_iteration():
    """Personalised PageRank over the training graph, both directions, every edge alike:
    sum_{k < T} (1 - alpha) alpha^k e P^k + alpha^T e P^T with P the row-normalised
    adjacency (an entity without edges keeps its mass)."""
    triples = torch.tensor([[0, 0, 1], [1, 1, 2], [0, 1, 2], [2, 0, 3], [1, 0, 1]])
    N, R, alpha, T = 5, 2, 0.8, 4
    model = PersonalizedPageRank(N, R, alpha=alpha, steps=T)
    graph = KGGraph.from_triples(triples, R)
    anchor = torch.tensor([0, 3, 4])
    out = model(anchor, torch.zeros(3, dtype=torch.long), graph)
    A = torch.zeros(N, N, dtype=torch.float64)
    for h, _, t in triples.tolist():
        A[h, t] += 1
        A[t, h] += 1
    deg = A.sum(1, keepdim=True)
    P = torch.where(deg > 0, A / deg.clamp_min(1), torch.zeros_like(A)) + torch.diag(
        (deg.view(-1) == 0).double())
    for row, a in enumerate(anchor.tolist()):
        x = torch.zeros(N, dtype=torch.float64)
        x[a] = 1.0
        expected = torch.zeros(N, dtype=torch.float64)
        for k in range(T):
            expected += (1 - alpha) * alpha ** k * x
            x = x @ P
        expected += alpha ** T * x
        torch.testing.assert_close(out[row].double(), expected, rtol=1e-5, atol=1e-6)


def test_untrained_reference_has_nothing_to_learn():
    torch.manual_seed(0)
    model = untrained(KGQGFD)(7, 3, hidden=8, controller="text", vocab=5)
    torch.manual_seed(0)
    reference = KGQGFD(7, 3, hidden=8, controller="text", vocab=5)
    assert list(model.parameters()) == []
    assert len(dict(model.named_buffers())) == len(dict(reference.named_parameters()))
    graph = KGGraph.from_triples(torch.tensor([[0, 0, 1], [1, 1, 2], [2, 2, 3]]), 3)
    anchor, words = torch.tensor([0, 1]), torch.tensor([[1, 2, -1], [3, -1, -1]])
    model.eval()
    reference.eval()
    torch.testing.assert_close(model(anchor, words, graph), reference(anchor, words, graph))


def test_tasks_run_end_to_end_and_keep_the_anchor(tmp_path):
    """Every PathQuestion task through the CLI on a folder of its real lines (20 copies each,
    for a split): every model runs, the references take one epoch, and on PQL-3H, whose
    answer is its anchor, PPR (whose top entity is the anchor) scores every question."""
    _folder(tmp_path, copies=20)
    out = tmp_path / "out"
    for task in FILES:
        assert cli.main([task, "--root", str(tmp_path), "--out", str(out), "--seeds", "1",
                         "--quick", "--no-progress"]) == 0
        with open(out / f"{task}.json") as f:
            runs = {r["model"]: r for r in json.load(f)["runs"]}
        assert set(runs) == {"qgfd", "attention", "gat", "appnp", "ppr", "untrained"}
        assert runs["ppr"]["epochs"] == 1 and runs["untrained"]["epochs"] == 1
        assert runs["ppr"]["params"] == 0 and runs["untrained"]["params"] == 0
    with open(out / "pql-3h.json") as f:
        ppr = [r for r in json.load(f)["runs"] if r["model"] == "ppr"][0]
    assert ppr["test"] == 1.0


def test_missing_data_is_one_line(tmp_path, capsys):
    assert cli.main(["pq-2h", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--seeds", "1", "--quick", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PathQuestion not found" in err[0] and os.sep in err[0]


def test_text_controller_learns_to_read_the_questions():
    """The qgfd model's text controller reads PathQuestion's words into relations: 300
    PQ-2H questions (the shipped file), 60 full-batch steps reach >= 85% training Hits@1
    (with the GRU's inputs started near one, as the embedding term's words are, its state
    barely depended on the question: 76% here, 70% on the full task)."""
    root = os.path.join(os.path.dirname(os.path.dirname(__file__)), "datasets", "PathQuestion")
    task = read_pathquestion(os.path.join(root, "PQ-2H.txt"), os.path.join(root, "2H-kb.txt"),
                             "pq-2h")
    torch.manual_seed(0)
    q = task.questions.subset(torch.randperm(task.questions.anchor.numel())[:300])
    model = KGQGFD(task.num_entities, task.num_relations, hidden=32, steps=2,
                   controller="text", vocab=task.vocab, normalization="none", dangling="drop",
                   embedding_scores=False)
    graph = KGGraph.from_triples(task.graph_triples, task.num_relations)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    target = answer_mask(q, torch.arange(q.anchor.numel()), task.num_entities)
    for _ in range(60):
        loss = log_uniform_target(model(q.anchor, q.path, graph), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        hits, _ = path_metrics(model(q.anchor, q.path, graph), target)
    assert float(hits.mean()) >= 0.85
