"""GLAM's stem (conv1a || conv1b, two BatchNorms, ReLU, concat along height) as one kernel:
forward, every gradient and the running statistics against the model's own layers in float64."""

import pytest
import torch

from glam_fast.ops.stem import stem, stem_inference, stem_ref
from tests.helpers import rel_err

C = 16


def _params(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(dtype)

    conv = [r(C, 1, 3, 1, scale=0.5), r(C, scale=0.1), r(C, 1, 1, 3, scale=0.5), r(C, scale=0.1)]
    bn_a = [r(C, scale=0.1, shift=1.0), r(C, scale=0.1), r(C, scale=0.1), r(C, scale=0.1, shift=1.0).abs()]
    bn_b = [r(C, scale=0.1, shift=1.0), r(C, scale=0.1), r(C, scale=0.1), r(C, scale=0.1, shift=1.0).abs()]
    return conv, bn_a, bn_b


@pytest.mark.parametrize("batch, height, width", [(1, 26, 57), (3, 13, 63), (5, 6, 41)])
@pytest.mark.parametrize("training", [True, False])
def test_matches_reference_forward_backward_fp32(batch, height, width, training):
    conv, bn_a, bn_b = _params(batch)
    x = torch.randn(batch, 1, height, width)
    leaves = [x, *conv, bn_a[0], bn_a[1], bn_b[0], bn_b[1]]
    for t in leaves:
        t.requires_grad_()
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref_bn_a = [ref_leaves[5], ref_leaves[6], bn_a[2].double(), bn_a[3].double()]
    ref_bn_b = [ref_leaves[7], ref_leaves[8], bn_b[2].double(), bn_b[3].double()]

    out = stem(x, *conv, bn_a, bn_b, training=training, momentum=0.1, eps=1e-5)
    ref = stem_ref(ref_leaves[0], *ref_leaves[1:5], ref_bn_a, ref_bn_b, training=training, momentum=0.1, eps=1e-5)
    assert out.shape == (batch, 2 * height, width, C)
    assert rel_err(out, ref.permute(0, 2, 3, 1)) < 2e-6
    for ours, theirs in zip(bn_a[2:] + bn_b[2:], ref_bn_a[2:] + ref_bn_b[2:]):  # updated in place in training
        assert rel_err(ours, theirs) < 1e-6

    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, grad)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad.double().permute(0, 3, 1, 2))
    names = ["x", "conv1a.weight", "conv1a.bias", "conv1b.weight", "conv1b.bias", "bn1a.weight", "bn1a.bias", "bn1b.weight", "bn1b.bias"]
    for name, ours, theirs in zip(names, grads, ref_grads):
        if training and name.endswith("conv1a.bias") or training and name.endswith("conv1b.bias"):
            # BatchNorm subtracts the batch mean: the conv bias has no effect, its gradient is 0
            assert ours.abs().max() < 1e-5 * grads[1].abs().max(), name
        else:
            assert rel_err(ours, theirs) < 5e-6, name


def test_fp16_and_inference_kernel():
    conv, bn_a, bn_b = _params(7)
    x = torch.randn(3, 1, 10, 17)
    ref = stem_ref(x.double(), *(t.double() for t in conv), [t.double() for t in bn_a], [t.double() for t in bn_b], training=False, momentum=0.1, eps=1e-5)
    ref = ref.permute(0, 2, 3, 1)
    bn = [torch.cat([a, b]) for a, b in zip(bn_a, bn_b)]
    with torch.no_grad():
        out = stem_inference(x, *conv, *bn, 1e-5)
        half = stem_inference(x.half(), *(t.half() for t in conv), *bn, 1e-5)
    assert rel_err(out, ref) < 2e-6
    assert half.dtype == torch.float16 and rel_err(half, ref) < 2e-3


def test_fp16_training_gradients():
    conv, bn_a, bn_b = _params(3, torch.float16)
    x = torch.randn(3, 1, 7, 9, dtype=torch.float16, requires_grad=True)
    out = stem(x, *conv, bn_a, bn_b, training=True, momentum=0.1, eps=1e-5)
    ref_x = x.detach().double().requires_grad_()
    ref = stem_ref(ref_x, *(t.double() for t in conv), [t.double() for t in bn_a], [t.double() for t in bn_b], training=True, momentum=0.1, eps=1e-5)
    assert out.dtype == torch.float16 and rel_err(out, ref.permute(0, 2, 3, 1)) < 3e-3
    grad = torch.randn(out.shape, dtype=torch.float16)
    (dx,) = torch.autograd.grad(out, x, grad)
    (ref_dx,) = torch.autograd.grad(ref, ref_x, grad.double().permute(0, 3, 1, 2))
    assert dx.dtype == torch.float16 and rel_err(dx, ref_dx) < 5e-3


def test_opcheck():
    conv, bn_a, bn_b = _params(1)
    x = torch.randn(2, 1, 5, 6, requires_grad=True)
    bn = [torch.cat([a, b]) for a, b in zip(bn_a, bn_b)]
    weights = [t.clone().requires_grad_() for t in conv + bn[:2]]
    for batch_stats in (True, False):
        torch.library.opcheck(torch.ops.glam_fast.stem, (x, *weights, *bn[2:], batch_stats, 1e-5))
        out, mean, var = torch.ops.glam_fast.stem(x.detach(), *conv, *bn, batch_stats, 1e-5)
        torch.library.opcheck(torch.ops.glam_fast.stem_backward, (torch.randn_like(out), x.detach(), *conv, *bn[:2], mean, var, batch_stats, 1e-5))
    torch.library.opcheck(torch.ops.glam_fast.stem_inference, (x.detach(), *conv, *bn, 1e-5))


def test_bad_inputs_are_named():
    conv, bn_a, bn_b = _params(1)
    with pytest.raises(ValueError, match=r"1-channel image \(B, 1, H, W\)"):
        stem(torch.randn(2, 3, 5, 6), *conv, bn_a, bn_b, training=True, momentum=0.1, eps=1e-5)
    with pytest.raises(ValueError, match="conv1a weight"):
        stem(torch.randn(2, 1, 5, 6), conv[2], conv[1], conv[0], conv[3], bn_a, bn_b, training=True, momentum=0.1, eps=1e-5)
