"""Fused ops: one file per op holding its kernels, launchers, autograd Function and reference.

Importing this package registers the fused implementations with :mod:`glam_fast.dispatch`.
Without Triton the Triton imports are skipped, so ``import glam_fast`` and the PyTorch backend
still work.
"""

from glam_fast.ops import cuda_kernels  # noqa: F401  (CUDA C++ kernels; needs only torch to import)

try:
    import triton  # noqa: F401
except ImportError:  # the Triton ops need triton; `import glam_fast` must work without it
    triton = None

if triton is not None:
    from glam_fast.ops import afcn_forward, global_fusion, mssenet_forward  # noqa: F401  (register "afcn" / "mssenet")
