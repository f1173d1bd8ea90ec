"""Fused AFCN attention pooling + classifier against its float64 PyTorch reference."""

import pytest
import torch

from glam_fast.ops import attention_pool as ap
from tests.helpers import rel_err

SCALE = 0.3


@pytest.fixture(autouse=True)
def _seed(seeded):
    """Every test starts from the same global RNG state."""


def make_inputs(batch, dim, freq, time, attn_dim, classes, lengths=None, dtype=torch.float32):
    """A trunk-like map (zero beyond each item's length, as the trunk leaves it) and head weights."""
    features = torch.randn(batch, dim, freq, time)
    if lengths is not None:
        features = features * (torch.arange(time)[None, :] < lengths[:, None])[:, None, None, :]
    params = [
        torch.randn(attn_dim, dim) / dim**0.5,
        0.1 * torch.randn(attn_dim),
        torch.randn(1, attn_dim) / attn_dim**0.5 * 3,
        torch.randn(classes, dim) / dim**0.5,
        0.1 * torch.randn(classes),
    ]
    return features.to(dtype), [p.to(dtype) for p in params]


def run(fn, features, lengths, params, upstream, dtype=None):
    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
    features = cast(features).detach().requires_grad_()
    params = [cast(p).detach().requires_grad_() for p in params]
    logits, alpha = fn(features, lengths, *params, SCALE)[:2]
    g_logits, g_alpha = upstream
    ((logits.double() * g_logits).sum() + (alpha.double() * g_alpha).sum()).backward()
    return logits, alpha, [features.grad] + [p.grad for p in params]


@pytest.mark.parametrize(
    "batch, dim, freq, time, attn_dim, lengths",
    [
        (4, 256, 3, 9, 256, [9, 1, 5, 2]),  # all different, including a single valid frame
        (3, 256, 1, 1, 256, [1, 1, 1]),  # the smallest map the trunk can produce
        (2, 40, 5, 7, 24, None),  # odd sizes, no lengths
        (5, 256, 2, 37, 100, [37, 30, 1, 17, 36]),  # several position tiles
    ],
)
def test_forward_backward_matches_float64_reference(batch, dim, freq, time, attn_dim, lengths):
    lengths = torch.tensor(lengths) if lengths is not None else None
    features, params = make_inputs(batch, dim, freq, time, attn_dim, 4, lengths)
    upstream = (torch.randn(batch, 4, dtype=torch.float64), torch.randn(batch, freq, time, dtype=torch.float64))
    logits, alpha, grads = run(ap.attention_pool, features, lengths, params, upstream)
    ref_logits, ref_alpha, ref_grads = run(ap.attention_pool_ref, features, lengths, params, upstream, dtype=torch.float64)
    assert logits.dtype == torch.float32 and alpha.dtype == torch.float32
    assert rel_err(logits, ref_logits) < 1e-5
    assert rel_err(alpha, ref_alpha) < 1e-5
    if lengths is not None:
        for i, n in enumerate(lengths.tolist()):
            assert torch.count_nonzero(alpha[i, :, n:]) == 0  # padded positions get exactly zero weight
            assert torch.count_nonzero(grads[0][i, :, :, n:]) == 0  # and zero grad
    assert torch.allclose(alpha.sum(dim=(1, 2)), torch.ones(batch))
    for i, (got, want) in enumerate(zip(grads, ref_grads)):
        assert rel_err(got, want) < 1e-5, i


def test_padded_item_equals_the_item_alone():
    features, params = make_inputs(3, 64, 2, 11, 32, 3, torch.tensor([11, 4, 7]))
    logits, alpha, _ = ap.attention_pool(features, torch.tensor([11, 4, 7]), *params, SCALE)
    alone, alpha_alone, _ = ap.attention_pool(features[1:2, :, :, :4].contiguous(), None, *params, SCALE)
    assert rel_err(logits[1:2], alone) < 1e-6
    assert rel_err(alpha[1:2, :, :4], alpha_alone) < 1e-6


def test_only_logits_need_grad():
    features, params = make_inputs(2, 32, 2, 5, 16, 3)
    features.requires_grad_()
    logits, _, _ = ap.attention_pool(features, torch.tensor([5, 3]), *params, SCALE)
    logits.sum().backward()
    ref_f = features.detach().double().requires_grad_()
    ap.attention_pool_ref(ref_f, torch.tensor([5, 3]), *(p.double() for p in params), SCALE)[0].sum().backward()
    assert rel_err(features.grad, ref_f.grad) < 1e-5


def test_fp16_error_within_twice_the_eager_half_error():
    lengths = torch.tensor([9, 3, 6])
    features, params = make_inputs(3, 256, 3, 9, 256, 4, lengths, dtype=torch.float16)
    upstream = (torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 3, 9, dtype=torch.float64))
    logits, alpha, grads = run(ap.attention_pool, features, lengths, params, upstream)
    h_logits, h_alpha, h_grads = run(ap.attention_pool_ref, features, lengths, params, upstream)
    r_logits, r_alpha, r_grads = run(ap.attention_pool_ref, features, lengths, params, upstream, dtype=torch.float64)
    assert logits.dtype == torch.float16 and grads[0].dtype == torch.float16
    assert rel_err(logits, r_logits) <= 2 * rel_err(h_logits, r_logits) + 1e-4
    assert rel_err(alpha, r_alpha) <= 2 * rel_err(h_alpha, r_alpha) + 1e-4
    for i, (got, half, want) in enumerate(zip(grads, h_grads, r_grads)):
        assert rel_err(got, want) <= 2 * rel_err(half, want) + 1e-4, i


def test_gpu_tile_sizes_under_the_interpreter(monkeypatch):
    monkeypatch.setattr(ap, "interpreting", lambda: False)
    lengths = torch.tensor([21, 1, 13])
    features, params = make_inputs(3, 256, 2, 21, 256, 4, lengths)
    upstream = (torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 2, 21, dtype=torch.float64))
    logits, alpha, grads = run(ap.attention_pool, features, lengths, params, upstream)
    r_logits, r_alpha, r_grads = run(ap.attention_pool_ref, features, lengths, params, upstream, dtype=torch.float64)
    assert rel_err(logits, r_logits) < 1e-5 and rel_err(alpha, r_alpha) < 1e-5
    for i, (got, want) in enumerate(zip(grads, r_grads)):
        assert rel_err(got, want) < 1e-5, i


def test_opcheck():
    features, params = make_inputs(2, 16, 2, 3, 16, 3)
    features.requires_grad_()
    params = [p.requires_grad_() for p in params]
    torch.library.opcheck(ap.attention_pool, (features, torch.tensor([3, 2]), *params, SCALE))
    torch.library.opcheck(ap.attention_pool, (features, None, *params, SCALE))


@pytest.mark.parametrize(
    "lengths, error, match",
    [
        (torch.tensor([5, 0]), ValueError, r"lengths must lie in \[1, T'=5\]; item 1 has length 0"),
        (torch.tensor([6, 5]), ValueError, r"item 0 has length 6"),
        (torch.tensor([-1, 5]), ValueError, r"item 0 has length -1"),
        (torch.tensor([5.0, 4.0]), TypeError, "lengths must be int32 or int64"),
        (torch.tensor([5, 4, 3]), ValueError, r"lengths must have shape \(B,\) = \(2,\)"),
    ],
)
def test_bad_lengths(lengths, error, match):
    features, params = make_inputs(2, 16, 2, 5, 8, 3)
    with pytest.raises(error, match=match):
        ap.attention_pool(features, lengths, *params, SCALE)


def test_bad_inputs():
    features, params = make_inputs(2, 16, 2, 5, 8, 3)
    with pytest.raises(ValueError, match=r"features must have shape \(B, D, F', T'\)"):
        ap.attention_pool(features[0], None, *params, SCALE)
    with pytest.raises(TypeError, match="features must be float32, float16 or bfloat16, got torch.float64"):
        ap.attention_pool(features.double(), None, *params, SCALE)
    with pytest.raises(ValueError, match=r"proj_weight must have shape \(8, 16\)"):
        ap.attention_pool(features, None, params[0][:, :15], *params[1:], SCALE)
    with pytest.raises(ValueError, match=r"context_weight must have shape \(1, 8\)"):
        ap.attention_pool(features, None, params[0], params[1], params[2][0], *params[3:], SCALE)
    with pytest.raises(ValueError, match="different devices"):
        ap.attention_pool(features, None, *params[:4], params[4].to("meta"), SCALE)
