"""The CPU inference forms (glam_fast.inference.prepare) equal the reference models."""

import collections
import copy
import pickle

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from glam_fast import AFCN, GLAM, MSSENet, winograd
from glam_fast import onednn as onednn_ops
from glam_fast.inference import fold_batch_norm, prepare
from tests.helpers import rel_err
from tests.score_helpers import randomize_batch_norm

FP32_TOL = 1e-5
needs_onednn = pytest.mark.skipif(not onednn_ops.available(torch.device("cpu"), torch.float32), reason="PyTorch built without oneDNN")


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


ONEDNN = [pytest.param(True, marks=needs_onednn), False]


@pytest.mark.parametrize("onednn", ONEDNN)
@pytest.mark.parametrize(
    "merge, channels_last, micro_batch",
    [(True, True, 2), (False, True, None), ((True, False, False), False, 4), ((False, True, False), True, 64)],
)
def test_glam_matches_reference(merge, channels_last, micro_batch, onednn):
    torch.manual_seed(1)
    model = randomize_batch_norm(GLAM((26, 57), num_classes=5), seed=1)
    x = torch.randn(11, 1, 26, 57)  # micro-batches of 2, 4 or all; the head's of 8 within them
    fast = prepare(model, merge_multiscale=merge, channels_last=channels_last, micro_batch=micro_batch, onednn=onednn)
    assert fast.onednn is onednn
    with torch.inference_mode():
        out = fast(x)
    assert out.shape == (11, 5)
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


@pytest.mark.parametrize("onednn", ONEDNN)
@pytest.mark.parametrize("micro_batch", ["auto", None, 1])
def test_mssenet_matches_reference(micro_batch, onednn):
    torch.manual_seed(3)
    model = randomize_batch_norm(MSSENet(num_classes=4, n_mfcc=13, n_blocks=4, n_filters=7), seed=3)
    fast = prepare(model, micro_batch=micro_batch, onednn=onednn)
    assert fast.micro_batch == {"auto": 2, None: None, 1: 1}[micro_batch]
    assert fast.onednn is onednn
    # T = 37 > every dilation (1..8); T = 6: the blocks of dilation 8 see only zero padding in the past
    for frames in (37, 6):
        x = torch.randn(5, frames, 13)
        with torch.inference_mode():
            out = fast(x)
        assert out.shape == (5, 4)
        assert rel_err(out, reference64(model, x)) < FP32_TOL


@pytest.mark.parametrize("onednn", ONEDNN)
@pytest.mark.parametrize("channels_last", [True, False])
def test_afcn_matches_reference_with_and_without_padding(channels_last, onednn):
    torch.manual_seed(4)
    model = AFCN(num_classes=3, attn_dim=8).eval()
    fast = prepare(model, channels_last=channels_last, onednn=onednn)
    assert fast.onednn is onednn
    x = torch.randn(3, 3, 70, 97)
    padded = torch.tensor([97, 80, 63])
    full = torch.tensor([97, 97, 97])
    with torch.inference_mode():
        assert rel_err(fast(x, padded), reference64(model, x, padded)) < FP32_TOL
        assert rel_err(fast(x, full), reference64(model, x, full)) < FP32_TOL
        assert rel_err(fast(x), reference64(model, x)) < FP32_TOL
        # batch 1 (without oneDNN: the NCHW trunk even when channels-last was asked for)
        assert rel_err(fast(x[1:2], padded[1:2]), reference64(model, x[1:2], padded[1:2])) < FP32_TOL
        assert rel_err(fast(x[:1]), reference64(model, x[:1])) < FP32_TOL


def test_afcn_micro_batches_split_the_lengths_too():
    """Micro-batches of 2 over a batch of 5 where only some micro-batches are padded."""
    torch.manual_seed(7)
    model = AFCN(num_classes=3, attn_dim=8).eval()
    fast = prepare(model, micro_batch=2)
    assert prepare(model).micro_batch == 16
    x = torch.randn(5, 3, 70, 97)
    lengths = torch.tensor([97, 97, 80, 97, 63])
    with torch.inference_mode():
        assert rel_err(fast(x, lengths), reference64(model, x, lengths)) < FP32_TOL
        assert rel_err(fast(x), reference64(model, x)) < FP32_TOL


def test_bad_input_is_rejected_by_name():
    fast = prepare(GLAM((26, 57), 4))
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 1, 26, 57\)"):
        fast(torch.randn(2, 1, 26, 50))
    with pytest.raises(TypeError, match="GLAM, MSSENet or AFCN"):
        prepare(torch.nn.Linear(3, 3))
    for bad in (0, -2, 2.5, "fast", True):
        with pytest.raises(ValueError, match="^micro_batch must be a positive int"):
            prepare(GLAM((26, 57), 4), micro_batch=bad)
        with pytest.raises(ValueError, match="^head_micro_batch must be a positive int"):
            prepare(GLAM((26, 57), 4), head_micro_batch=bad)
    for other in (MSSENet(4), AFCN(3)):
        for option in ({"head_micro_batch": 4}, {"merge_multiscale": True}):
            with pytest.raises(ValueError, match=f"apply to GLAM only, not to {type(other).__name__}"):
                prepare(other, **option)
    with pytest.raises(ValueError, match="lengths must lie"):
        prepare(AFCN(3))(torch.randn(1, 3, 70, 70), torch.tensor([10]))


class _CountOps(TorchDispatchMode):
    """Counts the ATen / oneDNN operators a forward dispatches."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


@needs_onednn
def test_onednn_is_used_where_available():
    """On the CPU in float32 prepare() picks the fused oneDNN calls by default, and they are the
    ones that run: every convolution that is not a Winograd layer (tests/test_winograd.py; at
    these sizes GLAM's conv5 and AFCN's conv2-5: GLAM 2 per multi-scale block + conv5, MS-SENet's
    three front-end branches, AFCN's 5), GLAM's gMLP projections (input as value and gate halves,
    output) when its head is not the native one (tests/test_gmlp_head_cpu.py) and AFCN's attention
    projection (tanh fused); no plain convolution, GELU or tanh is left."""
    glam = prepare(randomize_batch_norm(GLAM((26, 57), num_classes=4), seed=5), native=False)
    mssenet = prepare(randomize_batch_norm(MSSENet(num_classes=4, n_mfcc=13, n_blocks=3, n_filters=7), seed=5))
    afcn = prepare(AFCN(num_classes=3, attn_dim=8).eval())
    assert glam.onednn and mssenet.onednn and afcn.onednn
    native = winograd.native_available()
    cases = ((glam, torch.randn(2, 1, 26, 57), 6 if native else 7, 3), (mssenet, torch.randn(2, 20, 13), 3, 0), (afcn, torch.randn(2, 3, 70, 97), 1 if native else 5, 1))
    for model, x, convs, linears in cases:
        with torch.inference_mode(), _CountOps() as counted:
            model(x)
        assert counted.calls["mkldnn._convolution_pointwise"] == convs, counted.calls
        assert counted.calls["mkldnn._linear_pointwise"] == linears, counted.calls
        assert not any(name in counted.calls for name in ("aten.convolution", "aten.mkldnn_convolution", "aten.gelu", "aten.tanh")), counted.calls


@needs_onednn
def test_glam_head_runs_in_its_own_micro_batches():
    """Within a micro-batch, the gMLP head runs ``head_micro_batch`` segments per call (8 by
    default) while the convolutions run once for all; the logits are those of one call."""
    model = randomize_batch_norm(GLAM((26, 57), num_classes=4), seed=7)
    options = {"micro_batch": None, "native": False, "use_winograd": False}
    fast, whole = prepare(model, **options), prepare(model, head_micro_batch=None, **options)
    assert (fast.head_micro_batch, whole.head_micro_batch, prepare(model, head_micro_batch=3).head_micro_batch) == (8, None, 3)
    x = torch.randn(11, 1, 26, 57)
    for module, head_calls in ((fast, 2), (whole, 1)):  # 8 + 3 segments, or 11 at once
        with torch.inference_mode(), _CountOps() as counted:
            out = module(x)
        assert counted.calls["mkldnn._convolution_pointwise"] == 7, counted.calls
        assert counted.calls["mkldnn._linear_pointwise"] == 3 * head_calls, counted.calls
        assert rel_err(out, reference64(model, x)) < FP32_TOL


@needs_onednn
def test_onednn_module_copies_moves_and_gradients():
    """The packed weights are a cache: a deep copy or pickle of a used module works and gives the
    same logits; casting to float64 leaves oneDNN (it runs float32 only) and still matches; an
    input that requires grad runs PyTorch's ops and gets gradients."""
    torch.manual_seed(6)
    model = randomize_batch_norm(GLAM((26, 57), num_classes=4), seed=6)
    fast = prepare(model)
    x = torch.randn(3, 1, 26, 57)
    with torch.inference_mode():
        out = fast(x)
        assert torch.equal(copy.deepcopy(fast)(x), out)
        assert torch.equal(pickle.loads(pickle.dumps(fast))(x), out)
    as_double = copy.deepcopy(fast).double()
    assert not as_double.onednn
    with torch.inference_mode():
        out64 = as_double(x.double())
    assert out64.dtype == torch.float64  # (its weights were folded in float32: float32 tolerance)
    assert rel_err(out64, reference64(model, x)) < FP32_TOL
    xg = x.clone().requires_grad_()
    fast(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    plain, xp = prepare(model, onednn=False), x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(plain(xp).sum(), xp)
    assert rel_err(xg.grad, expected) < FP32_TOL


def test_onednn_required_but_unavailable_is_an_error():
    model = GLAM((26, 57), 4).double()
    with pytest.raises(RuntimeError, match=r"onednn=True.*float32.*torch.float64"):
        prepare(model, onednn=True)
    assert not prepare(model).onednn  # the default just leaves it out
