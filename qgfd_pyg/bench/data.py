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


class DownloadFailed(MissingData):
    """``--download`` was asked for, but the set's address could not be reached (or its
    transfer failed): the message names the address and the folder to fill by hand."""


# the exceptions a failed transfer raises: the OS's (refused, unreachable, timed out, TLS) and
# those of the HTTP clients PyG and OGB download through (fsspec + aiohttp, urllib)
_TRANSFER_MODULES = ("aiohttp", "fsspec", "urllib", "http", "requests", "ssl", "socket")


def _is_transfer_error(error: BaseException) -> bool:
    return isinstance(error, OSError) or any(
        klass.__module__.split(".")[0] in _TRANSFER_MODULES for klass in type(error).__mro__)


def download_failed(url: str, folder: str, error: BaseException) -> DownloadFailed:
    """One line: what could not be fetched from where, and where to put it by hand."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return DownloadFailed(f"could not download {url} ({type(error).__name__}"
                          f"{': ' + reason[:160] if reason else ''}); put the set's files in "
                          f"{folder} by hand, or retry where the address can be reached")


@functools.lru_cache(maxsize=None)
def _online(cls: type) -> type:
    """``cls`` whose ``download`` turns a failed transfer into :class:`DownloadFailed`
    (naming the dataset's address and its raw folder) instead of the client's traceback."""
    def download(self) -> None:
        try:
            cls.download(self)
        except Exception as error:
            if not _is_transfer_error(error):
                raise
            url = getattr(self, "url", None) or f"the address of {cls.__name__}"
            raise download_failed(str(url), self.raw_dir, error) from None

    return type(cls.__name__, (cls,), {"download": download, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


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


def _files(root: str) -> Set[str]:
    return {os.path.join(path, name) for path, _, names in os.walk(root) for name in names} \
        if os.path.isdir(root) else set()


@contextlib.contextmanager
def _leave_as_found(root: str) -> Iterator[None]:
    """On a :class:`MissingData` (a missing set, or a download that failed), remove what the
    block added under ``root``: its new files (a partial download) and new folders."""
    folders, files = _folders(root), _files(root)
    try:
        yield
    except MissingData:
        for path in _files(root) - files:
            with contextlib.suppress(OSError):
                os.remove(path)
        for path in sorted(_folders(root) - folders, key=len, reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(path)  # only empty folders go
        if not folders and os.path.isdir(root):
            with contextlib.suppress(OSError):
                os.rmdir(root)
        raise


def open_dataset(cls: type, root: str, **kwargs: Any) -> Any:
    """``cls(root=root, **kwargs)`` for a PyG dataset class (OGB's ``Pyg*Dataset`` included).

    With downloads allowed, a transfer that fails is a :class:`DownloadFailed` naming the
    address and the folder to fill. Otherwise the class's ``download`` step raises
    :class:`MissingData`. Either way what the class made on its way (its empty ``raw/``, a
    partial file) is removed again, so that a failed load leaves ``root`` as it was.
    OGB's processed files and split dictionaries are read with ``torch.load``'s default
    ``weights_only=True``; the PyG and numpy types they hold are allowed for that read.
    """
    build = _online(cls) if download_allowed() else _offline(cls)
    with _leave_as_found(root), torch.serialization.safe_globals(_ogb_file_types()):
        return build(root=root, **kwargs)


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
        folder = top = os.path.dirname(path) or "."
        while not os.path.exists(os.path.dirname(os.path.abspath(top))):
            top = os.path.dirname(os.path.abspath(top))  # the first folder it would create
        with _leave_as_found(top):
            try:
                download_url(url, folder, filename=os.path.basename(path))
            except Exception as error:
                if not _is_transfer_error(error):
                    raise
                raise download_failed(url, folder, error) from None
    return path
