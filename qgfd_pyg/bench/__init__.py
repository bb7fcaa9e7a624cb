"""``python -m qgfd_pyg.bench TASK``: QGFD against GAT, APPNP and GCN on one protocol.

The runner needs the ``bench`` extra (``pip install 'qgfd-pyg[bench]'``): scikit-learn for its
metrics, tqdm for progress bars, and OGB for the ``ogbn-*`` / ``ogbl-*`` tasks.
"""
import importlib.util as _util

_missing = [package for module, package in (("sklearn", "scikit-learn"), ("tqdm", "tqdm"))
            if _util.find_spec(module) is None]
if _missing:
    raise ImportError(f"qgfd_pyg.bench needs the runner's extra: pip install "
                      f"'qgfd-pyg[bench]' (missing: {', '.join(_missing)})")
