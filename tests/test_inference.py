"""The CPU inference forms (glam_fast.inference.prepare) equal the reference models."""

import pytest
import torch

from glam_fast import AFCN, GLAM, MSSENet
from glam_fast.inference import fold_batch_norm, prepare
from tests.helpers import rel_err
from tests.score_helpers import randomize_batch_norm

FP32_TOL = 1e-5


def reference64(model, *args):
    """The reference forward in float64 on a copy of ``model``."""
    import copy

    double = copy.deepcopy(model).double()
    return double.forward_reference(*(a.double() if a.is_floating_point() else a for a in args))


def test_fold_batch_norm_equals_conv_then_bn():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1)
    bn = randomize_batch_norm(torch.nn.Sequential(torch.nn.BatchNorm2d(5)))[0]
    x = torch.randn(2, 3, 7, 9)
    weight, bias = fold_batch_norm(conv.weight, conv.bias, bn)
    assert rel_err(torch.nn.functional.conv2d(x, weight, bias, padding=1), bn(conv(x))) < FP32_TOL


@pytest.mark.parametrize(
    "merge, channels_last, micro_batch",
    [(True, True, 2), (False, True, None), ((True, False, False), False, 4), ((False, True, False), True, 64)],
)
def test_glam_matches_reference(merge, channels_last, micro_batch):
    torch.manual_seed(1)
    model = randomize_batch_norm(GLAM((26, 57), num_classes=5), seed=1)
    x = torch.randn(5, 1, 26, 57)
    fast = prepare(model, merge_multiscale=merge, channels_last=channels_last, micro_batch=micro_batch)
    with torch.inference_mode():
        out = fast(x)
    assert out.shape == (5, 5)
    assert rel_err(out, reference64(model, x)) < FP32_TOL


def test_glam_other_shape_and_source_untouched():
    torch.manual_seed(2)
    model = randomize_batch_norm(GLAM((10, 23), num_classes=3), seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = prepare(model)
    x = torch.randn(3, 1, 10, 23)
    with torch.inference_mode():
        assert rel_err(fast(x), reference64(model, x)) < FP32_TOL
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in fast.parameters())


def test_mssenet_matches_reference():
    torch.manual_seed(3)
    model = randomize_batch_norm(MSSENet(num_classes=4, n_mfcc=13, n_blocks=4, n_filters=7), seed=3)
    x = torch.randn(3, 37, 13)
    with torch.inference_mode():
        out = prepare(model)(x)
    assert rel_err(out, reference64(model, x)) < FP32_TOL


@pytest.mark.parametrize("channels_last", [True, False])
def test_afcn_matches_reference_with_and_without_padding(channels_last):
    torch.manual_seed(4)
    model = AFCN(num_classes=3, attn_dim=8).eval()
    fast = prepare(model, channels_last=channels_last)
    x = torch.randn(3, 3, 70, 97)
    padded = torch.tensor([97, 80, 63])
    full = torch.tensor([97, 97, 97])
    with torch.inference_mode():
        assert rel_err(fast(x, padded), reference64(model, x, padded)) < FP32_TOL
        assert rel_err(fast(x, full), reference64(model, x, full)) < FP32_TOL
        assert rel_err(fast(x), reference64(model, x)) < FP32_TOL
        # batch 1 takes the NCHW trunk even when channels-last was asked for
        assert rel_err(fast(x[1:2], padded[1:2]), reference64(model, x[1:2], padded[1:2])) < FP32_TOL
        assert rel_err(fast(x[:1]), reference64(model, x[:1])) < FP32_TOL


def test_bad_input_is_rejected_by_name():
    fast = prepare(GLAM((26, 57), 4))
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 1, 26, 57\)"):
        fast(torch.randn(2, 1, 26, 50))
    with pytest.raises(TypeError, match="GLAM, MSSENet or AFCN"):
        prepare(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="lengths must lie"):
        prepare(AFCN(3))(torch.randn(1, 3, 70, 70), torch.tensor([10]))
