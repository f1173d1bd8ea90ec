"""Implicit-GEMM 2-D convolution on channels-last activations: the building block of GLAM's convs.

A stride-1 "same" convolution with an odd KH x KW kernel, as one GEMM on tensor cores (tl.dot):
M = output pixels (B*H*W flattened), N = output channels, K = KH*KW taps x C input channels.
The A operand is never materialised: each (BLOCK_M, BLOCK_K) tile of the virtual im2col matrix is
gathered from the NHWC input (contiguous along C), zero outside the image. The weights are
packed once, K-major, as a (K_pad, N) matrix with row k = tap * C + c (tap = kh * KW + kw) and
K_pad a multiple of K_ALIGN filled with zero rows. A small per-layer table (:func:`tap_table`)
gives each k its (dh, dw) shift and element offset, so the K loop does no index arithmetic.

Epilogues (constexpr flags of one forward kernel):
  * bias, then ReLU;
  * 2x2 max-pool (floor): the tile's rows are ordered (sub-position, pooled pixel), so the pool is
    a max over the leading axis of the accumulator reshaped to (4, BLOCK_M // 4, BLOCK_N) and only
    pixels that survive the pool are computed;
  * BatchNorm statistics: per tile and channel, the sum and the centred sum of squares of the
    values as stored (reduced by :mod:`glam_fast.ops.partial_sums`);
  * output strides: NHWC, or NCHW for the layer that feeds the global-aware fusion.

Backward: the input gradient is this same forward kernel run on the output gradient with the
weights transposed and flipped (:func:`pack_weight_for_input_grad`); the weight gradient is a
split-K GEMM over the B*H*W pixels (:func:`conv2d_nhwc_backward_weight`), reduced
deterministically.

fp32 inputs use TF32 tensor cores when ``torch.backends.cudnn.allow_tf32`` is set (PyTorch's
default for convolutions, ~1e-3 relative error) and IEEE fp32 otherwise; fp16/bf16 accumulate in
fp32. Indices are int32: every tensor must have fewer than 2**31 elements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from glam_fast.kernels import KernelSpec
from glam_fast.ops.utils import autotune_configs, empty_output, interpreting

K_ALIGN = 128  # packed weights have a multiple of this many rows (the largest BLOCK_K)
_WGRAD_ROW_ALIGN = 128  # rows per split of the weight gradient: a multiple of every BLOCK_M


def _config(bm, bn, bk, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)


# Candidates for the GPU autotuner (pruned per problem by _prune); the first is the one the
# interpreter runs: it has the fewest programs x K steps, which is what costs time there.
FORWARD_CONFIGS = [
    _config(128, 128, 128, 8, 2),
    _config(128, 128, 64, 8, 3),
    _config(128, 64, 64, 4, 3),
    _config(64, 128, 64, 4, 3),
    _config(128, 64, 32, 4, 4),
    _config(128, 32, 32, 4, 4),
    _config(128, 32, 16, 4, 4),
    _config(256, 32, 16, 8, 4),
]
WEIGHT_GRAD_CONFIGS = [
    _config(128, 128, 128, 8, 2),
    _config(128, 128, 64, 8, 3),
    _config(64, 64, 64, 4, 3),
    _config(128, 32, 64, 4, 3),
    _config(128, 64, 32, 4, 3),
    _config(128, 64, 32, 8, 3),  # the 4-warp one spills in fp32 on sm_90
    _config(128, 32, 16, 4, 4),
]
# Operand buffers (all pipeline stages) must fit in this much shared memory: A100's 163 KiB
# less room for the epilogue's layout conversions and reductions.
SHARED_MEMORY_BUDGET = 128 * 1024


def fit_shared_memory(config: triton.Config, element_bytes: int) -> triton.Config:
    """``config`` with num_stages lowered until its A and B tiles fit SHARED_MEMORY_BUDGET."""
    kw = config.kwargs
    stage_bytes = (kw["BLOCK_M"] * kw["BLOCK_K"] + kw["BLOCK_K"] * kw["BLOCK_N"]) * element_bytes
    stages = max(1, min(config.num_stages, SHARED_MEMORY_BUDGET // stage_bytes))
    if stages == config.num_stages:
        return config
    return triton.Config(dict(kw), num_warps=config.num_warps, num_stages=stages)


def prune_configs(configs, c: int, n: int, element_bytes: int) -> list:
    """The candidates worth trying for C input / N output channels (at least one is kept):
    BLOCK_N at most N's next power of two (32 at least); when C is a multiple of 16, only BLOCK_K
    that divide C (single-tap slices, vectorised gathers) and at least min(C, 32); stages fitted
    to shared memory. The autotuner and the compile report both use this."""
    width = max(32, triton.next_power_of_2(n))
    kept = [cfg for cfg in configs if cfg.kwargs["BLOCK_N"] <= width]
    if c % 16 == 0:
        kept = [cfg for cfg in kept if c % cfg.kwargs["BLOCK_K"] == 0 and cfg.kwargs["BLOCK_K"] >= min(c, 32)]
    kept = kept or [min(configs, key=lambda cfg: (cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_K"]))]
    return [fit_shared_memory(cfg, element_bytes) for cfg in kept]


def _prune(configs, named_args, **kwargs):
    return prune_configs(configs, named_args["C"], named_args["N"], named_args["x_ptr"].element_size())


def _single_tap(args) -> bool:
    """Each BLOCK_K slice of K lies within one tap (C % BLOCK_K == 0): the gather is then one
    shift per row and BLOCK_K contiguous channels, loaded as wide vectors."""
    return args["C"] % args["BLOCK_K"] == 0


@triton.jit
def _im2col_rows(x_ptr, b, h, w, H, W, C, ALIGN: tl.constexpr):
    """Row side of the im2col gather: each row's pixel pointer (a multiple of ALIGN elements from
    x_ptr) and the tap shifts that stay inside the image, dh in [-h, H - h), dw in [-w, W - w)."""
    return x_ptr + tl.multiple_of(((b * H + h) * W + w) * C, ALIGN), -h, H - h, -w, W - w


@triton.jit
def _im2col_cols(taps_ptr, K_pad, k0, BLOCK_K: tl.constexpr, SINGLE_TAP: tl.constexpr):
    """K side of the gather for k in [k0, k0 + BLOCK_K), from the tap table (:func:`tap_table`):
    each k's element offset from its row's pixel pointer and its tap shift (dh, dw). With
    SINGLE_TAP the shift is a scalar and the offsets are contiguous and BLOCK_K-aligned (the
    compiler then vectorises the loads). Padding entries (k >= K) have a shift no pixel accepts."""
    if SINGLE_TAP:
        col = tl.multiple_of(tl.load(taps_ptr + k0), BLOCK_K) + tl.arange(0, BLOCK_K)
        dh = tl.load(taps_ptr + K_pad + k0)
        dw = tl.load(taps_ptr + 2 * K_pad + k0)
    else:
        offs_k = k0 + tl.arange(0, BLOCK_K)
        col = tl.load(taps_ptr + offs_k)
        dh = tl.load(taps_ptr + K_pad + offs_k)
        dw = tl.load(taps_ptr + 2 * K_pad + offs_k)
    return col, dh, dw


@triton.jit
def _im2col_load(row_ptrs, h_lo, h_hi, w_lo, w_hi, row_ok, col, dh, dw, SINGLE_TAP: tl.constexpr):
    """The (BLOCK_M, BLOCK_K) tile A[m, k] = x[b, h + dh(k), w + dw(k), c(k)], zero outside the image."""
    if SINGLE_TAP:
        ok = row_ok & (dh >= h_lo) & (dh < h_hi) & (dw >= w_lo) & (dw < w_hi)
        mask = ok[:, None]
    else:
        mask = row_ok[:, None] & (dh[None, :] >= h_lo[:, None]) & (dh[None, :] < h_hi[:, None])
        mask = mask & (dw[None, :] >= w_lo[:, None]) & (dw[None, :] < w_hi[:, None])
    return tl.load(row_ptrs[:, None] + col[None, :], mask=mask, other=0.0)


@triton.heuristics({"SINGLE_TAP": _single_tap})
@triton.jit
def _conv2d_nhwc_forward_kernel(
    x_ptr, w_ptr, taps_ptr, bias_ptr, out_ptr, stats_ptr,
    H, W, C, N, K, K_pad, M_out,
    stride_ob, stride_oh, stride_ow, stride_on,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, POOL: tl.constexpr,
    STATS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SINGLE_TAP: tl.constexpr,
):  # fmt: skip
    """out = epilogue(conv(x, w) + bias). x: (B, H, W, C); w: (K_pad, N) packed; taps: (3, K_pad)
    tap table; out: pooled or full-resolution pixels written through the given strides; M_out =
    number of output pixels."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)
    if POOL:
        # row = sub * (BLOCK_M // 4) + p: sub-position (dh, dw) of pooled pixel p of this tile
        Ho = H // 2
        Wo = W // 2
        q = pid_m * (BLOCK_M // 4) + rows % (BLOCK_M // 4)
        sub = rows // (BLOCK_M // 4)
        b = q // (Ho * Wo)
        r = q % (Ho * Wo)
        h = 2 * (r // Wo) + sub // 2
        w = 2 * (r % Wo) + sub % 2
    else:
        q = pid_m * BLOCK_M + rows
        b = q // (H * W)
        r = q % (H * W)
        h = r // W
        w = r % W
    row_ok = q < M_out
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N

    row_ptrs, h_lo, h_hi, w_lo, w_hi = _im2col_rows(x_ptr, b, h, w, H, W, C, BLOCK_K if SINGLE_TAP else 1)
    w_ptrs = w_ptr + tl.arange(0, BLOCK_K)[:, None] * N + offs_n[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        col, dh, dw = _im2col_cols(taps_ptr, K_pad, k0, BLOCK_K, SINGLE_TAP)
        a = _im2col_load(row_ptrs, h_lo, h_hi, w_lo, w_hi, row_ok, col, dh, dw, SINGLE_TAP)
        acc = tl.dot(a, tl.load(w_ptrs, mask=n_ok[None, :], other=0.0), acc, input_precision=PRECISION)
        w_ptrs += BLOCK_K * N

    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if STATS:
        # moments of the values as stored, so that normalising the stored tensor is consistent
        acc = acc.to(out_ptr.dtype.element_ty).to(tl.float32)
        count = tl.minimum(M_out - pid_m * BLOCK_M, BLOCK_M).to(tl.float32)
        tile_sum = tl.sum(tl.where(row_ok[:, None], acc, 0.0), axis=0)
        dev = tl.where(row_ok[:, None], acc - (tile_sum / count)[None, :], 0.0)
        tiles = tl.num_programs(0)
        tl.store(stats_ptr + pid_m * N + offs_n, tile_sum, mask=n_ok)
        tl.store(stats_ptr + (tiles + pid_m) * N + offs_n, tl.sum(dev * dev, axis=0), mask=n_ok)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    if POOL:
        pooled = tl.max(tl.reshape(acc, (4, BLOCK_M // 4, BLOCK_N)), axis=0)
        qp = pid_m * (BLOCK_M // 4) + tl.arange(0, BLOCK_M // 4)
        bp = qp // (Ho * Wo)
        rp = qp % (Ho * Wo)
        out_ptrs = out_ptr + (bp * stride_ob + (rp // Wo) * stride_oh + (rp % Wo) * stride_ow)[:, None] + offs_n[None, :] * stride_on
        tl.store(out_ptrs, pooled.to(out_ptr.dtype.element_ty), mask=(qp < M_out)[:, None] & n_ok[None, :])
    else:
        out_ptrs = out_ptr + (b * stride_ob + h * stride_oh + w * stride_ow)[:, None] + offs_n[None, :] * stride_on
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


_FORWARD_KEY = ["C", "N", "K", "M_out", "HAS_BIAS", "RELU", "POOL", "STATS"]
_conv2d_nhwc_forward = triton.autotune(
    configs=autotune_configs(FORWARD_CONFIGS), key=_FORWARD_KEY, prune_configs_by={"early_config_prune": _prune}
)(_conv2d_nhwc_forward_kernel)
# With BatchNorm statistics the moments buffer is sized before launch: one tile height for all.
STATS_BLOCK_M = 128
STATS_CONFIGS = [c for c in FORWARD_CONFIGS if c.kwargs["BLOCK_M"] == STATS_BLOCK_M]
_conv2d_nhwc_forward_stats = triton.autotune(
    configs=autotune_configs(STATS_CONFIGS), key=_FORWARD_KEY, prune_configs_by={"early_config_prune": _prune}
)(_conv2d_nhwc_forward_kernel)


@triton.heuristics({"SINGLE_TAP": _single_tap})
@triton.jit
def _conv2d_nhwc_backward_weight_kernel(
    x_ptr, dy_ptr, taps_ptr, dw_ptr, db_ptr,
    H, W, C, N, K, K_pad, M, rows_per_split,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SINGLE_TAP: tl.constexpr,
):  # fmt: skip
    """Split-K weight gradient: dw[s, k, n] = sum over pixels m of split s of A[m, k] * dy[m, n]
    (A = im2col(x)), and db[s, n] = sum of dy[m, n]. x: (B, H, W, C); dy: (M = B*H*W, N)."""
    pid_k = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    col, dh, dw = _im2col_cols(taps_ptr, K_pad, pid_k * BLOCK_K, BLOCK_K, SINGLE_TAP)
    start = pid_s * rows_per_split
    end = tl.minimum(start + rows_per_split, M)
    acc = tl.zeros((BLOCK_K, BLOCK_N), tl.float32)
    acc_bias = tl.zeros((BLOCK_N,), tl.float32)
    for m0 in range(start, end, BLOCK_M):
        q = m0 + tl.arange(0, BLOCK_M)
        row_ok = q < end
        b = q // (H * W)
        r = q % (H * W)
        row_ptrs, h_lo, h_hi, w_lo, w_hi = _im2col_rows(x_ptr, b, r // W, r % W, H, W, C, BLOCK_K if SINGLE_TAP else 1)
        a = _im2col_load(row_ptrs, h_lo, h_hi, w_lo, w_hi, row_ok, col, dh, dw, SINGLE_TAP)
        g = tl.load(dy_ptr + q[:, None] * N + offs_n[None, :], mask=row_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(tl.trans(a), g, acc, input_precision=PRECISION)
        acc_bias += tl.sum(g.to(tl.float32), axis=0)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    tl.store(dw_ptr + pid_s * K * N + offs_k[:, None] * N + offs_n[None, :], acc, mask=(offs_k < K)[:, None] & n_ok[None, :])
    if pid_k == 0:
        tl.store(db_ptr + pid_s * N + offs_n, acc_bias, mask=n_ok)


_conv2d_nhwc_backward_weight = triton.autotune(
    configs=autotune_configs(WEIGHT_GRAD_CONFIGS), key=["C", "N", "K", "M"], prune_configs_by={"early_config_prune": _prune}
)(_conv2d_nhwc_backward_weight_kernel)


# ----------------------------------------------------------------------------------------------
# Host side


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot precision for inputs of ``dtype``: fp32 follows torch.backends.cudnn.allow_tf32 (as
    PyTorch's own convolutions do); fp16/bf16 accumulate in fp32 either way."""
    if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "ieee"
    return "tf32"


_tap_tables: dict[tuple, torch.Tensor] = {}
_INVALID_SHIFT = 1 << 20  # a tap shift outside every image: marks padding entries k >= K


def tap_table(channels: int, width: int, kernel_size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(3, K_pad) int32, for k = (kh * KW + kw) * C + c: [offset of x[b, h + dh, w + dw, c] from
    x[b, h, w, 0] ; dh ; dw] with dh = kh - KH // 2, dw = kw - KW // 2; padding entries get an
    impossible dh. Cached per (C, W, kernel, device): the gather then needs no index arithmetic
    in its K loop."""
    key = (channels, width, tuple(kernel_size), torch.device(device))
    table = _tap_tables.get(key)
    if table is None:
        kh, kw = kernel_size
        k = kh * kw * channels
        index = torch.arange(_padded_rows(k), dtype=torch.int64)
        tap, c = index // channels, index % channels
        dh, dw = tap // kw - kh // 2, tap % kw - kw // 2
        col = (dh * width + dw) * channels + c
        dh[k:], col[k:] = _INVALID_SHIFT, 0
        table = torch.stack([col, dh, dw]).to(device=device, dtype=torch.int32)
        _tap_tables[key] = table
    return table


def _padded_rows(rows: int) -> int:
    return triton.cdiv(rows, K_ALIGN) * K_ALIGN


def pack_weight(weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(N, C, KH, KW) -> (K_pad, N) contiguous, row k = (kh * KW + kw) * C + c, zero rows up to
    K_pad = KH*KW*C rounded up to a multiple of K_ALIGN. Not differentiable: pack once, outside autograd."""
    n, c, kh, kw = weight.shape
    k = kh * kw * c
    packed = torch.zeros((_padded_rows(k), n), dtype=dtype or weight.dtype, device=weight.device)
    packed[:k] = weight.detach().permute(2, 3, 1, 0).reshape(k, n)
    return packed


def pack_weight_for_input_grad(weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The packed weights whose forward convolution is the input gradient: transposed (C <-> N)
    and flipped taps. (N, C, KH, KW) -> (K_pad, C) with K = KH*KW*N."""
    return pack_weight(weight.detach().flip(2, 3).transpose(0, 1), dtype)


def _check_activation(name: str, x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D channels-last activation (B, H, W, C), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point activation, got {x.dtype}")
    if x.numel() >= 2**31:
        raise ValueError(f"{name}: {tuple(x.shape)} has >= 2**31 elements (int32 indexing); split the batch")


def conv2d_nhwc(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    bias: torch.Tensor | None,
    kernel_size: tuple[int, int],
    *,
    relu: bool = False,
    pool: bool = False,
    stats: bool = False,
    channels_first_out: bool = False,
    config: triton.Config | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stride-1 'same' convolution of channels-last ``x`` with packed weights, plus epilogue.

    Args:
        x: (B, H, W, C) contiguous, fp32/fp16/bf16.
        weight_packed: (K_pad, N) from :func:`pack_weight`, same dtype as ``x``.
        bias: (N,) any float dtype, or None.
        kernel_size: (KH, KW), both odd.
        relu: apply ReLU after the bias.
        pool: 2x2 max-pool with floor (after ReLU); output (B, H//2, W//2, N).
        stats: also return per-tile BatchNorm moments, a (2, T, N) fp32 tensor [sums; centred
            sums of squares] over tiles of STATS_BLOCK_M pixels (not with ``pool``).
        channels_first_out: write (B, N, Ho, Wo) instead of (B, Ho, Wo, N).
        config: launch with this block configuration instead of the autotuned one (with ``stats``
            its BLOCK_M must be STATS_BLOCK_M).

    Returns (out in ``x.dtype``, moments or None).
    """
    _check_activation("conv2d_nhwc", x)
    kh, kw = kernel_size
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"conv2d_nhwc: 'same' padding needs an odd kernel size, got {kernel_size}")
    if pool and stats:
        raise ValueError("conv2d_nhwc: BatchNorm statistics cover every pixel, so they cannot be combined with the pool")
    batch, height, width, channels = x.shape
    k = kh * kw * channels
    if weight_packed.dim() != 2 or weight_packed.shape[0] != _padded_rows(k):
        raise ValueError(f"conv2d_nhwc: packed weight must be ({_padded_rows(k)}, N) for a {kh}x{kw} kernel over {channels} channels, got {tuple(weight_packed.shape)}")
    if weight_packed.dtype != x.dtype:
        raise TypeError(f"conv2d_nhwc: weight dtype {weight_packed.dtype} differs from the activation's {x.dtype}")
    n = weight_packed.shape[1]
    x = x.contiguous()
    out_h, out_w = (height // 2, width // 2) if pool else (height, width)
    m_out = batch * out_h * out_w
    if channels_first_out:
        out = empty_output((batch, n, out_h, out_w), dtype=x.dtype, device=x.device)
        strides = (out.stride(0), out.stride(2), out.stride(3), out.stride(1))
    else:
        out = empty_output((batch, out_h, out_w, n), dtype=x.dtype, device=x.device)
        strides = out.stride()
    if out.numel() >= 2**31:
        raise ValueError(f"conv2d_nhwc: output {tuple(out.shape)} has >= 2**31 elements (int32 indexing); split the batch")
    moments = None
    if stats:
        moments = empty_output((2, triton.cdiv(m_out, STATS_BLOCK_M), n), dtype=torch.float32, device=x.device)
    if m_out == 0:
        return out, moments

    def grid(meta):
        rows = meta["BLOCK_M"] // 4 if pool else meta["BLOCK_M"]
        return (triton.cdiv(m_out, rows), triton.cdiv(n, meta["BLOCK_N"]))

    taps = tap_table(channels, width, kernel_size, x.device)
    if config is None:
        kernel, launch = (_conv2d_nhwc_forward_stats if stats else _conv2d_nhwc_forward), {}
    else:
        if stats and config.kwargs["BLOCK_M"] != STATS_BLOCK_M:
            raise ValueError(f"conv2d_nhwc: with stats the config's BLOCK_M must be {STATS_BLOCK_M}, got {config}")
        kernel, launch = _conv2d_nhwc_forward_kernel, _launch_options(config)
    kernel[grid](
        x, weight_packed, taps, bias if bias is not None else weight_packed, out, moments if moments is not None else out,
        height, width, channels, n, k, taps.shape[1], m_out, *strides,
        HAS_BIAS=bias is not None, RELU=relu, POOL=pool, STATS=stats, PRECISION=dot_precision(x.dtype), **launch,
    )  # fmt: skip
    return out, moments


def _launch_options(config: triton.Config) -> dict:
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}


def conv2d_nhwc_input_grad(dy: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`conv2d_nhwc` w.r.t. its input. dy: (B, H, W, N); weight: (N, C, KH, KW)
    (any float dtype; packed in dy's dtype). Returns (B, H, W, C) in dy's dtype."""
    packed = pack_weight_for_input_grad(weight, dy.dtype)
    dx, _ = conv2d_nhwc(dy, packed, None, tuple(weight.shape[2:]))
    return dx


def weight_grad_splits(m: int, k: int, n: int) -> int:
    """How many pixel ranges the weight gradient is split into (each a program column of partial
    sums). On a GPU: enough programs to fill it even when K x N is a handful of tiles. Under the
    interpreter every program costs milliseconds of Python, so one split (no reduction pass)."""
    if interpreting():
        return 1
    tiles = triton.cdiv(k, 64) * triton.cdiv(n, 128)
    return max(1, min(triton.cdiv(m, _WGRAD_ROW_ALIGN), triton.cdiv(512, tiles)))


def conv2d_nhwc_backward_weight(
    x: torch.Tensor, dy: torch.Tensor, kernel_size: tuple[int, int], *, splits: int | None = None, config: triton.Config | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`conv2d_nhwc` w.r.t. its weight and bias.

    x: (B, H, W, C); dy: (B, H, W, N), same dtype. ``splits``: pixel ranges reduced separately
    then summed in a fixed order (default :func:`weight_grad_splits`); ``config``: launch with
    this block configuration instead of the autotuned one.
    Returns (dw (N, C, KH, KW), db (N,)), fp32.
    """
    from glam_fast.ops.partial_sums import sum_partials

    _check_activation("conv2d_nhwc_backward_weight", x)
    if dy.shape[:3] != x.shape[:3] or dy.dim() != 4:
        raise ValueError(f"conv2d_nhwc_backward_weight: dy {tuple(dy.shape)} does not match x {tuple(x.shape)} in (B, H, W)")
    if dy.dtype != x.dtype:
        raise TypeError(f"conv2d_nhwc_backward_weight: dy dtype {dy.dtype} differs from x's {x.dtype}")
    batch, height, width, channels = x.shape
    n = dy.shape[3]
    kh, kw = kernel_size
    k = kh * kw * channels
    m = batch * height * width
    x, dy = x.contiguous(), dy.contiguous()
    splits = splits or weight_grad_splits(m, k, n)
    rows_per_split = triton.cdiv(triton.cdiv(m, splits), _WGRAD_ROW_ALIGN) * _WGRAD_ROW_ALIGN
    splits = triton.cdiv(m, rows_per_split)
    dw_parts = empty_output((splits, k * n), dtype=torch.float32, device=x.device)
    db_parts = empty_output((splits, n), dtype=torch.float32, device=x.device)

    def grid(meta):
        return (triton.cdiv(k, meta["BLOCK_K"]), triton.cdiv(n, meta["BLOCK_N"]), splits)

    taps = tap_table(channels, width, kernel_size, x.device)
    kernel, launch = (_conv2d_nhwc_backward_weight, {}) if config is None else (_conv2d_nhwc_backward_weight_kernel, _launch_options(config))
    kernel[grid](
        x, dy, taps, dw_parts, db_parts, height, width, channels, n, k, taps.shape[1], m, rows_per_split,
        PRECISION=dot_precision(x.dtype), **launch,
    )
    if splits > 1:
        dw_parts, db_parts = sum_partials(dw_parts)[None], sum_partials(db_parts)[None]
    dw = dw_parts[0].view(kh, kw, channels, n).permute(3, 2, 0, 1).contiguous()
    return dw, db_parts[0]


def conv2d_nhwc_ref(x, weight, bias, *, relu=False, pool=False, channels_first_out=False):
    """Plain-PyTorch reference of :func:`conv2d_nhwc` with the weight in (N, C, KH, KW) layout."""
    y = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, padding=(weight.shape[2] // 2, weight.shape[3] // 2))
    if relu:
        y = F.relu(y)
    if pool:
        y = F.max_pool2d(y, 2)
    return y if channels_first_out else y.permute(0, 2, 3, 1)


# ----------------------------------------------------------------------------------------------
# Compile-report specs: the kernels at the configs the autotuner may launch for a problem


_ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
# Arguments that are multiples of 16 in every GLAM launch (channel counts 16..128, K = 25 C).
_GLAM_MULTIPLES_OF_16 = ("C", "N", "K", "K_pad")


def forward_kernel_specs(c: int, n: int, *, dtype: str, has_bias: bool, relu: bool, pool: bool, stats: bool) -> list[KernelSpec]:
    """The forward kernel for C input / N output channels at every candidate config (after pruning)."""
    signature = {
        "x_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "taps_ptr": "*i32", "bias_ptr": "*fp32", "out_ptr": f"*{dtype}", "stats_ptr": "*fp32",
        "H": "i32", "W": "i32", "C": "i32", "N": "i32", "K": "i32", "K_pad": "i32", "M_out": "i32",
        "stride_ob": "i32", "stride_oh": "i32", "stride_ow": "i32", "stride_on": "i32",
    }  # fmt: skip
    flags = {"HAS_BIAS": has_bias, "RELU": relu, "POOL": pool, "STATS": stats, "PRECISION": "tf32"}
    return [_spec("_conv2d_nhwc_forward_kernel", _conv2d_nhwc_forward_kernel, signature, flags, cfg, c, n, dtype)
            for cfg in prune_configs(STATS_CONFIGS if stats else FORWARD_CONFIGS, c, n, _ELEMENT_BYTES[dtype])]  # fmt: skip


def weight_grad_kernel_specs(c: int, n: int, *, dtype: str) -> list[KernelSpec]:
    """The weight-gradient kernel for C input / N output channels at every candidate config."""
    signature = {
        "x_ptr": f"*{dtype}", "dy_ptr": f"*{dtype}", "taps_ptr": "*i32", "dw_ptr": "*fp32", "db_ptr": "*fp32",
        "H": "i32", "W": "i32", "C": "i32", "N": "i32", "K": "i32", "K_pad": "i32", "M": "i32", "rows_per_split": "i32",
    }  # fmt: skip
    return [_spec("_conv2d_nhwc_backward_weight_kernel", _conv2d_nhwc_backward_weight_kernel, signature, {"PRECISION": "tf32"}, cfg, c, n, dtype)
            for cfg in prune_configs(WEIGHT_GRAD_CONFIGS, c, n, _ELEMENT_BYTES[dtype])]  # fmt: skip


def _spec(name, kernel, signature, flags, config, c, n, dtype) -> KernelSpec:
    constexprs = {**flags, **config.kwargs, "SINGLE_TAP": c % config.kwargs["BLOCK_K"] == 0}
    tag = ",".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in constexprs.items() if k != "PRECISION")
    problem = ",".join(f"{k}={int(v)}" for k, v in flags.items() if k != "PRECISION")
    return KernelSpec(
        "conv2d_nhwc", f"{name}[{dtype},{tag}]", kernel, {**signature, **{k: "constexpr" for k in constexprs}}, constexprs,
        num_warps=config.num_warps, num_stages=config.num_stages, multiple_of_16=_GLAM_MULTIPLES_OF_16,
        tuning_groups=(f"{name}[{dtype},C={c},N={n}{',' + problem if problem else ''}]",),
    )  # fmt: skip
