"""GLAM's multi-scale block as ONE 5x5 convolution C -> 2C (+ BatchNorm, ReLU, 2x2 max-pool):
the combined-weight identity, training (batch statistics, running statistics, every gradient),
eval with gradients, and folded inference, against the model's ResMultiConv in float64."""

import pytest
import torch
import torch.nn.functional as F

from glam_fast.ops.conv_bn_relu import conv_relu_inference
from glam_fast.ops.multiscale_block import combined_weight, fold_multiscale_block, multiscale_block, multiscale_block_ref
from tests.helpers import rel_err

NAMES = ["x", "conv3.weight", "conv3.bias", "conv5.weight", "conv5.bias", "bn.weight", "bn.bias"]


def _block(c, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(dtype)

    params = [r(c, c, 3, 3, scale=(9 * c) ** -0.5), r(c, scale=0.1), r(c, c, 5, 5, scale=(25 * c) ** -0.5), r(c, scale=0.1),
              r(2 * c, scale=0.1, shift=1.0), r(2 * c, scale=0.1)]  # fmt: skip
    running = [r(2 * c, scale=0.1), r(2 * c, scale=0.1, shift=1.0).abs()]
    return params, running


def test_combined_weight_is_the_two_branches_plus_identity():
    params, _ = _block(6)
    x = torch.randn(2, 6, 7, 9, dtype=torch.float64)
    w3, b3, w5, b5 = (p.double() for p in params[:4])
    w, b = combined_weight(w3, b3, w5, b5)
    expected = torch.cat([F.conv2d(x, w3, b3, padding=1) + x, F.conv2d(x, w5, b5, padding=2) + x], 1)
    assert rel_err(F.conv2d(x, w, b, padding=2), expected) < 1e-14


@pytest.mark.parametrize("batch, height, width, c, pool", [(1, 8, 57, 4, True), (3, 7, 63, 16, True), (5, 5, 9, 16, False), (3, 6, 7, 3, False)])
@pytest.mark.parametrize("training", [True, False])
def test_matches_reference_fp32(batch, height, width, c, pool, training):
    params, running = _block(c, seed=batch)
    x = torch.randn(batch, c, height, width).relu()  # the block's inputs are ReLU outputs
    leaves = [x.permute(0, 2, 3, 1).contiguous(), *params]
    for t in leaves:
        t.requires_grad_()
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref_running = [t.double() for t in running]
    out = multiscale_block(*leaves, *running, training=training, momentum=0.1, eps=1e-5, pool=pool)
    ref = multiscale_block_ref(ref_leaves[0].permute(0, 3, 1, 2), *ref_leaves[1:], *ref_running, training=training, momentum=0.1, eps=1e-5, pool=pool)
    ref = ref.permute(0, 2, 3, 1)
    assert out.shape == ref.shape
    assert rel_err(out, ref) < 5e-6
    assert rel_err(running[0], ref_running[0]) < 1e-6 and rel_err(running[1], ref_running[1]) < 1e-6

    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, grad)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad.double())
    for name, ours, theirs, weight_grad in zip(NAMES, grads, ref_grads, [None, None, grads[1], None, grads[3], None, None]):
        if training and weight_grad is not None:  # conv bias before batch-statistics BatchNorm: gradient 0
            assert ours.abs().max() < 1e-5 * weight_grad.abs().max(), name
        else:
            assert rel_err(ours, theirs) < 1e-5, name


@pytest.mark.parametrize("batch, pool", [(1, True), (5, False)])
def test_folded_inference(batch, pool):
    c = 16
    params, running = _block(c)
    x = torch.randn(batch, c, 9, 11).relu()
    ref = multiscale_block_ref(x.double(), *(p.double() for p in params), *(r.double() for r in running), training=False, momentum=0.1, eps=1e-5, pool=pool)
    x_nhwc = x.permute(0, 2, 3, 1).contiguous()
    for dtype, tol in ((torch.float32, 2e-6), (torch.float16, 2e-3)):
        weight, bias = fold_multiscale_block(*params, *running, 1e-5, dtype)
        with torch.no_grad():
            out = conv_relu_inference(x_nhwc.to(dtype), weight, bias, 5, pool=pool)
        assert out.dtype == dtype
        assert rel_err(out, ref.permute(0, 2, 3, 1)) < tol


def test_fp16_training():
    c = 8
    params, running = _block(c, dtype=torch.float16)
    x = torch.randn(3, 6, 9, c).relu().half().requires_grad_()
    out = multiscale_block(x, *params, *running, training=True, momentum=0.1, eps=1e-5, pool=True)
    ref_x = x.detach().double().requires_grad_()
    ref = multiscale_block_ref(ref_x.permute(0, 3, 1, 2), *(p.double() for p in params), *(r.double() for r in running),
                               training=True, momentum=0.1, eps=1e-5, pool=True).permute(0, 2, 3, 1)  # fmt: skip
    assert out.dtype == torch.float16 and rel_err(out, ref) < 3e-3
    grad = torch.randn(out.shape, dtype=torch.float16)
    (dx,) = torch.autograd.grad(out, x, grad)
    (ref_dx,) = torch.autograd.grad(ref, ref_x, grad.double())
    assert dx.dtype == torch.float16 and rel_err(dx, ref_dx) < 5e-3
