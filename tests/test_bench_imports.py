"""The runner is a user of the package: it imports only the package's public API, and its own
modules import each other without a circle (checked on the source, every import statement:
top-level, function-local and under ``TYPE_CHECKING`` alike)."""
import ast
import importlib
import os

import pytest

import qgfd_pyg

BENCH = os.path.join(os.path.dirname(qgfd_pyg.__file__), "bench")


def _imports(source: str, module: str):
    """(kind, target, names, line) of every import in ``source``, a module of qgfd_pyg.bench:
    ``("package", "qgfd_pyg.x", names)`` for imports from the package outside the runner,
    ``("bench", "y", names)`` for the runner's own modules."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("qgfd_pyg"):
                    yield _classify(alias.name, [], node.lineno)
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if node.level == 0:
                if node.module and node.module.startswith("qgfd_pyg"):
                    yield _classify(node.module, names, node.lineno)
            elif node.level == 1:  # from . import x / from .x import y
                if node.module is None:
                    for name in names:
                        yield "bench", name, [], node.lineno
                else:
                    yield "bench", node.module.split(".")[0], names, node.lineno
            else:  # from .. import x / from ..x import y
                target = "qgfd_pyg" + ("." + node.module if node.module else "")
                yield _classify(target, names, node.lineno)


def _classify(target: str, names, line):
    if target == "qgfd_pyg.bench" or target.startswith("qgfd_pyg.bench."):
        parts = target.split(".")
        if len(parts) > 2:
            return "bench", parts[2], names, line
        return "bench", names[0] if names else "__init__", [], line
    return "package", target, names, line


def _modules():
    return sorted(f[:-3] for f in os.listdir(BENCH) if f.endswith(".py"))


def private_imports(sources):
    """Every import of the package's non-public API in ``sources`` ({module: source}): a
    private module, a name its module does not export (``__all__``), or a module imported
    as a name."""
    bad = []
    for module, source in sources.items():
        for kind, target, names, line in _imports(source, module):
            if kind != "package":
                continue
            where = f"bench/{module}.py:{line}"
            if any(part.startswith("_") for part in target.split(".")):
                bad.append(f"{where}: private module {target}")
                continue
            exported = getattr(importlib.import_module(target), "__all__", None)
            if not names:
                bad.append(f"{where}: `import {target}` (import the public names)")
            for name in names:
                if exported is None or name not in exported:
                    bad.append(f"{where}: {target}.{name} is not in {target}.__all__")
    return bad


def cycles(sources):
    """The runner's modules that lie on an import circle among themselves."""
    graph = {m: {t for kind, t, _, _ in _imports(s, m) if kind == "bench" and t != m}
             for m, s in sources.items()}
    on_cycle = set()
    for start in graph:  # a depth-first search from each module back to itself
        stack, seen = [start], set()
        while stack:
            node = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    on_cycle.add(start)
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
    return sorted(on_cycle)


def _sources():
    out = {}
    for module in _modules():
        with open(os.path.join(BENCH, module + ".py")) as f:
            out[module] = f.read()
    return out


def test_runner_imports_only_the_public_api():
    assert private_imports(_sources()) == []


def test_runner_modules_have_no_import_circle():
    assert cycles(_sources()) == []


@pytest.mark.parametrize("line, expected", [
    ("from .._checks import check_choice", "private module qgfd_pyg._checks"),
    ("from .. import _numba", "_numba is not in qgfd_pyg.__all__"),
    ("from ..relational.steps import MIN_MASS", "MIN_MASS is not in qgfd_pyg.relational.steps"),
    ("from ..models import InputDropout", "qgfd_pyg.models.InputDropout is not in"),
    ("from qgfd_pyg.relational import _flow_forward", "_flow_forward is not in"),
    ("import qgfd_pyg.relational.flow", "import qgfd_pyg.relational.flow"),
    ("from .. import relational", "relational is not in qgfd_pyg.__all__"),
])
def test_the_guard_sees_private_imports(line, expected):
    """Each kind of private import, added to a runner module, is reported."""
    sources = _sources()
    sources["kg"] += "\n\ndef _added():\n    " + line + "\n"
    found = private_imports(sources)
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize("module, line", [
    ("measure", "from .report import ResultStore"),  # measure -> report -> train -> measure
    ("tasks", "from .train import fit"),  # under a function: train -> tasks (TYPE_CHECKING)
    ("models", "from . import kg"),  # kg -> models
])
def test_the_guard_sees_a_circle(module, line):
    sources = _sources()
    sources[module] += "\n\ndef _added():\n    " + line + "\n"
    assert module in cycles(sources)
