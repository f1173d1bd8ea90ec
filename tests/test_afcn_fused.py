"""Fused AFCN (backend "triton": cuDNN trunk + Triton attention pooling and classifier) against
the reference model: variable lengths, every gradient, dtypes, torch.compile, no silent fallback."""

import copy

import pytest
import torch
import torch.nn.functional as F

import glam_fast
from glam_fast import AFCN
from glam_fast.ops import afcn_forward
from tests.helpers import rel_err


@pytest.fixture(autouse=True)
def _seed(seeded):
    """Every test starts from the same global RNG state."""


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return AFCN(num_classes=5).eval()


def fused(model, *args, **kwargs):
    with glam_fast.backend("triton"):
        return model(*args, **kwargs)


def reference(model, *args, **kwargs):
    with glam_fast.backend("torch"):
        return model(*args, **kwargs)


def padded_batch(model, freq, lengths):
    return torch.randn(len(lengths), 3, freq, max(lengths)) * 3, torch.tensor(lengths)


def test_variable_lengths_match_the_reference(model):
    """All lengths different, including the shortest input the trunk accepts (one output frame)."""
    x, lengths = padded_batch(model, 64, [model.min_size, 150, 97, 211, 64])
    with torch.no_grad():
        logits, alpha = fused(model, x, lengths, return_attention=True)
        want, want_alpha = reference(model, x, lengths, return_attention=True)
    assert logits.dtype == alpha.dtype == torch.float32
    assert rel_err(logits, want) < 1e-5
    assert rel_err(alpha, want_alpha) < 1e-5
    for i, n in enumerate(lengths.tolist()):
        assert torch.count_nonzero(alpha[i, :, model.output_size(n) :]) == 0


def test_padded_batch_equals_each_item_alone(model):
    x, lengths = padded_batch(model, 70, [80, model.min_size, 121])
    with torch.no_grad():
        logits = fused(model, x, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone = fused(model, x[i : i + 1, :, :, :n])
            assert rel_err(logits[i : i + 1], alone) < 1e-5, i


def test_no_lengths_matches_the_reference(model):
    x = torch.randn(2, 3, 67, 90)
    with torch.no_grad():
        assert rel_err(fused(model, x), reference(model, x)) < 1e-5


def test_training_gradients_match_float64_reference():
    """Every gradient, trunk included, against float64; the attention grads are ill-conditioned
    (eager fp32 itself is ~1e-4 .. 1e-2 off), so each is held to twice eager fp32's error."""
    torch.manual_seed(4)
    net = AFCN(num_classes=3, attn_dim=96).train()
    eager = copy.deepcopy(net)
    ref = copy.deepcopy(net).double()
    x, lengths = padded_batch(net, 63, [100, 63, 81])
    upstream = torch.randn(3, 3, dtype=torch.float64)
    grads_of_x = []
    for m, run, dtype in ((net, fused, torch.float32), (eager, reference, torch.float32), (ref, reference, torch.float64)):
        xx = x.detach().to(dtype).clone().requires_grad_()
        logits, alpha = run(m, xx, lengths, return_attention=True)
        ((logits.double() * upstream).sum() + alpha.double().square().sum()).backward()
        grads_of_x.append(xx.grad)
        if m is net:
            out = logits
        elif m is ref:
            want = logits
    assert rel_err(out, want) < 1e-5
    assert rel_err(grads_of_x[0], grads_of_x[2]) <= 2 * rel_err(grads_of_x[1], grads_of_x[2]) + 1e-6
    for (name, p), e, r in zip(net.named_parameters(), eager.parameters(), ref.parameters()):
        assert rel_err(p.grad, r.grad) <= 2 * rel_err(e.grad, r.grad) + 1e-6, name


def test_fp16_model_within_twice_the_eager_half_error(model):
    half = copy.deepcopy(model).half()
    ref = copy.deepcopy(model).double()
    x, lengths = padded_batch(model, 64, [120, 70, 95])
    with torch.no_grad():
        logits, alpha = fused(half, x.half(), lengths, return_attention=True)
        eager, eager_alpha = reference(half, x.half(), lengths, return_attention=True)
        want, want_alpha = reference(ref, x.double(), lengths, return_attention=True)
    assert logits.dtype == alpha.dtype == torch.float16
    assert rel_err(logits, want) <= 2 * rel_err(eager, want) + 1e-4
    assert rel_err(alpha, want_alpha) <= 2 * rel_err(eager_alpha, want_alpha) + 1e-4


def test_autocast_dtypes_match_the_reference(model):
    x, lengths = padded_batch(model, 64, [90, 70])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        logits, alpha = fused(model, x, lengths, return_attention=True)
        want, want_alpha = reference(model, x, lengths, return_attention=True)
    assert (logits.dtype, alpha.dtype) == (want.dtype, want_alpha.dtype)
    assert rel_err(logits, want) < 2e-2


def test_attention_runs_no_pytorch_compute(model, monkeypatch):
    """The trunk stays on PyTorch convolutions; the attention pooling and classifier must not."""
    counts = {}
    for target, name in ((F, "linear"), (F, "softmax"), (torch, "softmax"), (torch, "tanh"), (torch, "bmm"), (F, "conv2d")):
        real = getattr(target, name)

        def counting(*args, _real=real, _key=name, **kwargs):
            counts[_key] = counts.get(_key, 0) + 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(target, name, counting)
    x, lengths = padded_batch(model, 64, [90, 70])
    with torch.no_grad():
        fused(model, x, lengths)
    assert counts == {"conv2d": 5}
    with torch.no_grad():
        reference(model, x, lengths)
    assert counts["linear"] > 0 and counts["tanh"] > 0  # the counters do see the reference's ops


def test_torch_compile_fullgraph_matches_eager(model):
    x, lengths = padded_batch(model, 64, [90, 70])
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, lengths: afcn_forward.afcn_forward(model, x, lengths), fullgraph=True)
    with torch.no_grad():
        assert rel_err(compiled(x, lengths), fused(model, x, lengths)) < 1e-6


@pytest.mark.gpu
def test_gpu_bf16_variable_lengths_match_reference():
    torch.manual_seed(0)
    net = AFCN().cuda().train()
    ref = copy.deepcopy(net).double()
    lengths = torch.randint(net.min_size, 400, (64,), device="cuda")
    x = torch.randn(64, 3, 128, 400, device="cuda")
    eager_net = copy.deepcopy(net)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = fused(net, x, lengths)
        eager = reference(eager_net, x, lengths)
    want = reference(ref, x.double(), lengths)
    assert rel_err(out, want) <= 2 * rel_err(eager, want) + 1e-3
    upstream = torch.randn_like(want)
    for o in (out, eager, want):
        (o.double() * upstream).sum().backward()
    # Each gradient within twice eager autocast's own error (the first convolution's weight gradient
    # sums bf16 products over every output pixel: eager's error there is far above 5e-2 too).
    for (name, p), e, q in zip(net.named_parameters(), eager_net.parameters(), ref.parameters()):
        assert rel_err(p.grad, q.grad) <= max(2 * rel_err(e.grad, q.grad), 5e-2), name
