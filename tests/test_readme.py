"""The Python examples of the README and of the pages under docs/ run as written, and their
benchmark commands name tasks and options that the runner accepts."""
import os
import re
import shlex

import pytest

from qgfd_pyg.bench.cli import build_parser
from qgfd_pyg.bench.tasks import task_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.join("docs", name)
                               for name in os.listdir(os.path.join(ROOT, "docs"))
                               if name.endswith(".md"))
TEXT = {}
for _page in PAGES:
    with open(os.path.join(ROOT, _page)) as f:
        TEXT[_page] = f.read()
BLOCKS = [(page, i, block) for page in PAGES
          for i, block in enumerate(re.findall(r"```python\n(.*?)```", TEXT[page], flags=re.S))]
BENCH = [c for page in PAGES for c in re.findall(
    r"(?:\./run bench|python -m qgfd_pyg\.bench)((?: [^\s`#|]+)*)", TEXT[page])]


def test_pages_have_examples():
    assert {page for page, _, _ in BLOCKS} >= {"README.md", os.path.join("docs", "usage.md")}


@pytest.mark.parametrize("page,index,block", BLOCKS, ids=[f"{p}:{i}" for p, i, _ in BLOCKS])
def test_example_runs(page, index, block, monkeypatch):
    monkeypatch.chdir(ROOT)
    exec(compile(block, f"{page} block {index}", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize("command", sorted({c.strip() for c in BENCH
                                            if c.strip() and not c.split()[0].isupper()}))
def test_bench_commands_parse(command):  # TASK (upper case) is a placeholder
    args = build_parser().parse_args(shlex.split(command))  # unknown options exit here
    assert args.list or args.task in task_names(), command
