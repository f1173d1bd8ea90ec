"""Fused ops: one file per op holding its kernels, launchers, autograd Function and reference."""

from glam_fast.ops import cuda_kernels  # noqa: F401  (CUDA C++ kernels; needs only torch to import)
