"""The README's Python examples run as written, and its benchmark commands name tasks and
options that the runner accepts."""
import os
import re
import shlex

import pytest

from qgfd_pyg.bench.cli import build_parser
from qgfd_pyg.bench.tasks import task_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "README.md")) as f:
    README = f.read()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
BENCH = re.findall(r"(?:\./run bench|python -m qgfd_pyg\.bench)((?: [^\s`#|]+)*)", README)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, monkeypatch):
    monkeypatch.chdir(ROOT)
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize("command", sorted({c.strip() for c in BENCH if c.strip()}))
def test_readme_bench_commands_parse(command):
    args = build_parser().parse_args(shlex.split(command))  # unknown options exit here
    assert args.list or args.task in task_names(), command
