"""Where the runner's data comes from.

By default nothing is downloaded: raw files must already sit under ``--root`` (the small sets
ship in ``datasets/``), and a missing set is a :class:`MissingData` error that names the folder
to fill and the ``--download`` flag. With ``--download`` (:func:`downloads`), the sets that PyG
or OGB can fetch are fetched by their own dataset classes, and the few files PyG has no class
for (the filtered heterophilous graphs, HotpotQA) from their published addresses
(:func:`fetch_file`).
"""
import contextlib
import contextvars
import functools
import importlib.util
import os
from typing import Any, Iterator, Set

import torch

_DOWNLOAD = contextvars.ContextVar("qgfd_bench_download", default=False)

HINT = "or pass --download to fetch it"


class MissingData(ValueError):
    """A data set's files are not on disk (and downloading was not asked for)."""


def missing_data(message: str, downloadable: bool = True) -> MissingData:
    """A :class:`MissingData` with ``message`` (which says where the files go), followed by
    the ``--download`` hint where the set can be fetched, or by the fact that it cannot."""
    tail = HINT if downloadable else "this set cannot be downloaded by the runner"
    return MissingData(f"{message}; {tail}")


@contextlib.contextmanager
def downloads(allowed: bool) -> Iterator[None]:
    """Within the block, loaders may download missing sets (``allowed``) or must not."""
    token = _DOWNLOAD.set(bool(allowed))
    try:
        yield
    finally:
        _DOWNLOAD.reset(token)


def download_allowed() -> bool:
    """Whether the loader running now may download (``--download``)."""
    return _DOWNLOAD.get()


@functools.lru_cache(maxsize=None)
def _offline(cls: type) -> type:
    """``cls`` whose ``download`` (PyG's hook, called only when raw files are missing) raises
    :class:`MissingData` naming the raw folder and the files it lacks."""
    def download(self) -> None:
        missing = [os.path.basename(p) for p in self.raw_paths if not os.path.exists(p)]
        more = " ..." if len(missing) > 4 else ""
        raise missing_data(f"{cls.__name__} data not found: {self.raw_dir} lacks "
                           f"{', '.join(missing[:4])}{more}; put the set's raw files there")

    return type(cls.__name__, (cls,), {"download": download, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


def _folders(root: str) -> Set[str]:
    return {path for path, _, _ in os.walk(root)} if os.path.isdir(root) else set()


def open_dataset(cls: type, root: str, **kwargs: Any) -> Any:
    """``cls(root=root, **kwargs)`` for a PyG dataset class (OGB's ``Pyg*Dataset`` included).

    With downloads allowed this is the class as it is. Otherwise the class's ``download``
    step raises :class:`MissingData`, and the folders the class made on its way (its empty
    ``raw/``) are removed again, so that a failed load leaves ``root`` as it was.
    OGB's processed files and split dictionaries are read with ``torch.load``'s default
    ``weights_only=True``; the PyG and numpy types they hold are allowed for that read.
    """
    build = cls if download_allowed() else _offline(cls)
    before = _folders(root)
    try:
        with torch.serialization.safe_globals(_ogb_file_types()):
            return build(root=root, **kwargs)
    except MissingData:
        for path in sorted(_folders(root) - before, key=len, reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(path)  # only empty folders go
        if not before and os.path.isdir(root):
            with contextlib.suppress(OSError):
                os.rmdir(root)
        raise


def split_dict(dataset: Any, method: str) -> Any:
    """``dataset.method()`` (OGB's ``get_idx_split`` / ``get_edge_split``) with the types of
    OGB's split files allowed for ``torch.load(weights_only=True)``."""
    with torch.serialization.safe_globals(_ogb_file_types()):
        return getattr(dataset, method)()


@functools.lru_cache(maxsize=None)
def _ogb_file_types() -> list:
    import numpy as np
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import GlobalStorage

    dtypes = [type(np.dtype(t)) for t in (np.bool_, np.int32, np.int64, np.float32,
                                          np.float64)]
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    return [DataEdgeAttr, DataTensorAttr, GlobalStorage, np.ndarray, np.dtype,
            core.multiarray._reconstruct] + dtypes


def require_ogb(task: str) -> None:
    """A ValueError naming the ``bench`` extra when OGB, which ``task`` reads through, is not
    installed (the rest of the runner works without it)."""
    if importlib.util.find_spec("ogb") is None:
        raise ValueError(f"task {task} reads its data through OGB, which is not installed: "
                         f"pip install 'qgfd-pyg[bench]' (or pip install ogb)")


def fetch_file(url: str, path: str) -> str:
    """Downloads ``url`` to ``path`` (through PyG's ``download_url``) if downloads are allowed
    and ``path`` does not exist yet; returns ``path``."""
    from torch_geometric.data import download_url

    if download_allowed() and not os.path.exists(path):
        download_url(url, os.path.dirname(path) or ".", filename=os.path.basename(path))
    return path
