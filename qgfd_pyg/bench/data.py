"""Shared data utilities of the runner: nothing is downloaded.

Raw files must already sit under ``--root`` (the small sets ship in ``datasets/``); a missing
set is a :class:`MissingData` error that names the folder to fill.
"""
import contextlib
import os
from typing import Iterator
from unittest import mock

import torch


class MissingData(ValueError):
    """A data set's files are not on disk (the runner downloads nothing)."""


@contextlib.contextmanager
def no_download() -> Iterator[None]:
    """Loads through PyG's / OGB's dataset classes without their downloads: a dataset whose raw
    files are missing raises :class:`MissingData` naming its raw folder, before the dataset
    class creates any folder for them."""
    from torch_geometric.data import Dataset
    from torch_geometric.data.dataset import files_exist

    def refuse(self) -> None:
        if files_exist(self.raw_paths):
            return
        missing = [os.path.basename(p) for p in self.raw_paths if not os.path.exists(p)]
        raise MissingData(f"{type(self).__name__} data not found: {self.raw_dir} lacks "
                          f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}; "
                          f"put the data set's raw files there (nothing is downloaded)")

    with mock.patch.object(Dataset, "_download", refuse):
        yield


@contextlib.contextmanager
def full_torch_load():
    """OGB 1.3.6 reads its own processed file with a bare ``torch.load``, which torch >= 2.6
    restricts to weights; the file is one this process wrote, so allow full unpickling."""
    original = torch.load

    def load(*args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return original(*args, **kwargs)

    with mock.patch.object(torch, "load", load):
        yield
