"""The package as a user installs it: a wheel and an sdist built with ``python -m build``, the
wheel installed into a fresh virtual environment that holds only torch, PyG and what those two
require (the runner's extra, scikit-learn, SciPy, numba, torch-sparse and transformers are
absent), and the layers used there."""
import importlib.metadata as metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.slow  # end to end: a fresh process / environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

USER_SCRIPT = r'''
import importlib.util, sys
import networkx as nx
import torch
import qgfd_pyg
from qgfd_pyg import QGFDAttention, QGFDConv, from_networkx

assert qgfd_pyg.__file__.startswith(sys.prefix), qgfd_pyg.__file__  # the installed copy
for absent in ("sklearn", "scipy", "numba", "torch_sparse", "transformers", "ogb"):
    assert importlib.util.find_spec(absent) is None, absent
torch.manual_seed(0)
x = torch.randn(6, 4, requires_grad=True)
edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0]])
conv = QGFDConv(4, 3, heads=2, alpha=0.8, steps=3)
out = conv(x, edge_index)
out.sum().backward()
assert out.shape == (6, 6) and x.grad is not None and torch.isfinite(x.grad).all()
P, nodes = from_networkx(nx.path_graph(4))
dense = P.to_dense()
assert nodes == [0, 1, 2, 3] and torch.allclose(dense[0], torch.tensor([0.0, 1.0, 0.0, 0.0]))
attn = QGFDAttention(8, num_heads=2, alpha=0.5, steps=2)
h = torch.randn(2, 5, 8)
y, _ = attn(h, h, h)
assert y.shape == (2, 5, 8)
try:
    import qgfd_pyg.bench  # noqa: F401
except ImportError as error:
    print("BENCH:", error)
print("OK")
'''


def _distributions(names):
    """The installed distributions ``names`` and, recursively, what they require (no extras)."""
    seen, todo = {}, list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement this environment does not have
        seen[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _expose(dists, folder):
    """Links the files of ``dists`` (their top-level packages and metadata) into ``folder``."""
    os.makedirs(folder)
    for dist in dists:
        tops = {str(f).split("/")[0] for f in dist.files or [] if not str(f).startswith("..")}
        base = dist.locate_file("")
        for top in tops:
            source = os.path.join(base, top)
            target = os.path.join(folder, top)
            if os.path.exists(source) and not os.path.exists(target) and top != "__pycache__":
                os.symlink(source, target)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``python -m build`` (no isolation: this environment's setuptools) on a copy of the
    source tree: the wheel and the sdist."""
    tmp = tmp_path_factory.mktemp("build")
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "datasets", "benchmarks", "__pycache__", "*.egg-info", "build",
        "dist", "_build", ".pytest_cache", ".hypothesis", ".ruff_cache", ".whl", ".gl"))
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir",
                           str(tmp / "dist"), str(source)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    wheels = list((tmp / "dist").glob("qgfd_pyg-*.whl"))
    sdists = list((tmp / "dist").glob("qgfd[-_]pyg-*.tar.gz"))  # older setuptools: qgfd-pyg
    assert len(wheels) == 1 and len(sdists) == 1
    return tmp, wheels[0], sdists[0]


def test_wheel_and_sdist_hold_the_package_and_its_metadata(built):
    _, wheel, sdist = built
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for module in ("__init__", "conv", "models", "relational/flow", "relational/model",
                   "_numba/typed_flow", "transition", "bench/cli"):
        assert f"qgfd_pyg/{module}.py" in names, module
    assert "qgfd_pyg/bench/catalog.json" in names  # the command line's help and task list
    assert not any(n.startswith(("tests/", "datasets/", "benchmarks/")) for n in names)
    requires = [line.split(": ", 1)[1] for line in meta.splitlines()
                if line.startswith("Requires-Dist: ")]
    base = sorted(r for r in requires if "extra ==" not in r)
    assert base == ["networkx>=2.8", "torch-geometric>=2.7", "torch>=2.11"]
    bench = [r for r in requires if "extra == \"bench\"" in r]
    assert any(r.startswith("scikit-learn") for r in bench)
    assert any(r.startswith("ogb") for r in bench)
    with tarfile.open(sdist) as t:
        members = t.getnames()
    assert any(m.endswith("/pyproject.toml") for m in members)
    assert any(m.endswith("/qgfd_pyg/conv.py") for m in members)


@pytest.fixture(scope="module")
def user_env(built):
    """A fresh virtual environment with torch, PyG (and what they require) and the wheel:
    ``(python, env, folder)``."""
    tmp, wheel, _ = built
    venv = tmp / "venv"
    # nothing of this environment leaks in (a PYTHONPATH with the source tree would make pip
    # take the package as installed already)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, env=env)
    python = str(venv / "bin" / "python")
    deps = tmp / "deps"  # torch, PyG and what they require, linked from this environment
    _expose(_distributions(["torch", "torch-geometric"]), str(deps))
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    with open(os.path.join(site.stdout.strip(), "torch_and_pyg.pth"), "w") as f:
        f.write(str(deps) + "\n")
    done = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                           str(wheel)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return python, env, tmp


def test_wheel_installs_and_runs_with_only_torch_and_pyg(user_env):
    python, env, tmp = user_env
    ran = subprocess.run([python, "-c", USER_SCRIPT], capture_output=True, text=True,
                         timeout=600, cwd=str(tmp), env=env)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    lines = ran.stdout.strip().splitlines()
    assert lines[-1] == "OK"
    bench = [line for line in lines if line.startswith("BENCH:")]
    assert len(bench) == 1 and "qgfd-pyg[bench]" in bench[0] and "scikit-learn" in bench[0]


def test_readme_usage_runs_after_its_install_line(user_env):
    """The README's Usage block, in the environment its install line makes: the wheel (torch,
    PyG) plus what that line adds (SciPy: PyG's Planetoid reads Cora's raw files with it)."""
    python, env, tmp = user_env
    with open(os.path.join(ROOT, "README.md")) as f:
        usage = f.read().split("## Usage", 1)[1].split("\n## ", 1)[0]
    line = re.search(r"pip install qgfd-pyg[^\n`]*", usage).group(0)
    block = usage.split("```python", 1)[1].split("```", 1)[0]
    extra = line.split()[3:]  # what the line installs beside the package
    assert extra == ["scipy"], line
    folder = tmp / "usage_extra"
    if not folder.exists():
        _expose(_distributions(extra), str(folder))
    work = tmp / "usage_run"  # Cora's raw files only, as a clean checkout has them
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, "datasets", "Cora", "raw"),
                    work / "datasets" / "Cora" / "raw")
    ran = subprocess.run([python, "-c", block], capture_output=True, text=True, timeout=600,
                         cwd=str(work), env={**env, "PYTHONPATH": str(folder)})
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
