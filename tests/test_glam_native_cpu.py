"""GLAM's native CPU stem (glam_fast.glam_stem_cpu) and pooled concatenation
(glam_fast.pool_concat_cpu) against their PyTorch references, at awkward sizes, split over
threads, with their argument checks; and that prepare() runs both (and the native head) for
GLAM. Outputs are NaN-poisoned before the kernels run (GLAM_FAST_POISON=1, set by conftest)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from glam_fast import GLAM, _extension, glam_stem_cpu, gmlp_head_cpu, pool_concat_cpu
from glam_fast.inference import prepare
from tests.helpers import rel_err
from tests.score_helpers import randomize_batch_norm
from tests.test_inference import reference64

needs_native = pytest.mark.skipif(
    not (glam_stem_cpu.native_available() and pool_concat_cpu.native_available()), reason="native extension not built"
)
d = _extension.tensor_descriptor


def _stem_params(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 16, generator=g), 0.3 * torch.randn(2, 1, 16, generator=g)


def _conv_stem64(x, weight, bias):
    """The stem as the model defines it: two 3-tap convolutions (3x1 and 1x3, padding 1) + ReLU,
    concatenated along the height, in float64; returned NHWC."""
    x, weight, bias = x.double(), weight.double(), bias.double()
    a = F.conv2d(x, weight[0].t().reshape(16, 1, 3, 1), bias[0, 0], padding=(1, 0))
    b = F.conv2d(x, weight[1].t().reshape(16, 1, 1, 3), bias[1, 0], padding=(0, 1))
    return F.relu(torch.cat([a, b], dim=2)).permute(0, 2, 3, 1)


@needs_native
@pytest.mark.parametrize("shape", [(1, 26, 57), (3, 1, 1), (2, 2, 5), (5, 7, 1), (1, 13, 31)])
def test_native_stem_matches_the_convolutions(shape):
    batch, height, width = shape
    weight, bias = _stem_params(height * width)
    x = torch.randn(batch, 1, height, width)
    out = glam_stem_cpu.glam_stem(x, weight, bias)
    assert out.shape == (batch, 2 * height, width, 16) and out.is_contiguous()
    expected = _conv_stem64(x, weight, bias)
    assert rel_err(out, expected) < 1e-6
    assert rel_err(glam_stem_cpu.glam_stem_reference(x, weight, bias), expected) < 1e-6


def _maps(batch, channels, height, width, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, height, width, generator=g).contiguous(memory_format=torch.channels_last) for c in channels]


@needs_native
@pytest.mark.parametrize(
    "batch, channels, height, width", [(1, (16, 16), 52, 57), (2, (32, 32), 26, 28), (3, (16,), 5, 3), (1, (48, 16, 32), 2, 2), (2, (16, 16), 3, 9)]
)
def test_native_pool_concat_matches_pool_then_cat(batch, channels, height, width):
    """Odd sizes are floored (the last row / column dropped, as max_pool2d does)."""
    maps = _maps(batch, channels, height, width, seed=height + width)
    assert pool_concat_cpu.applies(maps)
    out = pool_concat_cpu.pool_concat(maps)
    expected = pool_concat_cpu.pool_concat_reference(maps)
    assert out.shape == expected.shape == (batch, sum(channels), height // 2, width // 2)
    assert torch.equal(out, expected)
    assert torch.equal(pool_concat_cpu.pool_concat([m.contiguous() for m in maps]), expected)  # NCHW maps too


@needs_native
def test_native_pool_concat_propagates_nan():
    maps = _maps(1, (16, 16), 4, 4, seed=1)
    maps[1][0, 3, 1, 0] = float("nan")
    out = pool_concat_cpu.pool_concat(maps)
    assert torch.isnan(out[0, 16 + 3, 0, 0]) and torch.isnan(out).sum() == 1


@needs_native
def test_native_stem_and_pool_concat_are_the_same_for_any_thread_count():
    weight, bias = _stem_params(3)
    x = torch.randn(3, 1, 26, 57)
    maps = _maps(3, (16, 32), 26, 28, seed=2)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append((glam_stem_cpu.glam_stem(x, weight, bias), pool_concat_cpu.pool_concat(maps)))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for result in results[1:] for a, b in zip(result, results[0]))


@needs_native
def test_native_stem_and_pool_concat_check_their_arguments():
    module = _extension.load()[0]
    weight, bias = _stem_params(4)
    x, out = torch.randn(2, 1, 5, 6), torch.empty(2, 10, 6, 16)
    module.glam_stem_cpu(d(x), d(weight), d(bias.reshape(2, 16)), d(out))
    with pytest.raises(ValueError, match=r"out must have shape \(B, 2H, W, 16\)"):
        module.glam_stem_cpu(d(x), d(weight), d(bias.reshape(2, 16)), d(torch.empty(2, 5, 6, 16)))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, H, W\)"):
        module.glam_stem_cpu(d(torch.randn(2, 2, 5, 6)), d(weight), d(bias.reshape(2, 16)), d(out))
    with pytest.raises(TypeError, match="x must be float32"):
        module.glam_stem_cpu(d(x.double()), d(weight), d(bias.reshape(2, 16)), d(out))
    a, b = torch.randn(1, 4, 4, 16), torch.randn(1, 4, 4, 32)
    with pytest.raises(ValueError, match=r"maps\[1\] has 24 channels"):
        module.pool_concat_cpu([d(a), d(torch.randn(1, 4, 4, 24))], d(torch.empty(1, 2, 2, 40)))
    with pytest.raises(ValueError, match=r"maps\[1\] must have shape"):
        module.pool_concat_cpu([d(a), d(torch.randn(1, 4, 5, 32))], d(torch.empty(1, 2, 2, 48)))
    with pytest.raises(ValueError, match=r"out must have shape \(B, H / 2, W / 2, sum C_i\)"):
        module.pool_concat_cpu([d(a), d(b)], d(torch.empty(1, 2, 2, 32)))
    with pytest.raises(ValueError, match="at least one map"):
        module.pool_concat_cpu([], d(torch.empty(1, 2, 2, 32)))
    assert not pool_concat_cpu.applies(_maps(1, (16, 8), 4, 4, seed=3))  # 8 channels: the PyTorch ops
    with pytest.raises(ValueError, match="a 1 x 9 map pools to nothing"):
        pool_concat_cpu.pool_concat(_maps(1, (16,), 1, 9, seed=4))


@needs_native
def test_prepared_glam_runs_its_native_ops(monkeypatch):
    """prepare(GLAM) on the CPU in float32 runs the native stem, the pooled concatenations of
    blocks 2 and 3 and the native head (recorded here), and equals the reference; native=False
    runs none of them and equals it too."""
    calls: list[str] = []
    for module, name in ((glam_stem_cpu, "glam_stem"), (pool_concat_cpu, "pool_concat")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *args, _real=real, _name=name: calls.append(_name) or _real(*args))
    real_head = gmlp_head_cpu.NativeGMLPHead.forward
    monkeypatch.setattr(gmlp_head_cpu.NativeGMLPHead, "forward", lambda self, t: calls.append("head") or real_head(self, t))
    model = randomize_batch_norm(GLAM((26, 57), num_classes=4), seed=12)
    fast, plain = prepare(model), prepare(model, native=False)
    assert fast.native and not plain.native
    x = torch.randn(3, 1, 26, 57)
    with torch.inference_mode():
        out = fast(x)
        assert calls == ["glam_stem", "pool_concat", "pool_concat", "head"]
        out_plain = plain(x)
        assert calls == ["glam_stem", "pool_concat", "pool_concat", "head"]
    expected = reference64(model, x)
    assert rel_err(out, expected) < 1e-5 and rel_err(out_plain, expected) < 1e-5
    # An input that wants gradients, or a module cast to float64, runs the PyTorch ops.
    xg = x.clone().requires_grad_()
    fast(xg).sum().backward()
    with torch.inference_mode():
        assert rel_err(copy.deepcopy(fast).double()(x.double()), expected) < 1e-5
    assert len(calls) == 4 and xg.grad is not None


@needs_native
def test_native_stem_keeps_nan():
    weight, bias = _stem_params(5)
    x = torch.randn(1, 1, 4, 6)
    x[0, 0, 2, 3] = float("nan")
    out = glam_stem_cpu.glam_stem(x, weight, bias)
    assert torch.equal(torch.isnan(out), torch.isnan(glam_stem_cpu.glam_stem_reference(x, weight, bias)))
    assert torch.isnan(out).any()
