"""Fused MS-SENet front end (both directions per launch) against its float64 PyTorch reference."""

import pytest
import torch

from glam_fast.ops import squeeze_excite as se
from tests.helpers import rel_err

EPS = 1e-3
M = F = 39
TRAINABLE = [n for n in se.PARAMETER_NAMES if n not in ("running_mean", "running_var")]


@pytest.fixture(autouse=True)
def _seed(seeded):
    """Every test starts from the same global RNG state."""


def make_params(seed: int, channels: int = F, mfcc: int = M, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape in se._parameter_shapes(channels, mfcc).items():
        if name == "running_var":
            params[name] = 0.5 + torch.rand(*shape, generator=g)
        elif name == "bn_weight":
            params[name] = 1 + 0.3 * torch.randn(*shape, generator=g)
        else:
            params[name] = 0.3 * torch.randn(*shape, generator=g)
    return {k: v.to(dtype) for k, v in params.items()}


def make_masks(seed: int, batch: int, channels: int = F, p: float = 0.2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(2, 3, batch, channels, generator=g) > p).float() / (1 - p)


def run(fn, x, params, masks, training, upstream, dtype=None):
    """Forward + backward with upstream grad ``upstream`` of h0; returns h0 and grads of x and parameters."""
    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
    x = cast(x).detach().requires_grad_()
    p = {k: cast(v).detach().requires_grad_(k in TRAINABLE) for k, v in params.items()}
    h0 = fn(x, *p.values(), masks if masks is None else cast(masks), training, EPS)
    (h0.double() * upstream).sum().backward()
    return h0, {"x": x.grad, **{k: p[k].grad for k in TRAINABLE}}


def fused(*args):
    return se.squeeze_excite(*args)[0]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("batch, length", [(2, 1), (1, 2), (2, 37)])
def test_forward_backward_matches_float64_reference(batch, length, training):
    params = make_params(length)
    x = torch.randn(batch, length, M, generator=torch.Generator().manual_seed(batch))
    if training and batch * length * M < 2:
        pytest.skip("not a valid training batch")
    masks = make_masks(4, batch) if training else None
    upstream = torch.randn(2, batch, length, F, dtype=torch.float64)
    h0, grads = run(fused, x, params, masks, training, upstream)
    ref, ref_grads = run(se.squeeze_excite_ref, x, params, masks, training, upstream, dtype=torch.float64)
    assert h0.shape == (2, batch, length, F) and h0.dtype == torch.float32
    assert rel_err(h0, ref) < 1e-5
    for name, want in ref_grads.items():
        if name == "branch_bias" and training:
            # BatchNorm with batch statistics cancels the conv biases: their true grad is zero
            assert grads[name].abs().max() < 1e-5 * ref_grads["time_weight"].abs().max()
        else:
            assert rel_err(grads[name], want) < 1e-5, name


def test_training_statistics_and_squeeze():
    batch, length = 3, 9
    params = make_params(3)
    x = torch.randn(batch, length, M)
    masks = make_masks(1, batch)
    h0, squeeze, stats = se.squeeze_excite(x, *params.values(), masks, True, EPS)
    assert stats.shape == (2, 2, 3, F) and squeeze.shape == (2, batch, F)
    pd = {k: v.double().clone() for k, v in params.items()}
    se.squeeze_excite_ref(x.double(), *pd.values(), masks.double(), True, EPS, momentum=1.0)
    n = batch * length * M
    assert torch.allclose(stats[0].double(), pd["running_mean"], atol=1e-5)
    assert torch.allclose(stats[1].double() * n / (n - 1), pd["running_var"], rtol=1e-4)
    assert torch.isfinite(squeeze).all() and (squeeze >= 0).all()  # mean of ReLU outputs


def linear_regime(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameters that keep every ReLU input well away from zero. In half precision a ReLU input
    within rounding of zero flips its branch at some position, which moves a summed gradient by
    ~1 % in eager PyTorch and in the kernels alike (at different positions); away from those
    thresholds the comparison measures the kernels' rounding and accumulation."""
    p = dict(params)
    p["bn_weight"] = 0.5 + 0.1 * p["bn_weight"]
    p["bn_bias"] = p["bn_bias"] + 8
    p["collapse_bias"] = p["collapse_bias"] + 40
    p["squeeze_bias"] = p["squeeze_bias"] + 5
    p["squeeze_weight"] = 0.2 * p["squeeze_weight"]
    p["excite_weight"] = 0.2 * p["excite_weight"]
    return p


def test_fp16_training_forward_within_twice_the_eager_half_error():
    """Batch statistics and dropout in half precision (eval's forward is checked with its grads)."""
    g = torch.Generator().manual_seed(21)
    batch, length, training = 2, 21, True
    params = make_params(9, dtype=torch.float16)
    x = torch.randn(batch, length, M, generator=g).half()
    masks = make_masks(2, batch).half()
    h0 = fused(x, *params.values(), masks, training, EPS)
    half = se.squeeze_excite_ref(x, *params.values(), masks, training, EPS)
    ref = se.squeeze_excite_ref(x.double(), *(v.double() for v in params.values()), masks.double(), training, EPS)
    assert h0.dtype == torch.float16
    assert rel_err(h0, ref) <= 2 * rel_err(half, ref) + 1e-4


def test_fp16_gradients_within_twice_the_eager_half_error():
    g = torch.Generator().manual_seed(13)
    batch, length = 2, 13
    params = {k: v.half() for k, v in linear_regime(make_params(10)).items()}
    x = torch.randn(batch, length, M, generator=g).half()
    upstream = torch.randn(2, batch, length, F, dtype=torch.float64, generator=g)
    h0, grads = run(fused, x, params, None, False, upstream)
    half, half_grads = run(se.squeeze_excite_ref, x, params, None, False, upstream)
    ref, ref_grads = run(se.squeeze_excite_ref, x, params, None, False, upstream, dtype=torch.float64)
    assert grads["x"].dtype == torch.float16
    assert rel_err(h0, ref) <= 2 * rel_err(half, ref) + 1e-4
    for name, want in ref_grads.items():
        assert rel_err(grads[name], want) <= 2 * rel_err(half_grads[name], want) + 1e-4, name


def test_gpu_tile_sizes_under_the_interpreter(monkeypatch):
    """The GPU launch configuration: 16 x 16 position tiles, and 8 x 16 in the fp32 BatchNorm- and
    conv-grad kernels (column chunks crossing branch boundaries, a partial last chunk and a
    partial last row tile)."""
    monkeypatch.setattr(se, "interpreting", lambda: False)
    assert (se._front_config(19, M, torch.float32, "backward")["BLOCK_T"], se._front_config(19, M, torch.float32, "backward_head")["BLOCK_T"]) == (8, 16)
    batch, length = 1, 19
    params = make_params(6)
    x = torch.randn(batch, length, M)
    masks = make_masks(3, batch)
    upstream = torch.randn(2, batch, length, F, dtype=torch.float64)
    h0, grads = run(fused, x, params, masks, True, upstream)
    ref, ref_grads = run(se.squeeze_excite_ref, x, params, masks, True, upstream, dtype=torch.float64)
    assert rel_err(h0, ref) < 1e-5
    for name in ("x", "time_weight", "freq_weight", "square_weight", "bn_weight", "bn_bias", "excite_weight", "project_weight"):
        assert rel_err(grads[name], ref_grads[name]) < 1e-5, name


def test_no_input_grad_skips_the_input_kernel(monkeypatch):
    class MustNotLaunch:
        def __getitem__(self, grid):
            raise AssertionError("the input-grad kernel ran although x needs no grad")

    monkeypatch.setattr(se, "_squeeze_excite_input_grad_kernel", MustNotLaunch())
    params = make_params(1)
    p = {k: v.requires_grad_(k in TRAINABLE) for k, v in params.items()}
    x = torch.randn(2, 5, M)
    fused(x, *p.values(), None, False, EPS).sum().backward()
    assert x.grad is None and p["time_weight"].grad is not None


def test_opcheck():
    params = make_params(2, channels=5, mfcc=4)
    x = torch.randn(2, 3, 4, requires_grad=True)
    p = {k: v.requires_grad_(k in TRAINABLE) for k, v in params.items()}
    masks = make_masks(1, 2, channels=5)
    torch.library.opcheck(se.squeeze_excite, (x, *p.values(), masks, True, EPS))


def test_bad_inputs():
    params = make_params(0, channels=5, mfcc=4)
    args = list(params.values())
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, M\)"):
        se.squeeze_excite(x[0], *args, None, False, EPS)
    with pytest.raises(TypeError, match="x must be float32, float16 or bfloat16, got torch.int64"):
        se.squeeze_excite(x.long(), *args, None, False, EPS)
    with pytest.raises(ValueError, match=r"project_weight must have shape \(2, 5, 20\) for x of shape \(2, 3, 5\), got \(2, 5, 16\)"):
        se.squeeze_excite(torch.randn(2, 3, 5), *args, None, False, EPS)
    bad = dict(params, squeeze_weight=torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match=r"squeeze_weight must have shape \(2, 5, 5\)"):
        se.squeeze_excite(x, *bad.values(), None, False, EPS)
    with pytest.raises(ValueError, match=r"masks must have shape \(2, 3, 2, 5\)"):
        se.squeeze_excite(x, *args, torch.ones(2, 3, 1, 5), True, EPS)
    with pytest.raises(ValueError, match="empty|non-empty"):
        se.squeeze_excite(torch.randn(2, 0, 4), *args, None, False, EPS)
