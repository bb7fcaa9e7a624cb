import os

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter (on CPU tensors); the flag is read
# when a kernel is defined, so it is set before anything imports one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
try:  # the property tests need hypothesis (the test extra); a bare GPU image may lack it
    from hypothesis import settings
except ImportError:
    settings = None
if settings is not None:
    settings.register_profile("default", deadline=None, max_examples=40)
    settings.load_profile("default")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device this machine has: the core equalities run on each (CUDA where present)."""
    return torch.device(request.param)
