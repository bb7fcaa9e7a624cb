"""Where the runner's files are, and writing them atomically (a crash never leaves half a
file). Imports nothing heavy: the command line uses it before torch is loaded."""
import os
import tempfile
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]


def default_dir(name: str) -> str:
    """``datasets/`` / ``benchmarks/results`` of the source checkout, else of the cwd."""
    return str(_REPO / name) if (_REPO / "datasets").is_dir() else os.path.join(os.getcwd(), name)


def atomic_write(path: str, text: str) -> None:
    """Writes through a temporary file and a rename, so a crash never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
