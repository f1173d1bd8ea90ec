"""Winograd F(4x4, 3x3) convolution + bias + ReLU (glam_fast.winograd) against the direct
convolution: the algorithm in PyTorch ops, the native transforms, the module's choice of path, and
AFCN's prepared form that uses it. Outputs of the native transforms are NaN-poisoned before they
run (GLAM_FAST_POISON=1, set by conftest), so an element they fail to write fails the test."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from glam_fast import AFCN, GLAM, onednn, winograd
from glam_fast.inference import prepare
from tests.helpers import rel_err
from tests.test_inference import reference64

needs_native = pytest.mark.skipif(
    not (winograd.native_available() and onednn.available(torch.device("cpu"), torch.float32)),
    reason="native extension not built, or PyTorch without oneDNN",
)

# (batch, C_in, C_out, H, W): maps not a multiple of the 4x4 tile, a single pixel, one tile,
# channel counts of one and three vector steps.
SHAPES = [(2, 16, 32, 15, 11), (3, 32, 16, 1, 1), (1, 48, 64, 7, 9), (4, 16, 16, 4, 4), (2, 64, 32, 2, 3), (5, 16, 48, 9, 5)]


def _layer(c_in: int, c_out: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(c_out, c_in, 3, 3, generator=g) / (9 * c_in) ** 0.5
    bias = 0.1 * torch.randn(c_out, generator=g)
    return weight, bias


def _direct64(x, weight, bias):
    return F.relu(F.conv2d(x.double(), weight.double(), bias.double(), padding=1))


def test_extension_has_the_transforms_where_it_is_required():
    """CI builds the extension (GLAM_FAST_REQUIRE_EXTENSION=1): there the Winograd path must exist,
    so that AFCN's prepared form cannot quietly lose it."""
    if os.environ.get("GLAM_FAST_REQUIRE_EXTENSION") != "1":
        pytest.skip("the extension is optional here")
    assert winograd.native_available()


@pytest.mark.parametrize("shape", SHAPES)
def test_algorithm_in_float64_is_the_convolution(shape):
    """The transforms (B^T d B, G g G^T, A^T m A) are exact: in float64 they give the direct
    convolution to rounding."""
    batch, c_in, c_out, h, w = shape
    weight, bias = _layer(c_in, c_out, seed=h * w)
    x = torch.randn(batch, c_in, h, w, dtype=torch.float64)
    out = winograd.winograd_conv3x3_relu_reference(x, weight.double(), bias.double())
    assert out.shape == (batch, c_out, h, w)
    assert (out - _direct64(x, weight, bias)).abs().max() < 1e-12


@needs_native
@pytest.mark.parametrize("gemm", ["bmm", "onednn"])
@pytest.mark.parametrize("shape", SHAPES)
def test_native_path_matches_the_convolution(shape, gemm, monkeypatch):
    """Both ways of running the 36 GEMMs: one batched matmul (small calls) or oneDNN calls."""
    monkeypatch.setattr(winograd, "BMM_MAX_TILES", 10**9 if gemm == "bmm" else 0)
    batch, c_in, c_out, h, w = shape
    weight, bias = _layer(c_in, c_out, seed=h + w)
    x = torch.randn(batch, c_in, h, w).contiguous(memory_format=torch.channels_last)
    layer = winograd.WinogradConvReLU(weight, bias, min_tiles=1)
    with torch.inference_mode():
        out = layer(x)
    assert out.shape == (batch, c_out, h, w) and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(out).all()
    assert rel_err(out, _direct64(x, weight, bias)) < 1e-5
    # the same arithmetic in PyTorch ops, float32: only the summation order differs
    assert (out - winograd.winograd_conv3x3_relu_reference(x, weight, bias)).abs().max() < 1e-4


@needs_native
def test_native_input_transform_is_the_reference_transform():
    """v[k] for each of the 36 positions, tile-major rows, against B^T d B in float64."""
    torch.manual_seed(0)
    x = torch.randn(2, 32, 9, 6)
    v = winograd.input_transform(x.permute(0, 2, 3, 1).contiguous())
    assert v.shape == (36, 2 * 3 * 2, 32)
    bt = torch.tensor(winograd._BT, dtype=torch.float64)
    patches = F.pad(x.double(), (1, 8 + 1 - 6, 1, 12 + 1 - 9)).unfold(2, 6, 4).unfold(3, 6, 4)  # (B, C, 3, 2, 6, 6)
    expected = torch.einsum("ar,nctwrs,bs->abntwc", bt, patches, bt).reshape(36, -1, 32)
    assert (v.double() - expected).abs().max() < 1e-4


@needs_native
def test_channels_last_and_nchw_input_give_the_same_output():
    weight, bias = _layer(16, 32, seed=3)
    x = torch.randn(3, 16, 10, 13)
    layer = winograd.WinogradConvReLU(weight, bias, min_tiles=1)
    with torch.inference_mode():
        assert torch.equal(layer(x), layer(x.contiguous(memory_format=torch.channels_last)))


@needs_native
def test_small_calls_and_gradients_take_the_direct_convolution(monkeypatch):
    """Below min_tiles, and for an input that requires grad, the module runs its direct
    convolution (and gets gradients); from min_tiles up the native transforms run."""
    weight, bias = _layer(16, 16, seed=4)
    layer = winograd.WinogradConvReLU(weight, bias, min_tiles=10)  # 4 tiles per 5 x 7 map
    calls = []
    real = winograd.input_transform
    monkeypatch.setattr(winograd, "input_transform", lambda x: calls.append(x.shape) or real(x))
    with torch.inference_mode():
        for batch, used in ((2, False), (3, True)):
            x = torch.randn(batch, 16, 5, 7)
            assert rel_err(layer(x), _direct64(x, weight, bias)) < 1e-5
            assert bool(calls) is used
    x = torch.randn(4, 16, 5, 7, requires_grad=True)
    layer(x).sum().backward()
    assert len(calls) == 1 and x.grad is not None and torch.isfinite(x.grad).all()


@needs_native
def test_bad_arguments_are_named():
    native = winograd._native()
    x = torch.randn(1, 4, 4, 20)
    with pytest.raises(ValueError, match="channels; the transforms need a multiple of 16"):
        native.winograd_input_transform(winograd._descriptor(x), winograd._descriptor(torch.empty(36, 1, 20)))
    x = torch.randn(1, 4, 4, 16)
    with pytest.raises(ValueError, match=r"v must have shape \(36, tiles, C\)"):
        native.winograd_input_transform(winograd._descriptor(x), winograd._descriptor(torch.empty(36, 2, 16)))
    with pytest.raises(TypeError, match="x must be float32"):
        native.winograd_input_transform(winograd._descriptor(x.double()), winograd._descriptor(torch.empty(36, 1, 16)))
    with pytest.raises(ValueError, match="x must be contiguous"):
        native.winograd_input_transform(winograd._descriptor(x.transpose(1, 2)), winograd._descriptor(torch.empty(36, 1, 16)))
    m = [torch.empty(1, 16)] * 35
    with pytest.raises(ValueError, match="m must hold the 36 GEMM outputs, got 35"):
        native.winograd_output_transform([winograd._descriptor(t) for t in m], winograd._descriptor(torch.zeros(16)), winograd._descriptor(x))
    with pytest.raises(ValueError, match="needs a 3x3 weight with C_in and C_out multiples of 16"):
        winograd.WinogradConvReLU(torch.randn(16, 8, 3, 3), torch.randn(16))
    assert not winograd.supported(torch.randn(16, 16, 3, 3), stride=2, padding=1)
    assert not winograd.supported(torch.randn(16, 16, 5, 5), stride=1, padding=2)


@needs_native
def test_prepared_afcn_runs_its_3x3_layers_as_winograd(monkeypatch):
    """AFCN's conv3-5 become Winograd layers, which run from min_tiles up (here a batch of 8 at
    70 x 97: 2 tiles per item per layer) with the reference's logits, padded or not."""
    torch.manual_seed(8)
    model = AFCN(num_classes=3, attn_dim=8).eval()
    fast, direct = prepare(model), prepare(model, use_winograd=False)
    kinds = [type(conv).__name__ for conv in fast.convs]
    assert kinds == ["ConvReLU", "ConvReLU", "WinogradConvReLU", "WinogradConvReLU", "WinogradConvReLU"]
    assert not any(isinstance(conv, winograd.WinogradConvReLU) for conv in direct.convs)
    for conv in fast.convs[2:]:
        conv.min_tiles = 16
    calls = []
    real = winograd.input_transform
    monkeypatch.setattr(winograd, "input_transform", lambda x: calls.append(x.shape) or real(x))
    x = torch.randn(8, 3, 70, 97)
    lengths = torch.tensor([97, 90, 97, 80, 97, 70, 97, 97])
    with torch.inference_mode():
        assert rel_err(fast(x), reference64(model, x)) < 1e-5
        assert len(calls) == 3
        assert rel_err(fast(x, lengths), reference64(model, x, lengths)) < 1e-5
        assert len(calls) == 6
        assert rel_err(fast(x[:2]), reference64(model, x[:2])) < 1e-5  # 4 tiles: direct
        assert len(calls) == 6


def test_use_winograd_is_checked():
    with pytest.raises(ValueError, match="use_winograd applies to AFCN only, not to GLAM"):
        prepare(GLAM((26, 57), 4), use_winograd=True)
    with pytest.raises(RuntimeError, match=r"use_winograd=True\) needs the oneDNN path"):
        prepare(AFCN(3), onednn=False, use_winograd=True)


@needs_native
def test_gemms_run_batched_for_small_calls_and_as_onednn_calls_above():
    """Up to BMM_MAX_TILES tiles the 36 GEMMs are one bmm, above it 36 oneDNN calls."""
    from tests.test_inference import _CountOps

    weight, bias = _layer(16, 16, seed=9)
    layer = winograd.WinogradConvReLU(weight, bias, min_tiles=1)
    per_item = winograd.tiles(1, 8, 8)
    small, large = winograd.BMM_MAX_TILES // per_item, winograd.BMM_MAX_TILES // per_item + 1
    for batch, bmm_calls, onednn_calls in ((small, 1, 0), (large, 0, 36)):
        x = torch.randn(batch, 16, 8, 8)
        with torch.inference_mode(), _CountOps() as counted:
            out = layer(x)
        assert (counted.calls["aten.bmm"], counted.calls["mkldnn._linear_pointwise"]) == (bmm_calls, onednn_calls), counted.calls
        assert "aten.convolution" not in counted.calls and "mkldnn._convolution_pointwise" not in counted.calls
        assert rel_err(out, _direct64(x, weight, bias)) < 1e-5


@needs_native
def test_used_layer_copies_pickles_and_casts():
    """The packed oneDNN weights are a cache: a deep copy or pickle of a layer that has used them
    gives the same output; cast to float64 it leaves the Winograd path and still matches."""
    import copy
    import pickle

    weight, bias = _layer(16, 32, seed=10)
    layer = winograd.WinogradConvReLU(weight, bias, min_tiles=1)
    x = torch.randn(winograd.BMM_MAX_TILES + 1, 16, 3, 3)  # one tile per item: the oneDNN GEMM path
    with torch.inference_mode():
        out = layer(x)
        assert layer._packed is not None
        assert torch.equal(copy.deepcopy(layer)(x), out)
        assert torch.equal(pickle.loads(pickle.dumps(layer))(x), out)
        as_double = copy.deepcopy(layer).double()
        assert not as_double.uses_winograd(x.double())
        assert rel_err(as_double(x.double()), _direct64(x, weight, bias)) < 1e-12
