"""Conv + BatchNorm + ReLU (+ pool) ops (GLAM's conv5, and the engine of the multi-scale blocks):
channels-first output for the fusion head, every gradient, opcheck, the autocast policy."""

import pytest
import torch

from glam_fast.ops.conv_bn_relu import conv_bn_relu, conv_bn_relu_ref, conv_relu_inference, fold_conv_bn
from tests.helpers import rel_err


def _layer(c, n, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, c, k, k, generator=g) / (c * k * k) ** 0.5
    bias = torch.randn(n, generator=g) * 0.1
    bn = [torch.rand(n, generator=g) + 0.5, torch.randn(n, generator=g) * 0.1]
    running = [torch.randn(n, generator=g) * 0.1, torch.rand(n, generator=g) + 0.5]
    return [weight, bias, *bn], running


@pytest.mark.parametrize("batch, height, width, training", [(1, 13, 14, True), (3, 3, 5, False), (5, 4, 3, True)])
def test_conv5_layer_channels_first(batch, height, width, training):
    params, running = _layer(24, 20, seed=batch)
    x = torch.randn(batch, height, width, 24).relu().requires_grad_()
    leaves = [x, *(p.requires_grad_() for p in params)]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref_running = [r.double() for r in running]
    out = conv_bn_relu(*leaves, *running, training=training, momentum=0.1, eps=1e-5, channels_first_out=True)
    ref = conv_bn_relu_ref(*ref_leaves, *ref_running, training=training, momentum=0.1, eps=1e-5, channels_first_out=True)
    assert out.shape == (batch, 20, height, width) and out.is_contiguous()
    assert rel_err(out, ref) < 5e-6
    assert rel_err(running[0], ref_running[0]) < 1e-6 and rel_err(running[1], ref_running[1]) < 1e-6
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, grad)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad.double())
    for i, (ours, theirs) in enumerate(zip(grads, ref_grads)):
        if training and i == 2:  # conv bias before batch-statistics BatchNorm: gradient 0
            assert ours.abs().max() < 1e-5 * grads[1].abs().max()
        else:
            assert rel_err(ours, theirs) < 1e-5, i


def test_inference_matches_eval_reference():
    params, running = _layer(16, 32)
    x = torch.randn(3, 5, 7, 16).relu()
    ref = conv_bn_relu_ref(x.double(), *(p.double() for p in params), *(r.double() for r in running), training=False, momentum=0.1, eps=1e-5, pool=True)
    weight, bias = fold_conv_bn(*params, *running, 1e-5, torch.float32)
    with torch.no_grad():
        out = conv_relu_inference(x, weight, bias, 5, pool=True)
    assert rel_err(out, ref) < 2e-6


def test_autocast_runs_the_kernels_in_the_autocast_dtype():
    """Explicit cast policy: activation and conv weight in the autocast dtype, BatchNorm in fp32;
    parameter gradients come back in the parameters' dtype."""
    params, running = _layer(8, 8)
    leaves = [p.requires_grad_() for p in params]
    x = torch.randn(2, 5, 6, 8).relu()
    with torch.autocast("cpu", dtype=torch.float16):
        out = conv_bn_relu(x, *leaves, *running, training=True, momentum=0.1, eps=1e-5)
    assert out.dtype == torch.float16
    ref = conv_bn_relu_ref(x.double(), *(p.detach().double() for p in params), *(r.double().clone() for r in running), training=True, momentum=0.1, eps=1e-5)
    assert rel_err(out, ref) < 3e-3
    out.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in leaves)
    assert running[0].dtype == torch.float32


def test_opcheck():
    params, running = _layer(4, 6, k=3)
    x = torch.randn(2, 4, 5, 4, requires_grad=True)
    leaves = [p.clone().requires_grad_() for p in params]
    for pool, channels_first_out, batch_stats in [(True, False, True), (False, True, False)]:
        args = (x, *leaves, *running, pool, channels_first_out, batch_stats, 1e-5)
        torch.library.opcheck(torch.ops.glam_fast.conv_bn_relu, args)
        out, y, mean, var = torch.ops.glam_fast.conv_bn_relu(*args)
        backward_args = (torch.randn_like(out), x.detach(), params[0], y, mean, var, params[2], params[3], pool, channels_first_out, batch_stats, 1e-5)
        torch.library.opcheck(torch.ops.glam_fast.conv_bn_relu_backward, backward_args)
    weight, bias = fold_conv_bn(*params, *running, 1e-5, torch.float32)
    torch.library.opcheck(torch.ops.glam_fast.conv_relu_inference, (x.detach(), weight, bias, 3, True, False))


def test_bad_inputs_are_named():
    params, running = _layer(4, 6)
    with pytest.raises(ValueError, match=r"\(N, C, KH, KW\) with C = 5"):
        conv_bn_relu(torch.randn(1, 3, 3, 5), *params, *running, training=True, momentum=0.1, eps=1e-5)
    with pytest.raises(ValueError, match=r"must have 6 channels \(the conv's outputs\), got shape \(5,\)"):
        conv_bn_relu(torch.randn(1, 3, 3, 4), *params[:3], params[3][:5], *running, training=True, momentum=0.1, eps=1e-5)
