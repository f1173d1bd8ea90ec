"""Fused ops: one file per op holding its kernels, launchers, autograd Function and reference.

Importing this package registers every op with torch.library, its kernels with
glam_fast.kernels (compile report) and the fused model implementations with glam_fast.dispatch.
Without Triton nothing is registered (the PyTorch reference still works).
"""

try:
    import triton  # noqa: F401
except ImportError:  # pragma: no cover - exercised only on machines without triton
    pass
else:
    from glam_fast.ops import (  # noqa: F401
        batch_norm_nhwc,
        conv2d_nhwc,
        conv_bn_relu,
        glam_forward,
        multiscale_block,
        partial_sums,
        stem,
    )
