"""The documentation builds with Sphinx without a warning (warnings are errors), and the API
reference holds the public entry points with their documented defaults."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_sphinx_build_has_no_warnings(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
                           "-q", "-d", str(tmp_path / "doctrees"), os.path.join(ROOT, "docs"),
                           str(tmp_path / "html")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr[-4000:]
    with open(tmp_path / "html" / "api.html") as f:
        api = f.read()
    for name in ("qgfd_pyg.QGFDConv", "qgfd_pyg.QGFD", "qgfd_pyg.QGFDAttention",
                 "qgfd_pyg.diffuse", "qgfd_pyg.relational_flow", "qgfd_pyg.from_networkx",
                 "qgfd_pyg.RelationalQGFD", "qgfd_pyg.RelationalGraph.with_inverses",
                 "qgfd_pyg.hf.patch_model"):
        assert f'id="{name}"' in api, name
    text = re.sub(r"<[^>]+>", "", api)
    assert "(default: 0.85)" in text  # QGFDConv's alpha, as PyG writes defaults
    with open(tmp_path / "html" / "runner_api.html") as f:
        runner = f.read()
    for name in ("qgfd_pyg.bench.cli.main", "qgfd_pyg.bench.runner.RunConfig",
                 "qgfd_pyg.bench.runner.run_benchmark", "qgfd_pyg.bench.tasks.register",
                 "qgfd_pyg.bench.data.MissingData"):
        assert f'id="{name}"' in runner, name
    for page in ("install", "usage", "runner", "results", "performance", "status", "design"):
        assert os.path.exists(tmp_path / "html" / f"{page}.html"), page


def _args_section(doc):
    """``{name: text}`` of a Google-style ``Args:`` section (entries indented 4 spaces by
    ``inspect.getdoc``, their continuation lines deeper)."""
    entries, current, inside = {}, None, False
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Arguments:", "Parameters:"):
            inside = True
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):  # the next section
            break
        match = re.match(r"^    (\*{0,2}\w+)(?: \([^)]*\))?:(.*)$", line)
        if match:
            current = match.group(1).lstrip("*")
            entries[current] = match.group(2)
        elif current is not None:
            entries[current] += " " + line.strip()
    return entries


def test_public_arguments_are_documented_with_their_defaults():
    """Every argument of the public API is in its docstring's Args, those with a default say
    it as PyG does, ``(default: ...)``, and every ``alpha`` says how it relates to APPNP's."""
    import inspect

    import qgfd_pyg
    from qgfd_pyg import hf

    objects = [getattr(qgfd_pyg, n) for n in qgfd_pyg.__all__ if n != "__version__"]
    objects += [hf.patch_model, hf.unpatch_model]
    problems = []
    for obj in objects:
        if not callable(obj):
            continue
        doc = inspect.getdoc(obj) or ""
        args = _args_section(doc)
        params = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj).parameters
        for name, param in params.items():
            if name == "self" or param.kind is param.VAR_POSITIONAL:
                continue
            if param.kind is param.VAR_KEYWORD:
                continue
            if name not in args:
                problems.append(f"{obj.__name__}({name}): not in Args")
            elif param.default is not param.empty and "(default:" not in args[name]:
                problems.append(f"{obj.__name__}({name}): no (default: ...)")
            elif param.default is param.empty and "(default:" in args[name]:
                problems.append(f"{obj.__name__}({name}): a default it does not have")
            elif isinstance(param.default, (bool, int, float, str)):
                said = re.search(r"\(default: :obj:`([^`]*)`", args[name])
                if said and said.group(1) != repr(param.default).replace("'", '"'):
                    problems.append(f"{obj.__name__}({name}): says {said.group(1)}, "
                                    f"is {param.default!r}")
        if "alpha" in params and "teleport" not in args.get("alpha", ""):
            problems.append(f"{obj.__name__}(alpha): APPNP's teleport is not named")
    assert not problems, problems
