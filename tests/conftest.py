"""Test configuration.

Triton decides at import whether kernels are compiled or interpreted, so one process runs either the
CPU tests (Triton kernels on CPU tensors under TRITON_INTERPRET=1) or the GPU tests (marked ``gpu``:
compiled kernels on CUDA tensors), not both. Without a GPU the interpreter is switched on and the GPU
tests skip. On a machine with a GPU, run the two passes (bench/gpu_check.sh does):

    TRITON_INTERPRET=1 pytest -m "not gpu"     # the CPU suite
    pytest -m gpu                              # compiled kernels on the GPU
"""

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


INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip, skip_gpu_tests = pytest.mark.skip(reason="needs a CUDA device"), True
    elif INTERPRETING:
        skip, skip_gpu_tests = pytest.mark.skip(reason="GPU tests run compiled Triton: run them without TRITON_INTERPRET"), True
    else:
        skip, skip_gpu_tests = pytest.mark.skip(reason="CPU tests run Triton under its interpreter: run them with TRITON_INTERPRET=1"), False
    for item in items:
        if ("gpu" in item.keywords) == skip_gpu_tests:
            item.add_marker(skip)


@pytest.fixture
def seeded():
    """Seed torch's global RNG; returns the seed."""
    torch.manual_seed(1234)
    return 1234

