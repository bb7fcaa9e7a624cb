#!/usr/bin/env bash
# The package at the lower bounds of its dependencies (torch 2.11, the GPU image's, and PyG 2.7),
# on this CPU machine: a fresh virtual environment with the CPU-usable parts of torch 2.11 from
# PyPI (about 3 GB with its CUDA libraries), PyG 2.7 and the test tools; no numba, torch-sparse,
# pyg-lib or Triton interpreter runs (as on the GPU image). It runs the tests of the layers,
# the diffusion, the flow and the models, and the wheel-install test. Not part of CI (it
# downloads); the last results are in docs/install.md.
#
#   bash .ci/lower_bounds.sh [VENV [pytest options]]   (default VENV: /tmp/qgfd-lower-bounds)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="${1:-/tmp/qgfd-lower-bounds}"
[ $# -gt 0 ] && shift
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# PIP_CONSTRAINT= : a machine-wide constraints file may cap torch to the releases on its disk
PIP_CONSTRAINT= "$venv/bin/python" -m pip install -q "torch==2.11.0" "torch-geometric==2.7.0" \
    "networkx==2.8" pytest hypothesis scipy scikit-learn build setuptools wheel packaging
"$venv/bin/python" -c "import torch, torch_geometric, networkx; print('torch', torch.__version__,
'| PyG', torch_geometric.__version__, '| networkx', networkx.__version__)"
PYTHONPATH="$PWD" "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_conv.py tests/test_models.py tests/test_diffusion.py tests/test_flow.py \
    tests/test_edge_ops.py tests/test_structure.py tests/test_attention.py \
    tests/test_without_torch_sparse.py tests/test_install.py "$@"
