"""Implicit-GEMM conv building block: every candidate config, both gather paths, all epilogues,
the input and weight gradients, against F.conv2d in float64 (interpreter on CPU)."""

import pytest
import torch
import torch.nn.functional as F

from glam_fast.ops.conv2d_nhwc import (
    FORWARD_CONFIGS,
    STATS_BLOCK_M,
    WEIGHT_GRAD_CONFIGS,
    conv2d_nhwc,
    conv2d_nhwc_backward_weight,
    conv2d_nhwc_input_grad,
    conv2d_nhwc_ref,
    pack_weight,
    prune_configs,
)
from glam_fast.ops.partial_sums import combine_moments
from tests.helpers import rel_err

FP32_TOL = 2e-6  # fp32 accumulation vs float64 (the interpreter's tl.dot is IEEE fp32)


def _config_id(config):
    kw = config.kwargs
    return f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}w{config.num_warps}s{config.num_stages}"


def _problem(batch, height, width, c, n, kernel=(5, 5), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, height, width, c, generator=g).to(dtype)
    w = (torch.randn(n, c, *kernel, generator=g) / (c * kernel[0] * kernel[1]) ** 0.5).to(dtype)
    b = torch.randn(n, generator=g)
    return x, w, b


@pytest.mark.parametrize("config", FORWARD_CONFIGS, ids=_config_id)
@pytest.mark.parametrize("c, pool", [(16, True), (32, False)])
def test_every_forward_config(config, c, pool):
    """Each autotuning candidate (single-tap vectorised slices and multi-tap gathers) is correct."""
    x, w, b = _problem(2, 5, 7, c, 24)
    out, _ = conv2d_nhwc(x, pack_weight(w), b, (5, 5), relu=True, pool=pool, config=config)
    ref = conv2d_nhwc_ref(x.double(), w.double(), b.double(), relu=True, pool=pool)
    assert out.shape == ref.shape
    assert rel_err(out, ref) < FP32_TOL


@pytest.mark.parametrize(
    "batch, height, width, c, n, kernel",
    [(3, 7, 9, 3, 8, (5, 5)), (1, 6, 11, 5, 17, (3, 3)), (5, 3, 4, 16, 32, (5, 5)), (2, 4, 3, 8, 8, (1, 3))],
)
@pytest.mark.parametrize("pool, channels_first_out", [(False, False), (True, False), (False, True), (True, True)])
def test_forward_epilogues(batch, height, width, c, n, kernel, pool, channels_first_out):
    x, w, b = _problem(batch, height, width, c, n, kernel)
    for relu in (False, True):
        out, moments = conv2d_nhwc(x, pack_weight(w), b, kernel, relu=relu, pool=pool, channels_first_out=channels_first_out)
        assert moments is None
        ref = conv2d_nhwc_ref(x.double(), w.double(), b.double(), relu=relu, pool=pool, channels_first_out=channels_first_out)
        assert out.shape == ref.shape
        assert rel_err(out, ref) < FP32_TOL


@pytest.mark.parametrize("batch, height, width", [(1, 5, 7), (3, 13, 14)])
def test_batch_norm_moments(batch, height, width):
    """Per-tile sums and centred squares, merged: mean and biased variance of every channel,
    accurate even when the mean is large compared with the spread."""
    x, w, b = _problem(batch, height, width, 16, 32)
    b = b + 300.0
    y, moments = conv2d_nhwc(x, pack_weight(w), b, (5, 5), stats=True)
    assert moments.shape == (2, -(-batch * height * width // STATS_BLOCK_M), 32)
    ref = conv2d_nhwc_ref(x.double(), w.double(), b.double()).reshape(-1, 32)
    assert rel_err(y.reshape(-1, 32), ref) < FP32_TOL
    mean, var = combine_moments(moments[0], moments[1], STATS_BLOCK_M, batch * height * width)
    stored = y.double().reshape(-1, 32)  # statistics of the values as stored
    assert rel_err(mean, stored.mean(0)) < 1e-6
    assert rel_err(var, stored.var(0, unbiased=False)) < 1e-5


def test_fp16_forward_accumulates_in_fp32():
    x, w, b = _problem(3, 6, 9, 16, 32, dtype=torch.float16)
    out, _ = conv2d_nhwc(x, pack_weight(w), b, (5, 5), relu=True, pool=True)
    assert out.dtype == torch.float16
    ref = conv2d_nhwc_ref(x.double(), w.double(), b.double(), relu=True, pool=True)
    assert rel_err(out, ref) < 1e-3


@pytest.mark.parametrize("batch, height, width, c, n, kernel", [(3, 7, 9, 3, 8, (5, 5)), (2, 5, 6, 16, 32, (5, 5)), (1, 4, 5, 6, 4, (3, 1))])
def test_gradients(batch, height, width, c, n, kernel):
    x, w, b = _problem(batch, height, width, c, n, kernel)
    dy = torch.randn(batch, height, width, n)
    xr, wr, br = (t.double().requires_grad_() for t in (x, w, b))
    yr = F.conv2d(xr.permute(0, 3, 1, 2), wr, br, padding=(kernel[0] // 2, kernel[1] // 2))
    yr.backward(dy.double().permute(0, 3, 1, 2))
    dx = conv2d_nhwc_input_grad(dy, w)
    assert rel_err(dx, xr.grad) < FP32_TOL
    for splits in (None, 3):  # one split (no reduction pass) and a deterministic 3-way reduction
        dw, db = conv2d_nhwc_backward_weight(x, dy, kernel, splits=splits)
        assert dw.shape == w.shape and db.shape == b.shape
        assert rel_err(dw, wr.grad) < FP32_TOL
        assert rel_err(db, br.grad) < FP32_TOL


@pytest.mark.parametrize("config", WEIGHT_GRAD_CONFIGS, ids=_config_id)
def test_every_weight_grad_config(config):
    x, w, _ = _problem(2, 6, 5, 16, 24)
    dy = torch.randn(2, 6, 5, 24)
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    F.conv2d(xr.permute(0, 3, 1, 2), wr, padding=2).backward(dy.double().permute(0, 3, 1, 2))
    dw, db = conv2d_nhwc_backward_weight(x, dy, (5, 5), splits=2, config=config)
    assert rel_err(dw, wr.grad) < FP32_TOL
    assert rel_err(db, dy.double().sum((0, 1, 2))) < FP32_TOL


def test_pruned_configs_vectorise_glam_layers():
    """On a GPU only single-tap K slices (BLOCK_K divides C) are tried for GLAM's channel counts,
    and every candidate fits in shared memory."""
    for c, n in [(16, 32), (32, 64), (64, 128), (128, 128), (32, 16), (128, 64)]:
        for configs in (FORWARD_CONFIGS, WEIGHT_GRAD_CONFIGS):
            for element_bytes in (2, 4):
                kept = prune_configs(configs, c, n, element_bytes)
                assert kept
                for cfg in kept:
                    kw = cfg.kwargs
                    assert c % kw["BLOCK_K"] == 0
                    assert cfg.num_stages * (kw["BLOCK_M"] + kw["BLOCK_N"]) * kw["BLOCK_K"] * element_bytes <= 128 * 1024


def test_bad_inputs_are_named():
    x, w, b = _problem(1, 4, 4, 4, 4)
    with pytest.raises(ValueError, match="channels-last"):
        conv2d_nhwc(x[0], pack_weight(w), b, (5, 5))
    with pytest.raises(ValueError, match="odd kernel"):
        conv2d_nhwc(x, pack_weight(w), b, (4, 4))
    with pytest.raises(ValueError, match="packed weight"):
        conv2d_nhwc(x, pack_weight(w)[:-1], b, (5, 5))
    with pytest.raises(TypeError, match="weight dtype"):
        conv2d_nhwc(x, pack_weight(w, torch.float16), b, (5, 5))
    with pytest.raises(ValueError, match="pool"):
        conv2d_nhwc(x, pack_weight(w), b, (5, 5), pool=True, stats=True)
