"""GLAM's stem in one kernel: conv1a (3x1) || conv1b (1x3) on the 1-channel MFCC image, each with
BatchNorm and ReLU, concatenated along HEIGHT: (B, 1, H, W) -> (B, 2H, W, C) channels-last
(rows [0, H) from conv1a, rows [H, 2H) from conv1b; C = 16 in GLAM).

With one input channel the convolutions are 3 multiply-adds per output: a direct elementwise
kernel (no GEMM) that recomputes the convolutions whenever it needs them instead of storing them.
The two BatchNorms are handled as one over 2C channels (conv1a's C, then conv1b's C).

* Inference (``glam_fast::stem_inference``): one kernel, BatchNorm from running statistics.
* Training (``glam_fast::stem``): a moments pass, a deterministic reduction, then the
  normalise + ReLU + store pass. Backward (``glam_fast::stem_backward``): a pass for the
  per-channel sums of dz and dz * xhat, a reduction, then one pass that computes dL/dx (from the
  BatchNorm input gradient at the three neighbours of each pixel in each branch, recomputed) and
  per-tile partial weight and bias gradients, reduced deterministically.

All arithmetic in fp32; x may be fp32/fp16/bf16 and the output has x's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from glam_fast.kernels import KernelSpec
from glam_fast.ops.batch_norm_nhwc import update_running_stats_
from glam_fast.ops.partial_sums import combine_moments, sum_partials
from glam_fast.ops.utils import empty_output

_BLOCK_M = 256  # pixels per program
_BACKWARD_BLOCK_M = 128  # the input-gradient kernel holds three branches' gradients: at 256 it spills on sm_90
_NUM_WARPS = 8


@triton.jit
def _load_x(x_ptr, q, ok, offset, inside):
    """x at pixel q + offset where ``inside`` (the convs' zero padding elsewhere), (BLOCK_M,) fp32."""
    return tl.load(x_ptr + q + offset, mask=ok & inside, other=0.0).to(tl.float32)


@triton.jit
def _branch_weights(w_ptr, bias_ptr, offs_c, c_ok):
    """Taps (C, 3) and bias (C,) of one branch as fp32 vectors."""
    w0 = tl.load(w_ptr + offs_c * 3, mask=c_ok, other=0.0).to(tl.float32)
    w1 = tl.load(w_ptr + offs_c * 3 + 1, mask=c_ok, other=0.0).to(tl.float32)
    w2 = tl.load(w_ptr + offs_c * 3 + 2, mask=c_ok, other=0.0).to(tl.float32)
    return w0, w1, w2, tl.load(bias_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)


@triton.jit
def _conv3(before, centre, after, w0, w1, w2, bias):
    """y[m, c] = bias[c] + w0[c] * before[m] + w1[c] * centre[m] + w2[c] * after[m]."""
    return bias[None, :] + before[:, None] * w0[None, :] + centre[:, None] * w1[None, :] + after[:, None] * w2[None, :]


@triton.jit
def _bn_params(mean_ptr, var_ptr, gamma_ptr, beta_ptr, idx, c_ok, eps):
    """(mean, invstd, scale = gamma * invstd, shift = beta - mean * scale) for channels idx."""
    mean = tl.load(mean_ptr + idx, mask=c_ok, other=0.0).to(tl.float32)
    invstd = 1.0 / tl.sqrt_rn(tl.load(var_ptr + idx, mask=c_ok, other=1.0).to(tl.float32) + eps)
    scale = tl.load(gamma_ptr + idx, mask=c_ok, other=0.0).to(tl.float32) * invstd
    shift = tl.load(beta_ptr + idx, mask=c_ok, other=0.0).to(tl.float32) - mean * scale
    return mean, invstd, scale, shift


@triton.jit
def _pixel_coords(pid, H, W, M, BLOCK_M: tl.constexpr):
    q = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    b = q // (H * W)
    h = (q % (H * W)) // W
    w = q % W
    return q, b, h, w, q < M


@triton.jit
def _stem_forward_kernel(
    x_ptr, wa_ptr, ba_ptr, wb_ptr, bb_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, out_ptr, moments_ptr,
    H, W, M, C, eps,
    STATS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """STATS: per-tile moments of both convs -> moments (2, T, 2C) [sums; centred sums of squares].
    Otherwise: out (B, 2H, W, C) = ReLU(BN(conv1a)) on rows < H, ReLU(BN(conv1b)) on rows >= H."""
    pid = tl.program_id(0)
    q, b, h, w, ok = _pixel_coords(pid, H, W, M, BLOCK_M)
    offs_c = tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    centre = _load_x(x_ptr, q, ok, 0, True)
    wa0, wa1, wa2, ba = _branch_weights(wa_ptr, ba_ptr, offs_c, c_ok)
    ya = _conv3(_load_x(x_ptr, q, ok, -W, h >= 1), centre, _load_x(x_ptr, q, ok, W, h + 1 < H), wa0, wa1, wa2, ba)
    wb0, wb1, wb2, bb = _branch_weights(wb_ptr, bb_ptr, offs_c, c_ok)
    yb = _conv3(_load_x(x_ptr, q, ok, -1, w >= 1), centre, _load_x(x_ptr, q, ok, 1, w + 1 < W), wb0, wb1, wb2, bb)
    if STATS:
        count = tl.minimum(M - pid * BLOCK_M, BLOCK_M).to(tl.float32)
        tiles = tl.num_programs(0)
        valid = ok[:, None]
        sum_a = tl.sum(tl.where(valid, ya, 0.0), axis=0)
        sum_b = tl.sum(tl.where(valid, yb, 0.0), axis=0)
        dev_a = tl.where(valid, ya - (sum_a / count)[None, :], 0.0)
        dev_b = tl.where(valid, yb - (sum_b / count)[None, :], 0.0)
        row = moments_ptr + pid * 2 * C
        tl.store(row + offs_c, sum_a, mask=c_ok)
        tl.store(row + C + offs_c, sum_b, mask=c_ok)
        row = moments_ptr + (tiles + pid) * 2 * C
        tl.store(row + offs_c, tl.sum(dev_a * dev_a, axis=0), mask=c_ok)
        tl.store(row + C + offs_c, tl.sum(dev_b * dev_b, axis=0), mask=c_ok)
    else:
        _, _, scale_a, shift_a = _bn_params(mean_ptr, var_ptr, gamma_ptr, beta_ptr, offs_c, c_ok, eps)
        _, _, scale_b, shift_b = _bn_params(mean_ptr, var_ptr, gamma_ptr, beta_ptr, C + offs_c, c_ok, eps)
        za = tl.maximum(ya * scale_a[None, :] + shift_a[None, :], 0.0)
        zb = tl.maximum(yb * scale_b[None, :] + shift_b[None, :], 0.0)
        mask = ok[:, None] & c_ok[None, :]
        row_a = (b * 2 * H + h) * W + w
        tl.store(out_ptr + row_a[:, None] * C + offs_c[None, :], za.to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(out_ptr + (row_a + H * W)[:, None] * C + offs_c[None, :], zb.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_grad(g_ptr, out_row, ok, offs_c, c_ok, C):
    """dL/dout at output rows ``out_row`` of (B * 2H * W, C), (BLOCK_M, BLOCK_C) fp32."""
    return tl.load(g_ptr + out_row[:, None] * C + offs_c[None, :], mask=ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)


@triton.jit
def _bn_relu_backward(y, g, ok, c_ok, mean, invstd, scale, shift, mean_dz, mean_dzx, BATCH_STATS: tl.constexpr):
    """dL/dy through ReLU and BatchNorm (batch-statistics terms when BATCH_STATS); 0 where not ok."""
    dz = tl.where(y * scale[None, :] + shift[None, :] > 0.0, g, 0.0)
    if BATCH_STATS:
        dz = dz - mean_dz[None, :] - (y - mean[None, :]) * invstd[None, :] * mean_dzx[None, :]
    return tl.where(ok[:, None] & c_ok[None, :], scale[None, :] * dz, 0.0)


@triton.jit
def _stem_backward_sums_kernel(
    x_ptr, wa_ptr, ba_ptr, wb_ptr, bb_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, g_ptr, partial_ptr,
    H, W, M, C, eps,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """partial[t] = [sum dz (2C) ; sum dz * xhat (2C)] over this tile, dz = dL/d(BN output) after the ReLU."""
    pid = tl.program_id(0)
    q, b, h, w, ok = _pixel_coords(pid, H, W, M, BLOCK_M)
    offs_c = tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    centre = _load_x(x_ptr, q, ok, 0, True)
    row_a = (b * 2 * H + h) * W + w
    for branch in tl.static_range(2):
        if branch == 0:
            w0, w1, w2, bias = _branch_weights(wa_ptr, ba_ptr, offs_c, c_ok)
            y = _conv3(_load_x(x_ptr, q, ok, -W, h >= 1), centre, _load_x(x_ptr, q, ok, W, h + 1 < H), w0, w1, w2, bias)
        else:
            w0, w1, w2, bias = _branch_weights(wb_ptr, bb_ptr, offs_c, c_ok)
            y = _conv3(_load_x(x_ptr, q, ok, -1, w >= 1), centre, _load_x(x_ptr, q, ok, 1, w + 1 < W), w0, w1, w2, bias)
        idx = offs_c + C * branch
        mean, invstd, scale, shift = _bn_params(mean_ptr, var_ptr, gamma_ptr, beta_ptr, idx, c_ok, eps)
        g = _load_grad(g_ptr, row_a + H * W * branch, ok, offs_c, c_ok, C)
        dz = tl.where(ok[:, None] & c_ok[None, :] & (y * scale[None, :] + shift[None, :] > 0.0), g, 0.0)
        tl.store(partial_ptr + pid * 4 * C + idx, tl.sum(dz, axis=0), mask=c_ok)
        tl.store(partial_ptr + pid * 4 * C + 2 * C + idx, tl.sum(dz * (y - mean[None, :]) * invstd[None, :], axis=0), mask=c_ok)


@triton.jit
def _stem_backward_kernel(
    x_ptr, wa_ptr, ba_ptr, wb_ptr, bb_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, g_ptr, sums_ptr, dx_ptr, partial_ptr,
    H, W, M, C, eps,
    BATCH_STATS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """dx (B, H, W) and partial[t] = [dwa tap 0, 1, 2, dba, dwb tap 0, 1, 2, dbb] (each C) over this
    tile. dx at a pixel needs dL/dy of conv1a one row above and below and of conv1b one column
    left and right: they are recomputed from the 5 x 5 cross of inputs around the pixel."""
    pid = tl.program_id(0)
    q, b, h, w, ok = _pixel_coords(pid, H, W, M, BLOCK_M)
    offs_c = tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    count = M.to(tl.float32)
    x0 = _load_x(x_ptr, q, ok, 0, True)
    row_a = (b * 2 * H + h) * W + w

    # conv1a: dL/dy at rows h - 1, h, h + 1 from inputs at rows h - 2 ... h + 2
    up2 = _load_x(x_ptr, q, ok, -2 * W, h >= 2)
    up1 = _load_x(x_ptr, q, ok, -W, h >= 1)
    down1 = _load_x(x_ptr, q, ok, W, h + 1 < H)
    down2 = _load_x(x_ptr, q, ok, 2 * W, h + 2 < H)
    w0, w1, w2, bias = _branch_weights(wa_ptr, ba_ptr, offs_c, c_ok)
    mean, invstd, scale, shift = _bn_params(mean_ptr, var_ptr, gamma_ptr, beta_ptr, offs_c, c_ok, eps)
    mean_dz = tl.load(sums_ptr + offs_c, mask=c_ok, other=0.0) / count
    mean_dzx = tl.load(sums_ptr + 2 * C + offs_c, mask=c_ok, other=0.0) / count
    dy = _bn_relu_backward(_conv3(up1, x0, down1, w0, w1, w2, bias), _load_grad(g_ptr, row_a, ok, offs_c, c_ok, C),
                           ok, c_ok, mean, invstd, scale, shift, mean_dz, mean_dzx, BATCH_STATS)  # fmt: skip
    ok_above = ok & (h >= 1)
    dy_above = _bn_relu_backward(_conv3(up2, up1, x0, w0, w1, w2, bias), _load_grad(g_ptr, row_a - W, ok_above, offs_c, c_ok, C),
                                 ok_above, c_ok, mean, invstd, scale, shift, mean_dz, mean_dzx, BATCH_STATS)  # fmt: skip
    ok_below = ok & (h + 1 < H)
    dy_below = _bn_relu_backward(_conv3(x0, down1, down2, w0, w1, w2, bias), _load_grad(g_ptr, row_a + W, ok_below, offs_c, c_ok, C),
                                 ok_below, c_ok, mean, invstd, scale, shift, mean_dz, mean_dzx, BATCH_STATS)  # fmt: skip
    row = partial_ptr + pid * 8 * C
    tl.store(row + offs_c, tl.sum(dy * up1[:, None], axis=0), mask=c_ok)
    tl.store(row + C + offs_c, tl.sum(dy * x0[:, None], axis=0), mask=c_ok)
    tl.store(row + 2 * C + offs_c, tl.sum(dy * down1[:, None], axis=0), mask=c_ok)
    tl.store(row + 3 * C + offs_c, tl.sum(dy, axis=0), mask=c_ok)
    # y[h'] = sum_t w_t x[h' + t - 1]: x[h] feeds y[h + 1] through tap 0, y[h] through 1, y[h - 1] through 2
    dx = w0[None, :] * dy_below + w1[None, :] * dy + w2[None, :] * dy_above

    # conv1b: the same along the width, output rows H + h
    left2 = _load_x(x_ptr, q, ok, -2, w >= 2)
    left1 = _load_x(x_ptr, q, ok, -1, w >= 1)
    right1 = _load_x(x_ptr, q, ok, 1, w + 1 < W)
    right2 = _load_x(x_ptr, q, ok, 2, w + 2 < W)
    w0, w1, w2, bias = _branch_weights(wb_ptr, bb_ptr, offs_c, c_ok)
    mean, invstd, scale, shift = _bn_params(mean_ptr, var_ptr, gamma_ptr, beta_ptr, C + offs_c, c_ok, eps)
    mean_dz = tl.load(sums_ptr + C + offs_c, mask=c_ok, other=0.0) / count
    mean_dzx = tl.load(sums_ptr + 3 * C + offs_c, mask=c_ok, other=0.0) / count
    row_b = row_a + H * W
    dy = _bn_relu_backward(_conv3(left1, x0, right1, w0, w1, w2, bias), _load_grad(g_ptr, row_b, ok, offs_c, c_ok, C),
                           ok, c_ok, mean, invstd, scale, shift, mean_dz, mean_dzx, BATCH_STATS)  # fmt: skip
    ok_left = ok & (w >= 1)
    dy_left = _bn_relu_backward(_conv3(left2, left1, x0, w0, w1, w2, bias), _load_grad(g_ptr, row_b - 1, ok_left, offs_c, c_ok, C),
                                ok_left, c_ok, mean, invstd, scale, shift, mean_dz, mean_dzx, BATCH_STATS)  # fmt: skip
    ok_right = ok & (w + 1 < W)
    dy_right = _bn_relu_backward(_conv3(x0, right1, right2, w0, w1, w2, bias), _load_grad(g_ptr, row_b + 1, ok_right, offs_c, c_ok, C),
                                 ok_right, c_ok, mean, invstd, scale, shift, mean_dz, mean_dzx, BATCH_STATS)  # fmt: skip
    tl.store(row + 4 * C + offs_c, tl.sum(dy * left1[:, None], axis=0), mask=c_ok)
    tl.store(row + 5 * C + offs_c, tl.sum(dy * x0[:, None], axis=0), mask=c_ok)
    tl.store(row + 6 * C + offs_c, tl.sum(dy * right1[:, None], axis=0), mask=c_ok)
    tl.store(row + 7 * C + offs_c, tl.sum(dy, axis=0), mask=c_ok)
    dx += w0[None, :] * dy_right + w1[None, :] * dy + w2[None, :] * dy_left
    tl.store(dx_ptr + q, tl.sum(dx, axis=1).to(dx_ptr.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------------------------
# Host side


def _block_c(c: int) -> int:
    return max(16, triton.next_power_of_2(c))


def _launch_forward(x, conv_a_weight, conv_a_bias, conv_b_weight, conv_b_bias, out, *, moments=None, bn=None, eps=0.0):
    """Either the moments pass (``moments`` (2, T, 2C)) or the output pass (``bn`` = (mean, var,
    weight, bias), each (2C,), writing ``out``)."""
    batch, _, height, width = x.shape
    m = batch * height * width
    c = conv_a_weight.shape[0]
    mean, var, gamma, beta = bn if bn is not None else (moments,) * 4
    _stem_forward_kernel[(triton.cdiv(m, _BLOCK_M),)](
        x, conv_a_weight.contiguous(), conv_a_bias, conv_b_weight.contiguous(), conv_b_bias, mean, var, gamma, beta,
        out, moments if moments is not None else out, height, width, m, c, eps,
        STATS=moments is not None, BLOCK_M=_BLOCK_M, BLOCK_C=_block_c(c), num_warps=_NUM_WARPS,
    )  # fmt: skip


@torch.library.custom_op("glam_fast::stem", mutates_args=())
def _stem_op(
    x: Tensor, conv_a_weight: Tensor, conv_a_bias: Tensor, conv_b_weight: Tensor, conv_b_bias: Tensor,
    bn_weight: Tensor, bn_bias: Tensor, running_mean: Tensor, running_var: Tensor, batch_stats: bool, eps: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """(out (B, 2H, W, C), mean (2C,) fp32, var (2C,) fp32): the statistics BatchNorm used."""
    batch, _, height, width = x.shape
    c = conv_a_weight.shape[0]
    out = empty_output((batch, 2 * height, width, c), dtype=x.dtype, device=x.device)
    if batch_stats:
        m = batch * height * width
        moments = empty_output((2, triton.cdiv(m, _BLOCK_M), 2 * c), dtype=torch.float32, device=x.device)
        _launch_forward(x, conv_a_weight, conv_a_bias, conv_b_weight, conv_b_bias, out, moments=moments)
        mean, var = combine_moments(moments[0], moments[1], _BLOCK_M, m)
    else:
        mean, var = running_mean.float().clone(), running_var.float().clone()
    _launch_forward(x, conv_a_weight, conv_a_bias, conv_b_weight, conv_b_bias, out, bn=(mean, var, bn_weight, bn_bias), eps=eps)
    return out, mean, var


@_stem_op.register_fake
def _(x, conv_a_weight, conv_a_bias, conv_b_weight, conv_b_bias, bn_weight, bn_bias, running_mean, running_var, batch_stats, eps):
    batch, _, height, width = x.shape
    c = conv_a_weight.shape[0]
    stats = x.new_empty((2 * c,), dtype=torch.float32)
    return x.new_empty((batch, 2 * height, width, c)), stats, torch.empty_like(stats)


@torch.library.custom_op("glam_fast::stem_backward", mutates_args=())
def _stem_backward_op(
    grad_out: Tensor, x: Tensor, conv_a_weight: Tensor, conv_a_bias: Tensor, conv_b_weight: Tensor, conv_b_bias: Tensor,
    bn_weight: Tensor, bn_bias: Tensor, mean: Tensor, var: Tensor, batch_stats: bool, eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """(dx in x's dtype, dconv_a_weight, dconv_a_bias, dconv_b_weight, dconv_b_bias, dbn_weight, dbn_bias in fp32)."""
    batch, _, height, width = x.shape
    c = conv_a_weight.shape[0]
    m = batch * height * width
    tiles = triton.cdiv(m, _BLOCK_M)
    grad_out = grad_out.contiguous()
    params = (x, conv_a_weight.contiguous(), conv_a_bias, conv_b_weight.contiguous(), conv_b_bias, mean, var, bn_weight, bn_bias, grad_out)
    partial = empty_output((tiles, 4 * c), dtype=torch.float32, device=x.device)
    _stem_backward_sums_kernel[(tiles,)](*params, partial, height, width, m, c, eps, BLOCK_M=_BLOCK_M, BLOCK_C=_block_c(c), num_warps=_NUM_WARPS)
    sums = sum_partials(partial)  # [sum dz ; sum dz * xhat], 2C each
    dx = empty_output(x.shape, dtype=x.dtype, device=x.device)
    backward_tiles = triton.cdiv(m, _BACKWARD_BLOCK_M)
    partial_w = empty_output((backward_tiles, 8 * c), dtype=torch.float32, device=x.device)
    _stem_backward_kernel[(backward_tiles,)](
        *params, sums, dx, partial_w, height, width, m, c, eps, BATCH_STATS=batch_stats, BLOCK_M=_BACKWARD_BLOCK_M, BLOCK_C=_block_c(c),
        num_warps=_NUM_WARPS,
    )  # fmt: skip
    grads = sum_partials(partial_w).view(8, c)
    dwa = grads[0:3].t().contiguous().view(c, 1, 3, 1)
    dwb = grads[4:7].t().contiguous().view(c, 1, 1, 3)
    return dx, dwa, grads[3].clone(), dwb, grads[7].clone(), sums[2 * c :].clone(), sums[: 2 * c].clone()


@_stem_backward_op.register_fake
def _(grad_out, x, conv_a_weight, conv_a_bias, conv_b_weight, conv_b_bias, bn_weight, bn_bias, mean, var, batch_stats, eps):
    c = conv_a_weight.shape[0]
    f32 = dict(dtype=torch.float32)
    vec = x.new_empty((c,), **f32)
    return (
        torch.empty_like(x), x.new_empty((c, 1, 3, 1), **f32), vec, x.new_empty((c, 1, 1, 3), **f32), torch.empty_like(vec),
        x.new_empty((2 * c,), **f32), x.new_empty((2 * c,), **f32),
    )  # fmt: skip


def _setup_context(ctx, inputs, output):
    x, wa, ba, wb, bb, bn_weight, bn_bias, _, _, batch_stats, eps = inputs
    _, mean, var = output
    ctx.save_for_backward(x, wa, ba, wb, bb, bn_weight, bn_bias, mean, var)
    ctx.options = (batch_stats, eps)
    ctx.mark_non_differentiable(mean, var)


def _backward(ctx, grad_out, _grad_mean, _grad_var):
    x, wa, ba, wb, bb, bn_weight, bn_bias, mean, var = ctx.saved_tensors
    grads = _stem_backward_op(grad_out, x, wa, ba, wb, bb, bn_weight, bn_bias, mean, var, *ctx.options)
    inputs = (x, wa, ba, wb, bb, bn_weight, bn_bias)
    return (*(g.to(t.dtype) for g, t in zip(grads, inputs)), None, None, None, None)


_stem_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("glam_fast::stem_inference", mutates_args=())
def _stem_inference_op(
    x: Tensor, conv_a_weight: Tensor, conv_a_bias: Tensor, conv_b_weight: Tensor, conv_b_bias: Tensor,
    bn_weight: Tensor, bn_bias: Tensor, running_mean: Tensor, running_var: Tensor, eps: float,
) -> Tensor:  # fmt: skip
    batch, _, height, width = x.shape
    out = empty_output((batch, 2 * height, width, conv_a_weight.shape[0]), dtype=x.dtype, device=x.device)
    _launch_forward(x, conv_a_weight, conv_a_bias, conv_b_weight, conv_b_bias, out, bn=(running_mean, running_var, bn_weight, bn_bias), eps=eps)
    return out


@_stem_inference_op.register_fake
def _(x, conv_a_weight, conv_a_bias, conv_b_weight, conv_b_bias, bn_weight, bn_bias, running_mean, running_var, eps):
    batch, _, height, width = x.shape
    return x.new_empty((batch, 2 * height, width, conv_a_weight.shape[0]))


def _check(x: Tensor, conv_a_weight: Tensor, conv_b_weight: Tensor, n_bn: int) -> None:
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"stem: expected a 1-channel image (B, 1, H, W), got shape {tuple(x.shape)}")
    c = conv_a_weight.shape[0]
    if conv_a_weight.shape != (c, 1, 3, 1) or conv_b_weight.shape != (c, 1, 1, 3):
        raise ValueError(f"stem: expected conv1a weight (C, 1, 3, 1) and conv1b weight (C, 1, 1, 3), got {tuple(conv_a_weight.shape)} and {tuple(conv_b_weight.shape)}")
    if n_bn != 2 * c:
        raise ValueError(f"stem: BatchNorm parameters must have 2C = {2 * c} entries (bn1a's C then bn1b's C), got {n_bn}")
    if x.numel() * 2 * c >= 2**31:
        raise ValueError(f"stem: the output of {tuple(x.shape)} would have >= 2**31 elements (int32 indexing); split the batch")


def stem(
    x: Tensor, conv_a_weight: Tensor, conv_a_bias: Tensor, conv_b_weight: Tensor, conv_b_bias: Tensor,
    bn_a: tuple[Tensor, Tensor, Tensor, Tensor], bn_b: tuple[Tensor, Tensor, Tensor, Tensor],
    *, training: bool, momentum: float, eps: float,
) -> Tensor:  # fmt: skip
    """cat([ReLU(BN_a(conv1a(x))), ReLU(BN_b(conv1b(x)))], height), channels-last, differentiable.

    Args:
        x: (B, 1, H, W) MFCC images, fp32/fp16/bf16 (the autocast dtype under ``torch.autocast``).
        conv_a_weight: (C, 1, 3, 1), conv_a_bias (C,); conv_b_weight: (C, 1, 1, 3), conv_b_bias (C,).
        bn_a, bn_b: (weight, bias, running_mean, running_var) of the two BatchNorms, each (C,).
        training: batch statistics (running statistics updated in place) or running statistics.

    Returns (B, 2H, W, C) in the compute dtype.
    """
    from glam_fast.ops.utils import compute_dtype

    bn_weight, bn_bias = torch.cat([bn_a[0], bn_b[0]]), torch.cat([bn_a[1], bn_b[1]])
    _check(x, conv_a_weight, conv_b_weight, bn_weight.shape[0])
    running_mean, running_var = torch.cat([bn_a[2], bn_b[2]]), torch.cat([bn_a[3], bn_b[3]])
    out, mean, var = _stem_op(
        x.to(compute_dtype(x)).contiguous(), conv_a_weight, conv_a_bias, conv_b_weight, conv_b_bias,
        bn_weight, bn_bias, running_mean, running_var, training, eps,
    )  # fmt: skip
    if training:
        c = conv_a_weight.shape[0]
        count = x.shape[0] * x.shape[2] * x.shape[3]
        update_running_stats_(bn_a[2], bn_a[3], mean[:c], var[:c], count, momentum)
        update_running_stats_(bn_b[2], bn_b[3], mean[c:], var[c:], count, momentum)
    return out


def stem_inference(x: Tensor, conv_a_weight, conv_a_bias, conv_b_weight, conv_b_bias, bn_weight, bn_bias, running_mean, running_var, eps: float) -> Tensor:
    """Inference stem (no autograd): BatchNorm from running statistics given as 2C vectors
    (bn1a's then bn1b's). x: (B, 1, H, W). Returns (B, 2H, W, C) in x's dtype."""
    _check(x, conv_a_weight, conv_b_weight, bn_weight.shape[0])
    return _stem_inference_op(x.contiguous(), conv_a_weight, conv_a_bias, conv_b_weight, conv_b_bias, bn_weight, bn_bias, running_mean, running_var, eps)


def stem_ref(x, conv_a_weight, conv_a_bias, conv_b_weight, conv_b_bias, bn_a, bn_b, *, training, momentum, eps):
    """Plain-PyTorch reference, exactly the model's stem; returns NCHW (B, C, 2H, W)."""
    xa = F.relu(F.batch_norm(F.conv2d(x, conv_a_weight, conv_a_bias, padding=(1, 0)), bn_a[2], bn_a[3], bn_a[0], bn_a[1], training, momentum, eps))
    xb = F.relu(F.batch_norm(F.conv2d(x, conv_b_weight, conv_b_bias, padding=(0, 1)), bn_b[2], bn_b[3], bn_b[0], bn_b[1], training, momentum, eps))
    return torch.cat((xa, xb), dim=2)


def kernel_specs(channels: int, *, dtype: str) -> list[KernelSpec]:
    """The stem's kernels as launched for C output channels per branch on a ``dtype`` input."""
    block_c = _block_c(channels)
    x_sig = {"x_ptr": f"*{dtype}", "wa_ptr": "*fp32", "ba_ptr": "*fp32", "wb_ptr": "*fp32", "bb_ptr": "*fp32",
             "mean_ptr": "*fp32", "var_ptr": "*fp32", "gamma_ptr": "*fp32", "beta_ptr": "*fp32"}  # fmt: skip
    dims = {"H": "i32", "W": "i32", "M": "i32", "C": "i32", "eps": "fp32"}
    specs = []
    for stats in (False, True):
        specs.append(KernelSpec(
            "stem", f"_stem_forward_kernel[{dtype},STATS={int(stats)}]", _stem_forward_kernel,
            {**x_sig, "out_ptr": f"*{dtype}", "moments_ptr": "*fp32", **dims, "STATS": "constexpr", "BLOCK_M": "constexpr", "BLOCK_C": "constexpr"},
            {"STATS": stats, "BLOCK_M": _BLOCK_M, "BLOCK_C": block_c}, num_warps=_NUM_WARPS,
        ))  # fmt: skip
    specs.append(KernelSpec(
        "stem", f"_stem_backward_sums_kernel[{dtype}]", _stem_backward_sums_kernel,
        {**x_sig, "g_ptr": f"*{dtype}", "partial_ptr": "*fp32", **dims, "BLOCK_M": "constexpr", "BLOCK_C": "constexpr"},
        {"BLOCK_M": _BLOCK_M, "BLOCK_C": block_c}, num_warps=_NUM_WARPS,
    ))  # fmt: skip
    for batch_stats in (False, True):
        specs.append(KernelSpec(
            "stem", f"_stem_backward_kernel[{dtype},BATCH_STATS={int(batch_stats)}]", _stem_backward_kernel,
            {**x_sig, "g_ptr": f"*{dtype}", "sums_ptr": "*fp32", "dx_ptr": f"*{dtype}", "partial_ptr": "*fp32", **dims,
             "BATCH_STATS": "constexpr", "BLOCK_M": "constexpr", "BLOCK_C": "constexpr"},
            {"BATCH_STATS": batch_stats, "BLOCK_M": _BACKWARD_BLOCK_M, "BLOCK_C": block_c}, num_warps=_NUM_WARPS,
        ))  # fmt: skip
    return specs
