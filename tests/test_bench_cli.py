"""The runner's command line before any sweep: help, the task list and option errors in a
fresh process, answered from the stored catalog without importing torch or PyG."""
import json
import subprocess
import sys

from qgfd_pyg.bench import catalog

PROBE = r"""
import json, sys
from qgfd_pyg.bench import cli
codes = {}
for argv in (["--help"], ["cora", "--help"], ["chain", "--help"], ["wn18rr", "--help"],
             ["--list"], ["cora", "--seeds", "x"], ["nope"], ["cora", "--hops", "3"],
             ["cora", "--transition", "full"]):
    try:
        codes[" ".join(argv)] = cli.main(argv)
    except SystemExit as stop:
        codes[" ".join(argv)] = stop.code
print("RESULT" + json.dumps({"codes": codes, "pyg": "torch_geometric" in sys.modules,
                             "torch": "torch" in sys.modules}))
"""


def run_probe():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    head, _, result = done.stdout.rpartition("RESULT")
    return head, done.stderr, json.loads(result)


def test_help_list_and_option_errors_import_neither_torch_nor_pyg():
    out, err, result = run_probe()
    assert not result["pyg"] and not result["torch"]
    assert result["codes"] == {"--help": 0, "cora --help": 0, "chain --help": 0,
                               "wn18rr --help": 0, "--list": 0, "cora --seeds x": 2,
                               "nope": 2, "cora --hops 3": 2, "cora --transition full": 2}
    helps = out.split("usage: ")
    general, cora, chain, wn18rr = helps[1:5]
    wn18rr, listing = wn18rr.split("node tasks:")
    assert "--hops" in general and "--epoch-batches" in general  # every kind's options
    # TASK --help: the task's description and its own kind's options only
    assert "Planetoid Cora" in cora and "--hops" not in cora and "--epoch-batches" not in cora
    assert "--hops" in chain and "--epoch-batches" not in chain
    assert "--epoch-batches" in wn18rr and "--hops" not in wn18rr
    assert "models (kg):" in listing and "ind-fb237-v1" in listing  # --list
    assert "unknown task 'nope'" in err and "unrecognized arguments: --hops" in err


def test_stored_catalog_matches_the_registry():
    """The command line answers from catalog.json: it must say what the kinds declare
    (python -m qgfd_pyg.bench.catalog rewrites it)."""
    with open(catalog.PATH) as f:
        stored = f.read()
    assert stored == catalog.text(catalog.live()), \
        "stale catalog: run python -m qgfd_pyg.bench.catalog"
