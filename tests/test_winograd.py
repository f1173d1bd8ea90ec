"""Winograd F(4x4, 3x3) and F(4x4, 5x5) convolution + bias + ReLU (glam_fast.winograd) against
the direct convolution: the Toom-Cook matrices, the algorithm in PyTorch ops, the native transforms, the module's choice of path, and
AFCN's prepared form that uses it. Outputs of the native transforms are NaN-poisoned before they
run (GLAM_FAST_POISON=1, set by conftest), so an element they fail to write fails the test."""

from __future__ import annotations

import os
import sys
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from glam_fast import AFCN, GLAM, onednn, winograd
from glam_fast.inference import prepare
from tests.helpers import rel_err
from tests.score_helpers import randomize_batch_norm
from tests.test_inference import reference64

needs_native = pytest.mark.skipif(
    not (winograd.native_available() and onednn.available(torch.device("cpu"), torch.float32)),
    reason="native extension not built, or PyTorch without oneDNN",
)

# (batch, C_in, C_out, H, W): maps not a multiple of the 4x4 tile, a single pixel, one tile,
# channel counts of one and three vector steps.
SHAPES = [(2, 16, 32, 15, 11), (3, 32, 16, 1, 1), (1, 48, 64, 7, 9), (4, 16, 16, 4, 4), (2, 64, 32, 2, 3), (5, 16, 48, 9, 5)]


def _layer(c_in: int, c_out: int, seed: int, kernel_size: int = 3):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(c_out, c_in, kernel_size, kernel_size, generator=g) / (kernel_size**2 * c_in) ** 0.5
    bias = 0.1 * torch.randn(c_out, generator=g)
    return weight, bias


def _record_input_transforms(monkeypatch) -> list[int]:
    """The kernel size of every native input transform that runs from now on (the transform itself still runs)."""
    calls: list[int] = []
    real = winograd.input_transform
    monkeypatch.setattr(winograd, "input_transform", lambda x, k: calls.append(k) or real(x, k))
    return calls


def _direct64(x, weight, bias):
    return F.relu(F.conv2d(x.double(), weight.double(), bias.double(), padding=weight.shape[-1] // 2))


def test_toom_cook_gives_lavin_and_grays_matrices_for_3x3():
    """The constructed F(4x4, 3x3) matrices are the published ones (Lavin & Gray 2016, with their
    row signs and scaling)."""
    at, g, bt = winograd.toom_cook(3)
    F_ = Fraction
    assert bt == ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
    assert g == ((F_(1, 4), 0, 0), (F_(-1, 6),) * 3, (F_(-1, 6), F_(1, 6), F_(-1, 6)), (F_(1, 24), F_(1, 12), F_(1, 6)),
                 (F_(1, 24), F_(-1, 12), F_(1, 6)), (0, 0, 1))
    assert at == ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))


@pytest.mark.parametrize("kernel_size", winograd.KERNEL_SIZES)
def test_toom_cook_is_exact_correlation_in_one_dimension(kernel_size):
    """A^T [(G g) * (B^T d)] equals the 4 outputs of correlating d with g, in exact arithmetic."""
    at, g, bt = winograd.toom_cook(kernel_size)
    tile = kernel_size + 3
    d = [Fraction(3 * i * i - 7 * i + 2, 5) for i in range(tile)]  # arbitrary exact values
    w = [Fraction((-1) ** k * (k + 2), 3) for k in range(kernel_size)]
    product = [sum(g[a][k] * w[k] for k in range(kernel_size)) * sum(bt[a][i] * d[i] for i in range(tile)) for a in range(tile)]
    out = [sum(at[i][a] * product[a] for a in range(tile)) for i in range(4)]
    assert out == [sum(d[i + k] * w[k] for k in range(kernel_size)) for i in range(4)]


def test_extension_has_the_transforms_where_it_is_required():
    """CI builds the extension (GLAM_FAST_REQUIRE_EXTENSION=1): there the Winograd path must exist,
    so that AFCN's prepared form cannot quietly lose it."""
    if os.environ.get("GLAM_FAST_REQUIRE_EXTENSION") != "1":
        pytest.skip("the extension is optional here")
    assert winograd.native_available()


@pytest.mark.parametrize("kernel_size", winograd.KERNEL_SIZES)
@pytest.mark.parametrize("shape", SHAPES)
def test_algorithm_in_float64_is_the_convolution(shape, kernel_size):
    """The transforms (B^T d B, G g G^T, A^T m A) are exact: in float64 they give the direct
    convolution to rounding."""
    batch, c_in, c_out, h, w = shape
    weight, bias = _layer(c_in, c_out, seed=h * w, kernel_size=kernel_size)
    x = torch.randn(batch, c_in, h, w, dtype=torch.float64)
    out = winograd.winograd_conv_relu_reference(x, weight.double(), bias.double())
    assert out.shape == (batch, c_out, h, w)
    assert (out - _direct64(x, weight, bias)).abs().max() < 1e-12


@needs_native
@pytest.mark.parametrize("kernel_size", winograd.KERNEL_SIZES)
@pytest.mark.parametrize("gemm", ["native", "onednn"])
@pytest.mark.parametrize("shape", SHAPES)
def test_native_path_matches_the_convolution(shape, gemm, kernel_size, monkeypatch):
    """Both ways of running the GEMMs: the native GEMM or oneDNN calls (large outputs)."""
    monkeypatch.setattr(winograd, "NATIVE_GEMM_MAX_BYTES", 1 << 40 if gemm == "native" else 0)
    batch, c_in, c_out, h, w = shape
    weight, bias = _layer(c_in, c_out, seed=h + w, kernel_size=kernel_size)
    x = torch.randn(batch, c_in, h, w).contiguous(memory_format=torch.channels_last)
    layer = winograd.WinogradConvReLU(weight, bias, min_tiles=1)
    with torch.inference_mode():
        out = layer(x)
    assert out.shape == (batch, c_out, h, w) and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(out).all()
    assert rel_err(out, _direct64(x, weight, bias)) < 1e-5
    # the same arithmetic in PyTorch ops, float32: only the summation order differs
    assert (out - winograd.winograd_conv_relu_reference(x, weight, bias)).abs().max() < 1e-4


@needs_native
@pytest.mark.parametrize("kernel_size", winograd.KERNEL_SIZES)
def test_native_input_transform_is_the_reference_transform(kernel_size):
    """v[k] for each of the (k + 3)^2 positions, tile-major rows, against B^T d B in float64."""
    torch.manual_seed(0)
    x = torch.randn(2, 32, 9, 6)
    v = winograd.input_transform(x.permute(0, 2, 3, 1).contiguous(), kernel_size)
    tile, pad, positions = kernel_size + 3, kernel_size // 2, winograd.positions(kernel_size)
    assert v.shape == (positions, 2 * 3 * 2, 32)
    bt = winograd._matrix(winograd.toom_cook(kernel_size)[2], torch.float64, "cpu")
    padded = F.pad(x.double(), (pad, 4 * 2 + tile - 4 - pad - 6, pad, 4 * 3 + tile - 4 - pad - 9))
    patches = padded.unfold(2, tile, 4).unfold(3, tile, 4)  # (B, C, 3, 2, tile, tile)
    expected = torch.einsum("ar,nctwrs,bs->abntwc", bt, patches, bt).reshape(positions, -1, 32)
    assert (v.double() - expected).abs().max() < 1e-4


@needs_native
@pytest.mark.parametrize("kernel_size", winograd.KERNEL_SIZES)
def test_transforms_split_over_threads_give_the_same_bits(kernel_size):
    """The tiles split over 2, 3 or more threads than there are tiles: every element written, each
    exactly as one thread computes it (outputs NaN-poisoned first)."""
    torch.manual_seed(kernel_size)
    native, d = winograd._native(), winograd._descriptor
    x = torch.randn(3, 9, 7, 32)  # 3 x 3 x 2 = 18 tiles
    tiles, positions = winograd.tiles(3, 9, 7), winograd.positions(kernel_size)
    m = [torch.randn(tiles, 16) for _ in range(positions)]
    bias = torch.randn(16)
    results = []
    for threads in (1, 2, 3, 64):
        v, y = torch.full((positions, tiles, 32), float("nan")), torch.full((3, 9, 7, 16), float("nan"))
        native.winograd_input_transform(d(x), d(v), kernel_size, threads)
        native.winograd_output_transform([d(t) for t in m], d(bias), d(y), kernel_size, threads)
        y_from_one, stacked = torch.full_like(y, float("nan")), torch.stack(m)  # the GEMM outputs as one (P, tiles, C) tensor
        native.winograd_output_transform(d(stacked), d(bias), d(y_from_one), kernel_size, threads)
        panels = winograd.pack_panels(torch.randn(positions, 32, 48, generator=torch.Generator().manual_seed(1)))
        gemm_out = torch.full((positions, tiles, 48), float("nan"))
        native.winograd_gemm(d(v), d(panels), d(gemm_out), threads)
        assert torch.isfinite(v).all() and torch.isfinite(y).all() and torch.isfinite(gemm_out).all()
        assert torch.equal(y_from_one, y)
        results.append((v, y, gemm_out))
    for result in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(result, results[0]))


@needs_native
@pytest.mark.skipif(sys.platform != "linux" or "OpenMP" not in torch.__config__.parallel_info(), reason="PyTorch without OpenMP, or not Linux")
def test_transforms_use_pytorchs_openmp_runtime():
    """Where PyTorch runs its CPU ops on OpenMP (Linux wheels), the transforms find that runtime
    through libtorch_cpu, so their threads are PyTorch's team and not a second pool."""
    runtime = winograd._native().cpu_openmp_runtime()
    assert "omp" in os.path.basename(runtime), runtime
    assert os.path.exists(runtime)


@needs_native
@pytest.mark.parametrize("kernel_size", winograd.KERNEL_SIZES)
def test_channels_last_and_nchw_input_give_the_same_output(kernel_size):
    weight, bias = _layer(16, 32, seed=3, kernel_size=kernel_size)
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
    calls = _record_input_transforms(monkeypatch)
    with torch.inference_mode():
        for batch, used in ((2, False), (3, True)):
            x = torch.randn(batch, 16, 5, 7)
            assert rel_err(layer(x), _direct64(x, weight, bias)) < 1e-5
            assert bool(calls) is used
    x = torch.randn(4, 16, 5, 7, requires_grad=True)
    layer(x).sum().backward()
    assert len(calls) == 1 and x.grad is not None and torch.isfinite(x.grad).all()


@needs_native
def test_5x5_layers_have_no_tile_minimum_and_take_gradients_directly(monkeypatch):
    """A 5x5 layer runs the Winograd path from one tile up; with grad it runs the direct
    convolution (padding 2) and gets the direct convolution's gradient."""
    weight, bias = _layer(16, 16, seed=5, kernel_size=5)
    layer = winograd.WinogradConvReLU(weight, bias)
    assert layer.min_tiles == winograd.MIN_TILES[5] == 1
    calls = _record_input_transforms(monkeypatch)
    x = torch.randn(1, 16, 3, 2)
    with torch.inference_mode():
        assert rel_err(layer(x), _direct64(x, weight, bias)) < 1e-5
    assert calls == [5]
    x = torch.randn(2, 16, 6, 9, requires_grad=True)
    layer(x).sum().backward()
    expected = x.detach().double().requires_grad_()
    _direct64(expected, weight, bias).sum().backward()
    assert calls == [5] and rel_err(x.grad, expected.grad) < 1e-5


@needs_native
def test_bad_arguments_are_named():
    native = winograd._native()
    x = torch.randn(1, 4, 4, 20)
    d = winograd._descriptor
    with pytest.raises(ValueError, match="channels; the transforms need a multiple of 16"):
        native.winograd_input_transform(d(x), d(torch.empty(36, 1, 20)), 3)
    x = torch.randn(1, 4, 4, 16)
    with pytest.raises(ValueError, match=r"v must have shape \(P, tiles, C\) = \(36, 1, 16\)"):
        native.winograd_input_transform(d(x), d(torch.empty(36, 2, 16)), 3)
    with pytest.raises(ValueError, match=r"v must have shape \(P, tiles, C\) = \(64, 1, 16\)"):
        native.winograd_input_transform(d(x), d(torch.empty(36, 1, 16)), 5)
    with pytest.raises(ValueError, match="threads must be at least 1, got 0"):
        native.winograd_input_transform(d(x), d(torch.empty(36, 1, 16)), 3, 0)
    with pytest.raises(ValueError, match="kernel_size must be 3 or 5, got 7"):
        native.winograd_input_transform(d(x), d(torch.empty(100, 1, 16)), 7)
    with pytest.raises(TypeError, match="x must be float32"):
        native.winograd_input_transform(d(x.double()), d(torch.empty(36, 1, 16)), 3)
    with pytest.raises(ValueError, match="x must be contiguous"):
        native.winograd_input_transform(d(x.transpose(1, 2)), d(torch.empty(36, 1, 16)), 3)
    m = [torch.empty(1, 16)] * 36
    with pytest.raises(ValueError, match="m must hold the 36 GEMM outputs of a 3x3 kernel, got 35"):
        native.winograd_output_transform([d(t) for t in m[:35]], d(torch.zeros(16)), d(x), 3)
    with pytest.raises(ValueError, match="m must hold the 64 GEMM outputs of a 5x5 kernel, got 36"):
        native.winograd_output_transform([d(t) for t in m], d(torch.zeros(16)), d(x), 5)
    with pytest.raises(ValueError, match=r"m must have shape \(P, tiles, C\) = \(64, 1, 16\)"):
        native.winograd_output_transform(d(torch.empty(36, 1, 16)), d(torch.zeros(16)), d(x), 5)
    with pytest.raises(ValueError, match="needs a 3x3 or 5x5 weight with C_in and C_out multiples of 16"):
        winograd.WinogradConvReLU(torch.randn(16, 8, 3, 3), torch.randn(16))
    with pytest.raises(ValueError, match="needs a 3x3 or 5x5 weight"):
        winograd.WinogradConvReLU(torch.randn(16, 16, 7, 7), torch.randn(16))
    assert winograd.supported(torch.randn(16, 16, 3, 3), stride=1, padding=1)
    assert winograd.supported(torch.randn(16, 16, 5, 5), stride=1, padding=2)
    assert not winograd.supported(torch.randn(16, 16, 3, 3), stride=2, padding=1)
    assert not winograd.supported(torch.randn(16, 16, 5, 5), stride=1, padding=1)
    assert not winograd.supported(torch.randn(16, 16, 7, 7), stride=1, padding=3)
    assert not winograd.supported(torch.randn(16, 16, 3, 5), stride=1, padding=1)


@needs_native
def test_prepared_afcn_runs_conv2_to_conv5_as_winograd(monkeypatch):
    """AFCN's conv2 (5x5) and conv3-5 (3x3) become Winograd layers, which run from min_tiles up
    (here a batch of 8 at 70 x 97: 2 tiles per item in conv3-5) with the reference's logits,
    padded or not."""
    torch.manual_seed(8)
    model = AFCN(num_classes=3, attn_dim=8).eval()
    fast, direct = prepare(model), prepare(model, use_winograd=False)
    assert [getattr(conv, "kernel_size", type(conv).__name__) for conv in fast.convs] == ["ConvReLU", 5, 3, 3, 3]
    assert not any(isinstance(conv, winograd.WinogradConvReLU) for conv in direct.convs)
    for conv in fast.convs[2:]:
        conv.min_tiles = 16
    calls = _record_input_transforms(monkeypatch)
    x = torch.randn(8, 3, 70, 97)
    lengths = torch.tensor([97, 90, 97, 80, 97, 70, 97, 97])
    with torch.inference_mode():
        assert rel_err(fast(x), reference64(model, x)) < 1e-5
        assert calls == [5, 3, 3, 3]
        assert rel_err(fast(x, lengths), reference64(model, x, lengths)) < 1e-5
        assert calls == [5, 3, 3, 3] * 2
        assert rel_err(fast(x[:2]), reference64(model, x[:2])) < 1e-5  # conv3-5: 4 tiles, direct
        assert calls == [5, 3, 3, 3] * 2 + [5]


def test_use_winograd_is_checked():
    from glam_fast import MSSENet

    with pytest.raises(ValueError, match="use_winograd applies to GLAM and AFCN only, not to MSSENet"):
        prepare(MSSENet(4), use_winograd=True)
    with pytest.raises(RuntimeError, match=r"use_winograd=True\) needs the oneDNN path"):
        prepare(AFCN(3), onednn=False, use_winograd=True)


@needs_native
@pytest.mark.parametrize("kernel_size", winograd.KERNEL_SIZES)
def test_gemms_run_native_up_to_the_output_limit_and_as_onednn_calls_above(kernel_size, monkeypatch):
    """While the GEMM output (P x tiles x C_out floats) is within NATIVE_GEMM_MAX_BYTES the P GEMMs
    are one native call, above it P oneDNN calls; no PyTorch matmul or convolution either way."""
    from tests.test_inference import _CountOps

    weight, bias = _layer(16, 16, seed=9, kernel_size=kernel_size)
    layer = winograd.WinogradConvReLU(weight, bias, min_tiles=1)
    per_item = winograd.tiles(1, 8, 8)
    monkeypatch.setattr(winograd, "NATIVE_GEMM_MAX_BYTES", winograd.positions(kernel_size) * 3 * per_item * 16 * 4)
    native_calls = []
    real_gemm = winograd.gemm
    monkeypatch.setattr(winograd, "gemm", lambda v, u, c: native_calls.append(v.shape[1]) or real_gemm(v, u, c))
    for batch, native, onednn_calls in ((3, [3 * per_item], 0), (4, [], winograd.positions(kernel_size))):
        native_calls.clear()
        x = torch.randn(batch, 16, 8, 8)
        with torch.inference_mode(), _CountOps() as counted:
            out = layer(x)
        assert native_calls == native and counted.calls["mkldnn._linear_pointwise"] == onednn_calls, counted.calls
        assert not any(op in counted.calls for op in ("aten.bmm", "aten.mm", "aten.convolution", "mkldnn._convolution_pointwise")), counted.calls
        assert rel_err(out, _direct64(x, weight, bias)) < 1e-5


# (positions, tiles, C_in, C_out): tiles across the 64-row work items and the 8 / 4 / 2 / 1-row
# tiles, C_out with and without a 16-column last panel, C_in of one.
GEMM_SHAPES = [(36, 12, 384, 256), (64, 1, 64, 192), (4, 130, 16, 48), (3, 7, 1, 16), (2, 64, 33, 80), (5, 71, 20, 32)]


@needs_native
@pytest.mark.parametrize("shape", GEMM_SHAPES)
def test_native_gemm_matches_float64_matmul(shape):
    positions, n_tiles, c_in, c_out = shape
    g = torch.Generator().manual_seed(sum(shape))
    v, u = torch.randn(positions, n_tiles, c_in, generator=g), torch.randn(positions, c_in, c_out, generator=g)
    panels = winograd.pack_panels(u)
    assert panels.shape == (positions, c_in * c_out)
    assert torch.equal(winograd.unpack_panels(panels, c_in, c_out), u)
    m = winograd.gemm(v, panels, c_out)
    assert m.shape == (positions, n_tiles, c_out)
    assert rel_err(m, torch.bmm(v.double(), u.double())) < 1e-6


@needs_native
def test_native_gemm_checks_its_arguments():
    d, native = winograd._descriptor, winograd._native()
    v, m = torch.randn(4, 5, 16), torch.empty(4, 5, 32)
    panels = winograd.pack_panels(torch.randn(4, 16, 32))
    native.winograd_gemm(d(v), d(panels), d(m))
    with pytest.raises(ValueError, match=r"u must have shape \(P, C_in \* C_out\)"):
        native.winograd_gemm(d(v), d(panels[:, :-16]), d(m))
    with pytest.raises(ValueError, match="multiple of 16"):
        native.winograd_gemm(d(v), d(torch.randn(4, 16 * 24)), d(torch.empty(4, 5, 24)))
    with pytest.raises(ValueError, match=r"m must have shape"):
        native.winograd_gemm(d(v), d(panels), d(torch.empty(3, 5, 32)))
    with pytest.raises(TypeError, match="float32"):
        native.winograd_gemm(d(v.double()), d(panels), d(m))
    with pytest.raises(ValueError, match="contiguous"):
        native.winograd_gemm(d(torch.randn(4, 16, 5).transpose(1, 2)), d(panels), d(m))


@needs_native
def test_used_layer_copies_pickles_and_casts(monkeypatch):
    """The packed oneDNN weights are a cache: a deep copy or pickle of a layer that has used them
    gives the same output; cast to float64 it leaves the Winograd path and still matches."""
    import copy
    import pickle

    weight, bias = _layer(16, 32, seed=10)
    layer = winograd.WinogradConvReLU(weight, bias, min_tiles=1)
    monkeypatch.setattr(winograd, "NATIVE_GEMM_MAX_BYTES", 0)  # the oneDNN GEMM path
    x = torch.randn(7, 16, 3, 3)
    with torch.inference_mode():
        out = layer(x)
        assert layer._onednn_weights is not None
        assert torch.equal(copy.deepcopy(layer)(x), out)
        assert torch.equal(pickle.loads(pickle.dumps(layer))(x), out)
        as_double = copy.deepcopy(layer).double()
        assert not as_double.uses_winograd(x.double())
        assert rel_err(as_double(x.double()), _direct64(x, weight, bias)) < 1e-12


@needs_native
def test_prepared_glam_runs_its_winograd_layers_from_their_batch_sizes(monkeypatch):
    """GLAM's conv5 is a Winograd layer at every batch size, the 5x5 branches of blocks 3 and 4 and
    block 4's 3x3 branch from 4 segments per call (GLAM_WINOGRAD_FROM_BATCH), block 2 never; the
    logits equal the reference either way, and use_winograd=False runs none."""
    from glam_fast.inference import GLAM_WINOGRAD_FROM_BATCH

    assert GLAM_WINOGRAD_FROM_BATCH[(5, 128)] == 1 and GLAM_WINOGRAD_FROM_BATCH[(5, 64)] == 4
    model = randomize_batch_norm(GLAM((26, 57), num_classes=4), seed=11)
    fast, direct = prepare(model, micro_batch=None), prepare(model, micro_batch=None, use_winograd=False)
    calls = _record_input_transforms(monkeypatch)
    for batch, expected in ((1, [5]), (3, [5]), (5, [5, 3, 5, 5])):
        calls.clear()
        x = torch.randn(batch, 1, 26, 57)
        with torch.inference_mode():
            assert rel_err(fast(x), reference64(model, x)) < 1e-5
            assert calls == expected, (batch, calls)
            assert rel_err(direct(x), reference64(model, x)) < 1e-5
            assert calls == expected


@needs_native
def test_nan_input_gives_nan_output_not_zero():
    """The output transform's ReLU keeps NaN (as torch.relu): a NaN pixel makes NaN outputs (the
    transform spreads it over its tiles) where a ReLU that returned 0 would hide it."""
    weight, bias = _layer(16, 16, seed=12)
    layer = winograd.WinogradConvReLU(weight, bias, min_tiles=1)
    x = torch.randn(1, 16, 8, 8)
    x[0, 3, 5, 2] = float("nan")
    with torch.inference_mode():
        out = layer(x)
    direct_nan = torch.isnan(_direct64(x, weight, bias))
    assert torch.isnan(out)[direct_nan].all()
