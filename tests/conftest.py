"""Test configuration: Triton kernels run on CPU tensors under the interpreter when no GPU is present."""

import os

import pytest
import torch

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

