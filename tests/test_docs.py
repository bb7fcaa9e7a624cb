"""The documentation builds with Sphinx without a warning (warnings are errors), and the API
reference holds the public entry points with their documented defaults."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sphinx_build_has_no_warnings(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
                           "-q", "-d", str(tmp_path / "doctrees"), os.path.join(ROOT, "docs"),
                           str(tmp_path / "html")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr[-4000:]
    with open(tmp_path / "html" / "api.html") as f:
        api = f.read()
    for name in ("qgfd_pyg.QGFDConv", "qgfd_pyg.QGFD", "qgfd_pyg.QGFDAttention",
                 "qgfd_pyg.diffuse", "qgfd_pyg.relational_flow", "qgfd_pyg.from_networkx",
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
