"""Fused ops: one file per op holding its kernels, launchers, autograd Function and reference.

Importing this package registers the fused model implementations with :mod:`glam_fast.dispatch`.
Without Triton the imports are skipped, so ``import glam_fast`` and the PyTorch backend still work.
"""

try:
    import triton  # noqa: F401
except ImportError:  # pragma: no cover - exercised only on machines without Triton
    triton = None

if triton is not None:
    from glam_fast.ops import afcn_forward, mssenet_forward  # noqa: F401  (register "afcn" / "mssenet")
