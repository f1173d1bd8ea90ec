"""MS-SENet dynamic fusion and classifier.

    z_b = sum_j w_j (g_{j,fwd,b} + g_{j,bwd,b})      g: each block's output averaged over time
    logits_b = W z_b + bias

The time means come from the temporal-block kernels (fp32), so this op only reads
(n_blocks, 2, B, F) numbers; one program handles BLOCK_B items.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from glam_fast.kernels import KernelSpec, register_compile_specs
from glam_fast.ops.utils import check_same_device, empty_output


@triton.jit
def _fused_means(means_ptr, fusion_w_ptr, items, cols, n_blocks, B, F, BLOCK_B: tl.constexpr, BLOCK_F: tl.constexpr):
    """z [BLOCK_B, BLOCK_F] fp32 = sum_j w_j (means[j, 0] + means[j, 1]) for the given items."""
    mask = (items < B)[:, None] & (cols < F)[None, :]
    offs = items[:, None] * F + cols[None, :]
    z = tl.zeros([BLOCK_B, BLOCK_F], dtype=tl.float32)
    for j in range(n_blocks):
        w = tl.load(fusion_w_ptr + j).to(tl.float32)
        fwd = tl.load(means_ptr + (j * 2) * B * F + offs, mask=mask, other=0.0)
        bwd = tl.load(means_ptr + (j * 2 + 1) * B * F + offs, mask=mask, other=0.0)
        z += w * (fwd + bwd)
    return z


@triton.jit
def _dynamic_fusion_forward_kernel(
    means_ptr, fusion_w_ptr, cls_w_ptr, cls_b_ptr, logits_ptr,
    n_blocks, B, F, C,
    BLOCK_B: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    items = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_F)
    classes = tl.arange(0, BLOCK_C)
    z = _fused_means(means_ptr, fusion_w_ptr, items, cols, n_blocks, B, F, BLOCK_B, BLOCK_F)
    w_t = tl.load(cls_w_ptr + classes[None, :] * F + cols[:, None], mask=(cols < F)[:, None] & (classes < C)[None, :], other=0.0).to(tl.float32)
    bias = tl.load(cls_b_ptr + classes, mask=classes < C, other=0.0).to(tl.float32)
    logits = tl.dot(z, w_t, input_precision="ieee") + bias[None, :]
    tl.store(logits_ptr + items[:, None] * C + classes[None, :], logits, mask=(items < B)[:, None] & (classes < C)[None, :])


@triton.jit
def _dynamic_fusion_backward_kernel(
    grad_logits_ptr, means_ptr, fusion_w_ptr, cls_w_ptr, grad_means_ptr, fusion_partial_ptr, cls_partial_ptr,
    n_blocks, B, F, C,
    BLOCK_B: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Grads of the block means (n, 2, B, F), and per-program partial grads of the fusion weights
    (n,) and of the classifier (C, F + 1: the bias grad in the last column)."""
    pid = tl.program_id(0)
    items = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_F)
    classes = tl.arange(0, BLOCK_C)
    item_mask = items < B
    g = tl.load(grad_logits_ptr + items[:, None] * C + classes[None, :], mask=item_mask[:, None] & (classes < C)[None, :], other=0.0).to(tl.float32)
    w = tl.load(cls_w_ptr + classes[:, None] * F + cols[None, :], mask=(classes < C)[:, None] & (cols < F)[None, :], other=0.0).to(tl.float32)
    dz = tl.dot(g, w, input_precision="ieee")  # [BLOCK_B, BLOCK_F]
    mask = item_mask[:, None] & (cols < F)[None, :]
    offs = items[:, None] * F + cols[None, :]
    for j in range(n_blocks):
        wj = tl.load(fusion_w_ptr + j).to(tl.float32)
        fwd_ptr = means_ptr + (j * 2) * B * F + offs
        pooled = tl.load(fwd_ptr, mask=mask, other=0.0) + tl.load(fwd_ptr + B * F, mask=mask, other=0.0)
        tl.store(fusion_partial_ptr + pid * n_blocks + j, tl.sum(tl.sum(pooled * dz, axis=1), axis=0))
        grad_ptr = grad_means_ptr + (j * 2) * B * F + offs
        tl.store(grad_ptr, wj * dz, mask=mask)
        tl.store(grad_ptr + B * F, wj * dz, mask=mask)
    z = _fused_means(means_ptr, fusion_w_ptr, items, cols, n_blocks, B, F, BLOCK_B, BLOCK_F)
    grad_w = tl.dot(tl.trans(g), z, input_precision="ieee")  # [BLOCK_C, BLOCK_F]
    row = cls_partial_ptr + pid * C * (F + 1)
    tl.store(row + classes[:, None] * (F + 1) + cols[None, :], grad_w, mask=(classes < C)[:, None] & (cols < F)[None, :])
    tl.store(row + classes * (F + 1) + F, tl.sum(g, axis=0), mask=classes < C)


_BLOCK_B = 16


def _blocks(channels: int, classes: int) -> tuple[int, int]:
    return max(16, triton.next_power_of_2(channels)), max(16, triton.next_power_of_2(classes))


def _check_inputs(op: str, means: Tensor, fusion_weight: Tensor, classifier_weight: Tensor, classifier_bias: Tensor) -> tuple[int, int, int, int]:
    if means.dim() != 4 or means.shape[1] != 2:
        raise ValueError(f"{op}: block_means must have shape (n_blocks, 2, B, F), got {tuple(means.shape)}")
    if means.dtype != torch.float32:
        raise TypeError(f"{op}: block_means must be float32 (time means from the block kernels), got {means.dtype}")
    n_blocks, _, batch, channels = means.shape
    classes = classifier_weight.shape[0]
    for name, t, shape in (
        ("fusion_weight", fusion_weight, (n_blocks,)),
        ("classifier_weight", classifier_weight, (classes, channels)),
        ("classifier_bias", classifier_bias, (classes,)),
    ):
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {shape} for block_means of shape {tuple(means.shape)}, got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    check_same_device(op, block_means=means, fusion_weight=fusion_weight, classifier_weight=classifier_weight, classifier_bias=classifier_bias)
    return n_blocks, batch, channels, classes


@torch.library.custom_op("glam_fast::dynamic_fusion", mutates_args=())
def dynamic_fusion(block_means: Tensor, fusion_weight: Tensor, classifier_weight: Tensor, classifier_bias: Tensor) -> Tensor:
    """block_means (n_blocks, 2, B, F) fp32, fusion_weight (n_blocks,), classifier (C, F) + (C,) -> logits (B, C) fp32."""
    n_blocks, batch, channels, classes = _check_inputs("dynamic_fusion", block_means, fusion_weight, classifier_weight, classifier_bias)
    block_f, block_c = _blocks(channels, classes)
    logits = empty_output((batch, classes), dtype=torch.float32, device=block_means.device)
    _dynamic_fusion_forward_kernel[(triton.cdiv(batch, _BLOCK_B),)](
        block_means.contiguous(), fusion_weight.contiguous(), classifier_weight.contiguous(), classifier_bias.contiguous(), logits,
        n_blocks, batch, channels, classes, BLOCK_B=_BLOCK_B, BLOCK_F=block_f, BLOCK_C=block_c, num_warps=4,
    )  # fmt: skip
    return logits


@dynamic_fusion.register_fake
def _(block_means, fusion_weight, classifier_weight, classifier_bias):
    _, batch, _, classes = _check_inputs("dynamic_fusion", block_means, fusion_weight, classifier_weight, classifier_bias)
    return block_means.new_empty((batch, classes))


@torch.library.custom_op("glam_fast::dynamic_fusion_backward", mutates_args=())
def dynamic_fusion_backward(grad_logits: Tensor, block_means: Tensor, fusion_weight: Tensor, classifier_weight: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Grads of block_means (fp32), fusion_weight, classifier_weight and classifier_bias (fp32)."""
    n_blocks, _, batch, channels = block_means.shape
    classes = classifier_weight.shape[0]
    block_f, block_c = _blocks(channels, classes)
    programs = triton.cdiv(batch, _BLOCK_B)
    device = block_means.device
    grad_means = empty_output(block_means.shape, dtype=torch.float32, device=device)
    fusion_partial = empty_output((programs, n_blocks), dtype=torch.float32, device=device)
    cls_partial = empty_output((programs, classes, channels + 1), dtype=torch.float32, device=device)
    _dynamic_fusion_backward_kernel[(programs,)](
        grad_logits.contiguous(), block_means.contiguous(), fusion_weight.contiguous(), classifier_weight.contiguous(),
        grad_means, fusion_partial, cls_partial, n_blocks, batch, channels, classes,
        BLOCK_B=_BLOCK_B, BLOCK_F=block_f, BLOCK_C=block_c, num_warps=4,
    )  # fmt: skip
    cls = cls_partial.sum(dim=0)
    return grad_means, fusion_partial.sum(dim=0), cls[:, :channels].contiguous(), cls[:, channels].contiguous()


@dynamic_fusion_backward.register_fake
def _(grad_logits, block_means, fusion_weight, classifier_weight):
    classes, channels = classifier_weight.shape
    new = block_means.new_empty
    return torch.empty_like(block_means), new(fusion_weight.shape), new((classes, channels)), new((classes,))


def _setup_context(ctx, inputs, output):
    block_means, fusion_weight, classifier_weight, classifier_bias = inputs
    ctx.save_for_backward(block_means, fusion_weight, classifier_weight)
    ctx.dtypes = (fusion_weight.dtype, classifier_weight.dtype, classifier_bias.dtype)


def _backward(ctx, grad_logits):
    block_means, fusion_weight, classifier_weight = ctx.saved_tensors
    grad_means, grad_fusion, grad_cls_w, grad_cls_b = dynamic_fusion_backward(grad_logits, block_means, fusion_weight, classifier_weight)
    return grad_means, grad_fusion.to(ctx.dtypes[0]), grad_cls_w.to(ctx.dtypes[1]), grad_cls_b.to(ctx.dtypes[2])


dynamic_fusion.register_autograd(_backward, setup_context=_setup_context)


def dynamic_fusion_ref(block_means: Tensor, fusion_weight: Tensor, classifier_weight: Tensor, classifier_bias: Tensor) -> Tensor:
    """Plain PyTorch, same signature: (B, C) logits."""
    fused = torch.einsum("nbf,n->bf", block_means.sum(dim=1), fusion_weight)
    return torch.nn.functional.linear(fused, classifier_weight, classifier_bias)


@register_compile_specs
def _compile_specs():
    consts = {"BLOCK_B": _BLOCK_B, "BLOCK_F": 64, "BLOCK_C": 16}
    scalars = {"n_blocks": "i32", "B": "i32", "F": "i32", "C": "i32", **{k: "constexpr" for k in consts}}
    p = "*fp32"
    sig = {"means_ptr": p, "fusion_w_ptr": p, "cls_w_ptr": p, "cls_b_ptr": p, "logits_ptr": p, **scalars}
    yield KernelSpec("dynamic_fusion", "_dynamic_fusion_forward_kernel", _dynamic_fusion_forward_kernel, sig, consts, num_warps=4)
    sig = {"grad_logits_ptr": p, "means_ptr": p, "fusion_w_ptr": p, "cls_w_ptr": p, "grad_means_ptr": p, "fusion_partial_ptr": p, "cls_partial_ptr": p, **scalars}
    yield KernelSpec("dynamic_fusion", "_dynamic_fusion_backward_kernel", _dynamic_fusion_backward_kernel, sig, consts, num_warps=4)
