"""Fused temporal-aware block (both directions per launch) against its float64 PyTorch reference."""

import pytest
import torch

from glam_fast.ops import temporal_block as tb
from tests.helpers import rel_err

EPS = 1e-3
F = 39


@pytest.fixture(autouse=True)
def _seed(seeded):
    """Every test starts from the same global RNG state."""


def make_params(seed: int, channels: int = F, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s, scale=0.3: (torch.randn(*s, generator=g) * scale).to(dtype)  # noqa: E731
    return {
        "conv_weight": rnd(2, 2, channels, channels, 2),
        "conv_bias": rnd(2, 2, channels),
        "bn_weight": 1 + rnd(2, 2, channels),
        "bn_bias": rnd(2, 2, channels),
        "running_mean": rnd(2, 2, channels),
        "running_var": (0.5 + torch.rand(2, 2, channels, generator=g)).to(dtype),
    }


def make_masks(seed: int, batch: int, channels: int = F, p: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(2, 2, batch, channels, generator=g) > p).float() / (1 - p)


def run_training(fn, h, params, masks, dilation, training, upstream, dtype=None):
    """Forward + backward with the given upstream grads of (out, time mean); returns out, mean, grads."""
    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
    h = cast(h).detach().requires_grad_()
    p = {k: cast(v).detach().requires_grad_(k not in ("running_mean", "running_var")) for k, v in params.items()}
    out, mean = fn(h, *p.values(), masks if masks is None else cast(masks), dilation, training)
    g_out, g_mean = upstream
    (out.double() * g_out).sum().add((mean.double() * g_mean).sum()).backward()
    grads = {"h": h.grad, **{k: v.grad for k, v in p.items() if v.grad is not None}}
    return out, mean, grads


def fused(h, *args):
    out, mean, *_ = tb.temporal_block(h, *args, EPS)
    return out, mean


def reference(h, *args):
    return tb.temporal_block_ref(h, *args, EPS)


@pytest.mark.parametrize("batch, length, dilation", [(3, 1, 1), (1, 2, 1), (2, 2, 4), (3, 37, 4), (2, 37, 64)])
def test_inference_matches_reference(batch, length, dilation):
    params = make_params(batch * 100 + length)
    h = torch.randn(2, batch, length, F, generator=torch.Generator().manual_seed(length))
    out, mean = tb.temporal_block_inference(h, *params.values(), dilation, EPS)
    ref_out, ref_mean = tb.temporal_block_ref(h.double(), *(v.double() for v in params.values()), None, dilation, False, EPS)
    assert out.dtype == h.dtype and mean.dtype == torch.float32
    assert rel_err(out, ref_out) < 1e-5
    assert rel_err(mean, ref_mean) < 1e-5


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("batch, length, dilation", [(3, 2, 1), (3, 37, 8), (1, 37, 64)])
def test_forward_backward_matches_float64_reference(batch, length, dilation, training):
    params = make_params(7 + length)
    h = torch.randn(2, batch, length, F, generator=torch.Generator().manual_seed(3))
    masks = make_masks(5, batch) if training else None
    upstream = (torch.randn(2, batch, length, F, dtype=torch.float64), torch.randn(2, batch, F, dtype=torch.float64))
    out, mean, grads = run_training(fused, h, params, masks, dilation, training, upstream)
    ref_out, ref_mean, ref_grads = run_training(reference, h, params, masks, dilation, training, upstream, dtype=torch.float64)
    assert rel_err(out, ref_out) < 1e-5
    assert rel_err(mean, ref_mean) < 1e-5
    assert set(grads) == set(ref_grads) == {"h", "conv_weight", "conv_bias", "bn_weight", "bn_bias"}
    for name, ref in ref_grads.items():
        if name == "conv_bias" and training:
            # BatchNorm with batch statistics cancels the conv bias: its true grad is zero
            assert grads[name].abs().max() < 1e-5 * ref_grads["conv_weight"].abs().max()
        else:
            assert rel_err(grads[name], ref) < 1e-5, name


def test_training_returns_the_batch_statistics_batch_norm_uses():
    batch, length, dilation = 3, 11, 2
    params = make_params(1)
    h = torch.randn(2, batch, length, F)
    masks = make_masks(2, batch)
    *_, u1, u2, stats = tb.temporal_block(h, *params.values(), masks, dilation, True, EPS)
    assert stats.shape == (2, 2, 2, F)
    for i, u in enumerate((u1, u2)):
        flat = u.double().reshape(2, -1, F)
        assert torch.allclose(stats[0, :, i].double(), flat.mean(dim=1), atol=1e-5)
        assert torch.allclose(stats[1, :, i].double(), flat.var(dim=1, unbiased=False), rtol=1e-4)
    # and running statistics of the reference, updated with momentum 1, are exactly those statistics
    running_mean, running_var = params["running_mean"].double().clone(), params["running_var"].double().clone()
    pd = {**{k: v.double() for k, v in params.items()}, "running_mean": running_mean, "running_var": running_var}
    tb.temporal_block_ref(h.double(), *pd.values(), masks.double(), dilation, True, EPS, momentum=1.0)
    n = batch * length
    assert torch.allclose(stats[0].double(), running_mean, atol=1e-5)
    assert torch.allclose(stats[1].double() * n / (n - 1), running_var, rtol=1e-4)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_fp16_error_within_twice_the_eager_half_error(training):
    """BatchNorm biases keep the ReLU inputs away from zero, where half rounding would flip a
    branch at some position in eager PyTorch and in the kernels alike (moving summed gradients
    by ~1 %); away from those thresholds the comparison measures rounding and accumulation."""
    g = torch.Generator().manual_seed(17)
    batch, length, dilation = 3, 37, 4
    params = make_params(11)
    params["bn_weight"] = 0.5 + 0.1 * params["bn_weight"]
    params["bn_bias"] = params["bn_bias"] + 4
    params = {k: v.half() for k, v in params.items()}
    h = torch.randn(2, batch, length, F, generator=g).half()
    masks = make_masks(3, batch).half() if training else None
    upstream = (torch.randn(2, batch, length, F, dtype=torch.float64, generator=g), torch.randn(2, batch, F, dtype=torch.float64, generator=g))
    out, _, grads = run_training(fused, h, params, masks, dilation, training, upstream)
    half_out, _, half_grads = run_training(reference, h, params, masks, dilation, training, upstream)
    ref_out, _, ref_grads = run_training(reference, h, params, masks, dilation, training, upstream, dtype=torch.float64)
    assert out.dtype == torch.float16 and grads["h"].dtype == torch.float16
    assert rel_err(out, ref_out) <= 2 * rel_err(half_out, ref_out) + 1e-4
    names = ("h", "conv_weight", "bn_weight", "bn_bias") + (() if training else ("conv_bias",))
    for name in names:
        assert rel_err(grads[name], ref_grads[name]) <= 2 * rel_err(half_grads[name], ref_grads[name]) + 1e-4, name


def test_gpu_tile_sizes_under_the_interpreter(monkeypatch):
    """The launch configuration the GPU uses (several tiles per sequence, partial last tile)."""
    monkeypatch.setattr(tb, "interpreting", lambda: False)
    batch, length, dilation = 2, 70, 32
    params = make_params(4)
    h = torch.randn(2, batch, length, F)
    masks = make_masks(8, batch)
    upstream = (torch.randn(2, batch, length, F, dtype=torch.float64), torch.randn(2, batch, F, dtype=torch.float64))
    out, mean, grads = run_training(fused, h, params, masks, dilation, True, upstream)
    ref_out, ref_mean, ref_grads = run_training(reference, h, params, masks, dilation, True, upstream, dtype=torch.float64)
    assert rel_err(out, ref_out) < 1e-5 and rel_err(mean, ref_mean) < 1e-5
    for name in ("h", "conv_weight", "bn_weight", "bn_bias"):
        assert rel_err(grads[name], ref_grads[name]) < 1e-5, name
    inf_out, _ = tb.temporal_block_inference(h, *params.values(), dilation, EPS)
    ref_inf, _ = tb.temporal_block_ref(h.double(), *(v.double() for v in params.values()), None, dilation, False, EPS)
    assert rel_err(inf_out, ref_inf) < 1e-5


def test_opcheck():
    params = make_params(2, channels=5)
    h = torch.randn(2, 2, 3, 5, requires_grad=True)
    p = {k: v.requires_grad_(k not in ("running_mean", "running_var")) for k, v in params.items()}
    masks = make_masks(1, 2, channels=5)
    torch.library.opcheck(tb.temporal_block, (h, *p.values(), masks, 2, True, EPS))
    torch.library.opcheck(tb.temporal_block_inference, (h.detach(), *(v.detach() for v in p.values()), 1, EPS))


def test_bad_inputs():
    params = make_params(0, channels=5)
    h = torch.randn(2, 2, 4, 5)
    args = list(params.values())
    with pytest.raises(ValueError, match=r"h must have shape \(2, B, T, F\)"):
        tb.temporal_block(h[0], *args, None, 1, False, EPS)
    with pytest.raises(TypeError, match="h must be float32, float16 or bfloat16, got torch.float64"):
        tb.temporal_block(h.double(), *args, None, 1, False, EPS)
    with pytest.raises(ValueError, match=r"conv_weight must have shape \(2, 2, 5, 5, 2\)"):
        tb.temporal_block(h, args[0][..., :1], *args[1:], None, 1, False, EPS)
    with pytest.raises(ValueError, match=r"bn_bias must have shape \(2, 2, 5\)"):
        tb.temporal_block(h, *args[:3], args[3][:1], *args[4:], None, 1, False, EPS)
    with pytest.raises(ValueError, match=r"masks must have shape \(2, 2, 2, 5\)"):
        tb.temporal_block(h, *args, torch.ones(2, 2, 3, 5), 1, True, EPS)
    with pytest.raises(TypeError, match="running_var must be a floating-point tensor"):
        tb.temporal_block(h, *args[:5], args[5].long(), None, 1, False, EPS)
    with pytest.raises(ValueError, match="dilation must be >= 1"):
        tb.temporal_block_inference(h, *args, 0, EPS)
    with pytest.raises(ValueError, match="different devices"):
        tb.temporal_block_inference(h, args[0].to("meta"), *args[1:], 1, EPS)
    with pytest.raises(ValueError, match=r"more than 1 value per channel, got B \* T = 1"):
        tb.temporal_block(torch.randn(2, 1, 1, 5), *args, None, 1, True, EPS)
