"""Fused ops: one file per op holding its kernels, launchers, autograd Function and reference."""

from glam_fast.ops import cuda_kernels  # noqa: F401  (CUDA C++ kernels; needs only torch to import)

try:
    import triton  # noqa: F401
except ImportError:  # the Triton ops need triton; `import glam_fast` must work without it
    pass
else:
    from glam_fast.ops import global_fusion  # noqa: F401
