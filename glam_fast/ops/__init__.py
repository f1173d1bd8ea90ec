"""Fused ops: one file per op holding its kernels, launchers, autograd Function and reference.

Importing this package registers every op with torch.library, its kernels with
glam_fast.kernels (compile report) and the fused model implementations with glam_fast.dispatch.
Without Triton the Triton ops are skipped, so ``import glam_fast`` and the PyTorch backend still
work (the CUDA C++ ops need only torch to import).
"""

from glam_fast.ops import cuda_kernels, cuda_models  # noqa: F401

try:
    import triton  # noqa: F401
except ImportError:  # the Triton ops need triton; `import glam_fast` must work without it
    triton = None

if triton is not None:
    from glam_fast.ops._triton_compat import fix_interpreter_scalar_index

    fix_interpreter_scalar_index()
    from glam_fast.ops import (  # noqa: F401
        afcn_forward,
        batch_norm_nhwc,
        conv2d_nhwc,
        conv_bn_relu,
        glam_forward,
        global_fusion,
        multiscale_block,
        mssenet_forward,
        partial_sums,
        stem,
    )
