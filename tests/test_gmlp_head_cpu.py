"""GLAM's gMLP head as one native CPU call (glam_fast.gmlp_head_cpu) against the model's own
modules in float64: awkward token and feature counts (register tiles of 8 rows and 16-column
vectors with tails), random weights everywhere (LayerNorm affines, gate bias), batches that
split over threads; that prepare() runs it for GLAM; and its checks. Outputs and scratch are
NaN-poisoned before the kernel runs (GLAM_FAST_POISON=1, set by conftest), so an element it
fails to write fails the test."""

from __future__ import annotations

import copy

import pytest
import torch

from glam_fast import GLAM, gmlp_head_cpu
from glam_fast.inference import prepare
from glam_fast.models.glam import GlobalAwareFusion
from tests.helpers import rel_err
from tests.score_helpers import randomize_batch_norm
from tests.test_inference import reference64

needs_native = pytest.mark.skipif(not gmlp_head_cpu.native_available(), reason="native extension not built")

FP32_TOL = 1e-5


def _fusion(features: int, tokens: int, seed: int) -> GlobalAwareFusion:
    """A fusion block with every parameter random (the default init has unit LayerNorms, a
    near-zero token mixing and a gate bias of 1, which would hide mistakes in those terms)."""
    torch.manual_seed(seed)
    fusion = GlobalAwareFusion(features, n_tokens=tokens).eval()
    with torch.no_grad():
        for name, p in fusion.named_parameters():
            if name.endswith("sgu.weight"):
                p.copy_(torch.randn_like(p) / tokens**0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.add_(0.2 * torch.randn_like(p))
    return fusion


def _reference64(fusion, tokens):
    return gmlp_head_cpu.gmlp_head_reference(copy.deepcopy(fusion).double(), tokens.double())


# (batch, tokens S, features D): GLAM's own 128 x 182; S not a multiple of the 8-row tile or of
# the 32-row work item; D (and H = 2D) not a multiple of 16, one below, a single feature.
SHAPES = [(1, 128, 182), (3, 128, 182), (2, 13, 7), (1, 37, 33), (4, 5, 16), (2, 70, 1), (9, 8, 40)]


@needs_native
@pytest.mark.parametrize("batch, tokens, features", SHAPES)
def test_native_head_matches_float64_reference(batch, tokens, features):
    fusion = _fusion(features, tokens, seed=batch * 1000 + tokens + features)
    head = gmlp_head_cpu.NativeGMLPHead(fusion)
    x = torch.randn(batch, tokens, features)
    with torch.inference_mode():
        out = head(x)
        plain = gmlp_head_cpu.gmlp_head_reference(fusion, x)  # PyTorch's own float32 error, for scale
    expected = _reference64(fusion, x)
    assert out.shape == (batch, tokens, features) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert (out >= 0).all() and (out == 0).any() and (out > 0).any()  # the ReLU, on a map with both signs
    assert rel_err(out, expected) < max(FP32_TOL, 4 * rel_err(plain, expected)), (rel_err(out, expected), rel_err(plain, expected))


@needs_native
def test_native_head_is_the_same_for_any_thread_count():
    """Every work item (segment, block of rows) is computed by one thread the same way, so the
    result does not depend on how many threads share them."""
    fusion = _fusion(182, 128, seed=3)
    head = gmlp_head_cpu.NativeGMLPHead(fusion)
    x = torch.randn(5, 128, 182)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            with torch.inference_mode():
                results.append(head(x))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:])


@needs_native
def test_native_head_takes_non_contiguous_tokens_and_leaves_them_alone():
    fusion = _fusion(20, 16, seed=4)
    head = gmlp_head_cpu.NativeGMLPHead(fusion)
    base = torch.randn(3, 20, 16)
    x = base.transpose(1, 2)  # (3, 16, 20), not contiguous
    before = x.clone()
    with torch.inference_mode():
        out = head(x)
    assert torch.equal(x, before)
    assert rel_err(out, _reference64(fusion, x)) < FP32_TOL


@needs_native
def test_native_head_rejects_bad_input_by_name():
    head = gmlp_head_cpu.NativeGMLPHead(_fusion(10, 6, seed=5))
    with torch.inference_mode():
        with pytest.raises(ValueError, match=r"\(B, 6, 10\)"):
            head(torch.randn(2, 6, 11))
        with pytest.raises(ValueError, match=r"\(B, 6, 10\)"):
            head(torch.randn(6, 10))
        with pytest.raises(ValueError, match="float32 on the CPU"):
            head(torch.randn(2, 6, 10, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="inference only"):
        head(torch.randn(2, 6, 10, requires_grad=True))
    with pytest.raises(ValueError, match="one gMLP block"):
        fusion = _fusion(10, 6, seed=5)
        fusion.layers.append(copy.deepcopy(fusion.layers[0]))
        gmlp_head_cpu.NativeGMLPHead(fusion)


@needs_native
def test_native_binding_checks_its_arguments():
    """The binding checks shapes against each other before anything runs."""
    head = gmlp_head_cpu.NativeGMLPHead(_fusion(10, 6, seed=6))
    native, d = gmlp_head_cpu._native(), gmlp_head_cpu._extension.tensor_descriptor
    x = torch.randn(2, 6, 10)
    scratch = [torch.empty(2, 6, 10), torch.empty(2, 6, 2 * 32), torch.empty(2, 6, 32)]
    out = torch.empty(2, 6, 10)
    args = (d(x), head._weights(), [d(t) for t in scratch], d(out), 1e-5, 1e-5)
    native.gmlp_head(*args)  # the shapes as packed: H = 20 -> Hp = 32
    with pytest.raises(ValueError, match="10 packed head weights"):
        native.gmlp_head(d(x), head._weights()[:9], *args[2:])
    with pytest.raises(ValueError, match=r"hidden must have shape \(B, S, 2 Hp\)"):
        native.gmlp_head(d(x), args[1], [d(scratch[0]), d(torch.empty(2, 6, 40)), d(scratch[2])], *args[3:])
    with pytest.raises(ValueError, match=r"out must have shape"):
        native.gmlp_head(*args[:3], d(torch.empty(2, 6, 11)), 1e-5, 1e-5)
    with pytest.raises(ValueError, match="threads must be at least 1"):
        native.gmlp_head(*args, threads=0)


def _record_native_heads(monkeypatch) -> list[int]:
    """The batch of every native head call from now on (the call itself still runs)."""
    calls: list[int] = []
    real = gmlp_head_cpu.NativeGMLPHead.forward
    monkeypatch.setattr(gmlp_head_cpu.NativeGMLPHead, "forward", lambda self, t: calls.append(t.shape[0]) or real(self, t))
    return calls


@needs_native
def test_prepared_glam_runs_the_native_head(monkeypatch):
    """prepare() picks the native head for float32 on the CPU, and it is what runs, in the
    head's micro-batches; native=False keeps the PyTorch ops; both equal the reference."""
    model = randomize_batch_norm(GLAM((26, 57), num_classes=4), seed=8)
    fast, plain = prepare(model, micro_batch=None), prepare(model, micro_batch=None, native=False)
    assert fast.native_head is not None and plain.native_head is None
    calls = _record_native_heads(monkeypatch)
    x = torch.randn(11, 1, 26, 57)
    with torch.inference_mode():
        out = fast(x)
        assert calls == [8, 3]
        out_plain = plain(x)
        assert calls == [8, 3]
    expected = reference64(model, x)
    assert rel_err(out, expected) < FP32_TOL and rel_err(out_plain, expected) < FP32_TOL
    # Where it does not apply, the PyTorch ops run: a module cast to float64, an input that wants gradients.
    as_double = copy.deepcopy(fast).double()
    xg = x[:2].clone().requires_grad_()
    with torch.inference_mode():
        assert rel_err(as_double(x.double()), expected) < FP32_TOL
    fast(xg).sum().backward()
    assert calls == [8, 3] and xg.grad is not None


@needs_native
def test_native_required_but_unavailable_is_an_error():
    model = GLAM((26, 57), num_classes=4).eval()
    with pytest.raises(RuntimeError, match=r"native=True.*float32 on the CPU"):
        prepare(copy.deepcopy(model).double(), native=True)
    assert prepare(copy.deepcopy(model).double()).native_head is None  # None: where possible
    with pytest.raises(ValueError, match="native applies to GLAM only"):
        from glam_fast import AFCN

        prepare(AFCN(num_classes=3, attn_dim=8).eval(), native=True)


@needs_native
def test_native_head_keeps_nan_where_the_reference_has_it():
    """A NaN token spreads through the token mixing as in PyTorch; the ReLU keeps NaN (torch.relu
    does) instead of turning it into 0."""
    fusion = _fusion(16, 8, seed=13)
    x = torch.randn(2, 8, 16)
    x[1, 3, 5] = float("nan")
    with torch.inference_mode():
        out = gmlp_head_cpu.NativeGMLPHead(fusion)(x)
    expected = _reference64(fusion, x)
    assert torch.equal(torch.isnan(out), torch.isnan(expected)) and torch.isnan(out[1]).any()
    assert rel_err(out[0], expected[0]) < FP32_TOL
