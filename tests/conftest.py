"""Test configuration: Triton kernels run on CPU tensors under the interpreter when no GPU is present."""

import os

# The interpreter runs tl.dot through numpy; a multi-threaded OpenBLAS on 2 shared cores makes a
# 128x64x128 matmul ~500x slower than one thread does. Must be set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Must be set before any Triton kernel is defined (glam_fast.ops imports define them).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Kernel outputs allocated through glam_fast.ops.utils.empty_output start as NaN.
os.environ.setdefault("GLAM_FAST_POISON", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def seeded():
    """Seed torch's global RNG; returns the seed."""
    torch.manual_seed(1234)
    return 1234

