"""MS-SENet temporal-aware block (TAB), both time directions in one launch.

    c = ReLU(BN1(causal_conv1(x))) * mask1        causal conv: k = 2, dilation d, left pad d
    c = ReLU(BN2(causal_conv2(c))) * mask2        mask: spatial-dropout channel scale (training)
    out = x * sigmoid(c)

Activations are direction-stacked and channels-last: (2, B, T, F), direction 0 the forward-time
sequence and direction 1 the time-reversed one (each in its own time order), so a (sample,
direction) sequence is one contiguous block. Every kernel runs one program per (sample, direction)
and walks the whole sequence in time tiles: the k = 2 dilated conv of a tile needs the rows one
dilation back (forward) or ahead (backward), which the program reads from the same block (L1/L2),
and per-program BatchNorm summaries and weight-gradient partials stay one row per program.

Two entry points:
- ``temporal_block_inference`` (eval, no autograd): one kernel per block. BatchNorm uses the
  running statistics, folded with the conv bias into a per-channel scale and shift; conv1's output
  one dilation back is recomputed from the input instead of being stored.
- ``temporal_block`` (training, or eval with gradients): conv1 (+ batch statistics), conv2 with
  BN1 + ReLU + dropout applied as it loads its input (+ statistics), then the gate; the
  pre-BatchNorm conv outputs u1, u2 are kept for the backward. In training the BatchNorm batch
  statistics are combined across programs by ``batch_norm_stats`` (deterministic, no atomics) and
  returned so the caller can update the running statistics exactly as PyTorch does.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from glam_fast.kernels import KernelSpec, register_compile_specs
from glam_fast.ops.batch_norm_stats import _chan_merge, _tile_moments, batch_norm_stats, new_partials
from glam_fast.ops.utils import check_same_device, empty_output, interpreting

# ----------------------------------------------------------------------------------------------
# Triton helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _load_rows(ptr, rows, cols, T, F):
    """Rows ``rows`` (may be < 0 or >= T: zeros there) of a (T, F) channels-last sequence: [R, C]."""
    mask = ((rows >= 0) & (rows < T))[:, None] & (cols < F)[None, :]
    return tl.load(ptr + rows[:, None] * F + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _store_rows(ptr, rows, cols, T, F, values):
    mask = (rows < T)[:, None] & (cols < F)[None, :]
    tl.store(ptr + rows[:, None] * F + cols[None, :], values.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_tap(w_ptr, tap, cols_in, cols_out, F, TRANSPOSED: tl.constexpr):
    """Tap ``tap`` of a (F_out, F_in, 2) conv weight as [F_in, F_out] (TRANSPOSED, for x @ W^T)
    or [F_out, F_in] (for the data gradient dy @ W). Zero outside F."""
    if TRANSPOSED:
        offs = cols_out[None, :] * (2 * F) + cols_in[:, None] * 2 + tap
        mask = (cols_in < F)[:, None] & (cols_out < F)[None, :]
    else:
        offs = cols_out[:, None] * (2 * F) + cols_in[None, :] * 2 + tap
        mask = (cols_out < F)[:, None] & (cols_in < F)[None, :]
    return tl.load(w_ptr + offs, mask=mask, other=0.0)


@triton.jit
def _load_vec(ptr, cols, F):
    return tl.load(ptr + cols, mask=cols < F, other=0.0).to(tl.float32)


@triton.jit
def _bn_invstd(var_ptr, cols, F, eps):
    return 1.0 / tl.sqrt(_load_vec(var_ptr, cols, F) + eps)


@triton.jit
def _causal_conv(prev, cur, w_prev_t, w_cur_t, PRECISION: tl.constexpr):
    """prev @ W0^T + cur @ W1^T for [R, C] tiles of the input at t - dilation and t: [R, C] fp32."""
    acc = tl.dot(prev, w_prev_t, input_precision=PRECISION)
    return tl.dot(cur, w_cur_t, acc, input_precision=PRECISION)


@triton.jit
def _bn_input_grad(dn, xhat, gamma_invstd, mean_dn, mean_dn_xhat, TRAINING: tl.constexpr):
    """BatchNorm backward from the grad of its output dn: batch statistics in training, fixed ones in eval."""
    if TRAINING:
        return gamma_invstd[None, :] * (dn - mean_dn[None, :] - xhat * mean_dn_xhat[None, :])
    else:
        return gamma_invstd[None, :] * dn


# ----------------------------------------------------------------------------------------------
# Inference (eval, no grad): one kernel per block
# ----------------------------------------------------------------------------------------------


@triton.jit
def _temporal_block_inference_kernel(
    h_ptr, out_ptr, mean_ptr,
    conv_w_ptr, conv_b_ptr, bn_w_ptr, bn_b_ptr, rmean_ptr, rvar_ptr,
    B, T, F, dilation, eps,
    BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    d = tl.program_id(1)
    dot_t = h_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK_F)
    seq = (d * B + b) * T * F
    w1 = conv_w_ptr + (d * 2) * F * F * 2
    w2 = conv_w_ptr + (d * 2 + 1) * F * F * 2
    w1_prev = _load_tap(w1, 0, cols, cols, F, True).to(dot_t)
    w1_cur = _load_tap(w1, 1, cols, cols, F, True).to(dot_t)
    w2_prev = _load_tap(w2, 0, cols, cols, F, True).to(dot_t)
    w2_cur = _load_tap(w2, 1, cols, cols, F, True).to(dot_t)
    # BN(conv + bias) = conv * scale + shift with the running statistics
    p1 = (d * 2) * F
    p2 = (d * 2 + 1) * F
    scale1 = _load_vec(bn_w_ptr + p1, cols, F) * _bn_invstd(rvar_ptr + p1, cols, F, eps)
    shift1 = _load_vec(bn_b_ptr + p1, cols, F) + (_load_vec(conv_b_ptr + p1, cols, F) - _load_vec(rmean_ptr + p1, cols, F)) * scale1
    scale2 = _load_vec(bn_w_ptr + p2, cols, F) * _bn_invstd(rvar_ptr + p2, cols, F, eps)
    shift2 = _load_vec(bn_b_ptr + p2, cols, F) + (_load_vec(conv_b_ptr + p2, cols, F) - _load_vec(rmean_ptr + p2, cols, F)) * scale2
    total = tl.zeros([BLOCK_F], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        h_cur = _load_rows(h_ptr + seq, rows, cols, T, F)
        h_prev = _load_rows(h_ptr + seq, rows - dilation, cols, T, F)
        h_prev2 = _load_rows(h_ptr + seq, rows - 2 * dilation, cols, T, F)
        a1_cur = tl.maximum(_causal_conv(h_prev, h_cur, w1_prev, w1_cur, PRECISION) * scale1[None, :] + shift1[None, :], 0.0)
        # conv1 one dilation back, recomputed; zero where that row is left padding of conv2's input
        a1_prev = tl.maximum(_causal_conv(h_prev2, h_prev, w1_prev, w1_cur, PRECISION) * scale1[None, :] + shift1[None, :], 0.0)
        a1_prev = tl.where((rows >= dilation)[:, None], a1_prev, 0.0)
        a2 = _causal_conv(a1_prev.to(dot_t), a1_cur.to(dot_t), w2_prev, w2_cur, PRECISION)
        a2 = tl.maximum(a2 * scale2[None, :] + shift2[None, :], 0.0)
        out = (h_cur.to(tl.float32) * tl.sigmoid(a2)).to(dot_t)
        _store_rows(out_ptr + seq, rows, cols, T, F, out)
        total += tl.sum(tl.where((rows < T)[:, None], out.to(tl.float32), 0.0), axis=0)
    tl.store(mean_ptr + (d * B + b) * F + cols, total / T, mask=cols < F)


# ----------------------------------------------------------------------------------------------
# Training (or eval with gradients): forward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _causal_conv_stats_kernel(
    in_ptr, u_ptr, partial_ptr,
    conv_w_ptr, conv_b_ptr, bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr,
    conv_index, B, T, F, dilation, eps,
    NORMALIZE_INPUT: tl.constexpr, HAS_MASK: tl.constexpr, COMPUTE_STATS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """u = causal_conv_{conv_index}(input) + bias, stored in the activation dtype, and the
    per-program [mean, M2] of u for its BatchNorm. With NORMALIZE_INPUT the input is the previous
    conv's u, passed through BN_{conv_index-1} + ReLU + dropout as it is loaded."""
    b = tl.program_id(0)
    d = tl.program_id(1)
    dot_t = u_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK_F)
    seq = (d * B + b) * T * F
    w = conv_w_ptr + (d * 2 + conv_index) * F * F * 2
    w_prev = _load_tap(w, 0, cols, cols, F, True).to(dot_t)
    w_cur = _load_tap(w, 1, cols, cols, F, True).to(dot_t)
    bias = _load_vec(conv_b_ptr + (d * 2 + conv_index) * F, cols, F)
    if NORMALIZE_INPUT:
        p = (d * 2 + conv_index - 1) * F
        in_scale = _load_vec(bn_w_ptr + p, cols, F) * _bn_invstd(var_ptr + p, cols, F, eps)
        in_shift = _load_vec(bn_b_ptr + p, cols, F) - _load_vec(mean_ptr + p, cols, F) * in_scale
        if HAS_MASK:
            keep = _load_vec(mask_ptr + ((d * 2 + conv_index - 1) * B + b) * F, cols, F)
            in_scale = in_scale * keep  # ReLU(n) * keep == ReLU(n * keep): keep >= 0
            in_shift = in_shift * keep
    count = tl.zeros([BLOCK_F], dtype=tl.float32)
    mean = tl.zeros([BLOCK_F], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_F], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        x_cur = _load_rows(in_ptr + seq, rows, cols, T, F)
        x_prev = _load_rows(in_ptr + seq, rows - dilation, cols, T, F)
        if NORMALIZE_INPUT:
            x_cur = tl.maximum(x_cur.to(tl.float32) * in_scale[None, :] + in_shift[None, :], 0.0).to(dot_t)
            x_prev = tl.maximum(x_prev.to(tl.float32) * in_scale[None, :] + in_shift[None, :], 0.0)
            x_prev = tl.where((rows >= dilation)[:, None], x_prev, 0.0).to(dot_t)
        u = (_causal_conv(x_prev, x_cur, w_prev, w_cur, PRECISION) + bias[None, :]).to(dot_t)
        _store_rows(u_ptr + seq, rows, cols, T, F, u)
        if COMPUTE_STATS:
            tile_count, tile_mean, tile_m2 = _tile_moments(u.to(tl.float32), rows < T)
            count, mean, m2 = _chan_merge(count, mean, m2, tile_count, tile_mean, tile_m2)
    if COMPUTE_STATS:
        out = partial_ptr + (d * B + b) * 2 * BLOCK_F + cols
        tl.store(out, mean)
        tl.store(out + BLOCK_F, m2)


@triton.jit
def _temporal_block_gate_kernel(
    h_ptr, u2_ptr, out_ptr, out_mean_ptr,
    bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr,
    B, T, F, eps,
    HAS_MASK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr,
):  # fmt: skip
    """out = h * sigmoid(ReLU(BN2(u2)) * mask2) and its mean over time (fp32)."""
    b = tl.program_id(0)
    d = tl.program_id(1)
    cols = tl.arange(0, BLOCK_F)
    seq = (d * B + b) * T * F
    p = (d * 2 + 1) * F
    scale = _load_vec(bn_w_ptr + p, cols, F) * _bn_invstd(var_ptr + p, cols, F, eps)
    shift = _load_vec(bn_b_ptr + p, cols, F) - _load_vec(mean_ptr + p, cols, F) * scale
    if HAS_MASK:
        keep = _load_vec(mask_ptr + ((d * 2 + 1) * B + b) * F, cols, F)
        scale = scale * keep
        shift = shift * keep
    total = tl.zeros([BLOCK_F], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        h = _load_rows(h_ptr + seq, rows, cols, T, F).to(tl.float32)
        u2 = _load_rows(u2_ptr + seq, rows, cols, T, F).to(tl.float32)
        out = (h * tl.sigmoid(tl.maximum(u2 * scale[None, :] + shift[None, :], 0.0))).to(out_ptr.dtype.element_ty)
        _store_rows(out_ptr + seq, rows, cols, T, F, out)
        total += tl.sum(tl.where((rows < T)[:, None], out.to(tl.float32), 0.0), axis=0)
    tl.store(out_mean_ptr + (d * B + b) * F + cols, total / T, mask=cols < F)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _gate_grads(
    rows, cols, seq, mean_row, grad_out_ptr, grad_mean_ptr, h_ptr, u2_ptr, scale2, shift2, keep2, T, F,
    HAS_GRAD_OUT: tl.constexpr, HAS_GRAD_MEAN: tl.constexpr,
):  # fmt: skip
    """At rows ``rows``: grad of BN2's output n2 and the direct grad of h through the gate (zero
    outside [0, T)). The upstream grad of ``out`` is grad_out plus grad_mean / T (the time mean)."""
    valid = ((rows >= 0) & (rows < T))[:, None] & (cols < F)[None, :]
    g = tl.zeros([rows.shape[0], cols.shape[0]], dtype=tl.float32)
    if HAS_GRAD_OUT:
        g += _load_rows(grad_out_ptr + seq, rows, cols, T, F).to(tl.float32)
    if HAS_GRAD_MEAN:
        g += (_load_vec(grad_mean_ptr + mean_row, cols, F) / T)[None, :]
    h = _load_rows(h_ptr + seq, rows, cols, T, F).to(tl.float32)
    n2 = _load_rows(u2_ptr + seq, rows, cols, T, F).to(tl.float32) * scale2[None, :] + shift2[None, :]
    gate = tl.sigmoid(tl.maximum(n2, 0.0) * keep2[None, :])
    grad_n2 = tl.where(valid & (n2 > 0.0), g * h * gate * (1.0 - gate) * keep2[None, :], 0.0)
    return grad_n2, tl.where(valid, g * gate, 0.0)


@triton.jit
def _bn_setup(bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr, d, b, B, bn_index, cols, F, eps, HAS_MASK: tl.constexpr):
    """(gamma * invstd, shift, mean, invstd, keep) of BatchNorm ``bn_index`` of direction d."""
    p = (d * 2 + bn_index) * F
    invstd = _bn_invstd(var_ptr + p, cols, F, eps)
    mean = _load_vec(mean_ptr + p, cols, F)
    gamma_invstd = _load_vec(bn_w_ptr + p, cols, F) * invstd
    shift = _load_vec(bn_b_ptr + p, cols, F) - mean * gamma_invstd
    if HAS_MASK:
        keep = _load_vec(mask_ptr + ((d * 2 + bn_index) * B + b) * F, cols, F)
    else:
        keep = tl.full([cols.shape[0]], 1.0, dtype=tl.float32)
    return gamma_invstd, shift, mean, invstd, keep


@triton.jit
def _temporal_block_gate_backward_kernel(
    grad_out_ptr, grad_mean_ptr, h_ptr, u2_ptr, sums_ptr,
    bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr,
    B, T, F, eps,
    HAS_GRAD_OUT: tl.constexpr, HAS_GRAD_MEAN: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr,
):  # fmt: skip
    """Per program: sum over its sequence of dn2 and dn2 * xhat2 (BN2's beta and gamma grads)."""
    b = tl.program_id(0)
    d = tl.program_id(1)
    cols = tl.arange(0, BLOCK_F)
    seq = (d * B + b) * T * F
    gi2, shift2, mean2, invstd2, keep2 = _bn_setup(bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr, d, b, B, 1, cols, F, eps, HAS_MASK)
    sum_dn = tl.zeros([BLOCK_F], dtype=tl.float32)
    sum_dn_xhat = tl.zeros([BLOCK_F], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        dn2, _ = _gate_grads(rows, cols, seq, (d * B + b) * F, grad_out_ptr, grad_mean_ptr, h_ptr, u2_ptr, gi2, shift2, keep2, T, F, HAS_GRAD_OUT, HAS_GRAD_MEAN)
        xhat2 = (_load_rows(u2_ptr + seq, rows, cols, T, F).to(tl.float32) - mean2[None, :]) * invstd2[None, :]
        sum_dn += tl.sum(dn2, axis=0)
        sum_dn_xhat += tl.sum(dn2 * xhat2, axis=0)
    out = sums_ptr + (d * B + b) * 2 * BLOCK_F + cols
    tl.store(out, sum_dn)
    tl.store(out + BLOCK_F, sum_dn_xhat)


@triton.jit
def _store_weight_grads(w_partial_ptr, b_partial_ptr, d, b, B, conv_index, cols, F, dw_prev, dw_cur, db):
    """Per-program conv weight / bias grads into (2, B, 2, F, F, 2) / (2, B, 2, F) partial buffers."""
    row = (d * B + b) * 2 + conv_index
    mask = (cols < F)[:, None] & (cols < F)[None, :]
    offs = w_partial_ptr + row * F * F * 2 + cols[:, None] * (2 * F) + cols[None, :] * 2
    tl.store(offs, dw_prev, mask=mask)
    tl.store(offs + 1, dw_cur, mask=mask)
    tl.store(b_partial_ptr + row * F + cols, db, mask=cols < F)


@triton.jit
def _temporal_block_conv2_backward_kernel(
    grad_out_ptr, grad_mean_ptr, h_ptr, u1_ptr, u2_ptr, grad_n1_ptr, sums1_ptr, sums2_ptr, w_partial_ptr, b_partial_ptr,
    conv_w_ptr, bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr,
    B, T, F, dilation, eps,
    TRAINING: tl.constexpr, HAS_GRAD_OUT: tl.constexpr, HAS_GRAD_MEAN: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Through BN2 and conv2: grad of conv2's weight and bias, and dn1 = grad of BN1's output
    (stored, fp32) with its per-program sums for BN1's backward."""
    b = tl.program_id(0)
    d = tl.program_id(1)
    dot_t = h_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK_F)
    seq = (d * B + b) * T * F
    mean_row = (d * B + b) * F
    n_count = B * T
    gi1, shift1, mean1, invstd1, keep1 = _bn_setup(bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr, d, b, B, 0, cols, F, eps, HAS_MASK)
    gi2, shift2, mean2, invstd2, keep2 = _bn_setup(bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr, d, b, B, 1, cols, F, eps, HAS_MASK)
    mean_dn2 = _load_vec(sums2_ptr + d * 2 * BLOCK_F, cols, F) / n_count
    mean_dn_xhat2 = _load_vec(sums2_ptr + d * 2 * BLOCK_F + BLOCK_F, cols, F) / n_count
    w = conv_w_ptr + (d * 2 + 1) * F * F * 2
    w_prev = _load_tap(w, 0, cols, cols, F, False).to(dot_t)
    w_cur = _load_tap(w, 1, cols, cols, F, False).to(dot_t)
    dw_prev = tl.zeros([BLOCK_F, BLOCK_F], dtype=tl.float32)
    dw_cur = tl.zeros([BLOCK_F, BLOCK_F], dtype=tl.float32)
    db = tl.zeros([BLOCK_F], dtype=tl.float32)
    sum_dn1 = tl.zeros([BLOCK_F], dtype=tl.float32)
    sum_dn1_xhat = tl.zeros([BLOCK_F], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        valid = (rows < T)[:, None] & (cols < F)[None, :]
        # du2 at t and at t + dilation (the later output that also reads a1[t])
        dn2, _ = _gate_grads(rows, cols, seq, mean_row, grad_out_ptr, grad_mean_ptr, h_ptr, u2_ptr, gi2, shift2, keep2, T, F, HAS_GRAD_OUT, HAS_GRAD_MEAN)
        xhat2 = (_load_rows(u2_ptr + seq, rows, cols, T, F).to(tl.float32) - mean2[None, :]) * invstd2[None, :]
        du2 = tl.where(valid, _bn_input_grad(dn2, xhat2, gi2, mean_dn2, mean_dn_xhat2, TRAINING), 0.0)
        rows_next = rows + dilation
        valid_next = (rows_next < T)[:, None] & (cols < F)[None, :]
        dn2_next, _ = _gate_grads(rows_next, cols, seq, mean_row, grad_out_ptr, grad_mean_ptr, h_ptr, u2_ptr, gi2, shift2, keep2, T, F, HAS_GRAD_OUT, HAS_GRAD_MEAN)
        xhat2_next = (_load_rows(u2_ptr + seq, rows_next, cols, T, F).to(tl.float32) - mean2[None, :]) * invstd2[None, :]
        du2_next = tl.where(valid_next, _bn_input_grad(dn2_next, xhat2_next, gi2, mean_dn2, mean_dn_xhat2, TRAINING), 0.0)
        # conv2's input a1 = ReLU(BN1(u1)) * keep1 at t and t - dilation
        u1 = _load_rows(u1_ptr + seq, rows, cols, T, F).to(tl.float32)
        n1 = u1 * gi1[None, :] + shift1[None, :]
        a1 = (tl.maximum(n1, 0.0) * keep1[None, :]).to(dot_t)
        u1_prev = _load_rows(u1_ptr + seq, rows - dilation, cols, T, F).to(tl.float32)
        a1_prev = tl.maximum(u1_prev * gi1[None, :] + shift1[None, :], 0.0) * keep1[None, :]
        a1_prev = tl.where((rows >= dilation)[:, None], a1_prev, 0.0).to(dot_t)
        du2_t = tl.trans(du2.to(dot_t))
        dw_prev = tl.dot(du2_t, a1_prev, dw_prev, input_precision=PRECISION)
        dw_cur = tl.dot(du2_t, a1, dw_cur, input_precision=PRECISION)
        db += tl.sum(du2, axis=0)
        da1 = tl.dot(du2.to(dot_t), w_cur, input_precision=PRECISION)
        da1 = tl.dot(du2_next.to(dot_t), w_prev, da1, input_precision=PRECISION)
        dn1 = tl.where(valid & (n1 > 0.0), da1 * keep1[None, :], 0.0)
        _store_rows(grad_n1_ptr + seq, rows, cols, T, F, dn1)
        xhat1 = (u1 - mean1[None, :]) * invstd1[None, :]
        sum_dn1 += tl.sum(dn1, axis=0)
        sum_dn1_xhat += tl.sum(dn1 * xhat1, axis=0)
    _store_weight_grads(w_partial_ptr, b_partial_ptr, d, b, B, 1, cols, F, dw_prev, dw_cur, db)
    out = sums1_ptr + (d * B + b) * 2 * BLOCK_F + cols
    tl.store(out, sum_dn1)
    tl.store(out + BLOCK_F, sum_dn1_xhat)


@triton.jit
def _temporal_block_conv1_backward_kernel(
    grad_out_ptr, grad_mean_ptr, h_ptr, u1_ptr, u2_ptr, grad_n1_ptr, sums1_ptr, grad_h_ptr, w_partial_ptr, b_partial_ptr,
    conv_w_ptr, bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr,
    B, T, F, dilation, eps,
    TRAINING: tl.constexpr, HAS_GRAD_OUT: tl.constexpr, HAS_GRAD_MEAN: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Through BN1 and conv1: grad of conv1's weight and bias, and grad of the block input h
    (through conv1 plus directly through the gate)."""
    b = tl.program_id(0)
    d = tl.program_id(1)
    dot_t = h_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK_F)
    seq = (d * B + b) * T * F
    mean_row = (d * B + b) * F
    n_count = B * T
    gi1, shift1, mean1, invstd1, keep1 = _bn_setup(bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr, d, b, B, 0, cols, F, eps, HAS_MASK)
    gi2, shift2, mean2, invstd2, keep2 = _bn_setup(bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr, d, b, B, 1, cols, F, eps, HAS_MASK)
    mean_dn1 = _load_vec(sums1_ptr + d * 2 * BLOCK_F, cols, F) / n_count
    mean_dn_xhat1 = _load_vec(sums1_ptr + d * 2 * BLOCK_F + BLOCK_F, cols, F) / n_count
    w = conv_w_ptr + (d * 2) * F * F * 2
    w_prev = _load_tap(w, 0, cols, cols, F, False).to(dot_t)
    w_cur = _load_tap(w, 1, cols, cols, F, False).to(dot_t)
    dw_prev = tl.zeros([BLOCK_F, BLOCK_F], dtype=tl.float32)
    dw_cur = tl.zeros([BLOCK_F, BLOCK_F], dtype=tl.float32)
    db = tl.zeros([BLOCK_F], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        valid = (rows < T)[:, None] & (cols < F)[None, :]
        xhat1 = (_load_rows(u1_ptr + seq, rows, cols, T, F).to(tl.float32) - mean1[None, :]) * invstd1[None, :]
        dn1 = _load_rows(grad_n1_ptr + seq, rows, cols, T, F)
        du1 = tl.where(valid, _bn_input_grad(dn1, xhat1, gi1, mean_dn1, mean_dn_xhat1, TRAINING), 0.0)
        rows_next = rows + dilation
        valid_next = (rows_next < T)[:, None] & (cols < F)[None, :]
        xhat1_next = (_load_rows(u1_ptr + seq, rows_next, cols, T, F).to(tl.float32) - mean1[None, :]) * invstd1[None, :]
        dn1_next = _load_rows(grad_n1_ptr + seq, rows_next, cols, T, F)
        du1_next = tl.where(valid_next, _bn_input_grad(dn1_next, xhat1_next, gi1, mean_dn1, mean_dn_xhat1, TRAINING), 0.0)
        _, dh = _gate_grads(rows, cols, seq, mean_row, grad_out_ptr, grad_mean_ptr, h_ptr, u2_ptr, gi2, shift2, keep2, T, F, HAS_GRAD_OUT, HAS_GRAD_MEAN)
        dh = tl.dot(du1.to(dot_t), w_cur, dh, input_precision=PRECISION)
        dh = tl.dot(du1_next.to(dot_t), w_prev, dh, input_precision=PRECISION)
        _store_rows(grad_h_ptr + seq, rows, cols, T, F, dh)
        h = _load_rows(h_ptr + seq, rows, cols, T, F)
        h_prev = _load_rows(h_ptr + seq, rows - dilation, cols, T, F)
        du1_t = tl.trans(du1.to(dot_t))
        dw_prev = tl.dot(du1_t, h_prev, dw_prev, input_precision=PRECISION)
        dw_cur = tl.dot(du1_t, h, dw_cur, input_precision=PRECISION)
        db += tl.sum(du1, axis=0)
    _store_weight_grads(w_partial_ptr, b_partial_ptr, d, b, B, 0, cols, F, dw_prev, dw_cur, db)


# ----------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------

# GPU: 32-row tiles at 8 warps keep every kernel within registers (no spills on sm_80/sm_90; at
# 64 rows or 4 warps the weight-grad accumulators and the 64x64 conv taps spill). fp32
# activations take one pipeline stage: buffered fp32 input tiles would overflow sm_80's 163 KB
# of shared memory; their forward takes 16-row tiles, since 3xTF32 dots hold each operand as a
# high and a low part (at 32 rows the fp32 inference kernel spills ~0.8 KB per thread).
_GPU_CONFIG = {"forward": (32, 8), "backward": (32, 8)}
_GPU_FP32_FORWARD_BLOCK_T = 16
_GPU_STAGES = {torch.float32: 1, torch.float16: 3, torch.bfloat16: 3}
_INTERPRETER_BLOCK_T = 256  # the interpreter pays per tile, not per element


def _block_f(channels: int) -> int:
    return max(16, triton.next_power_of_2(channels))


def _launch_config(kind: str, length: int, dtype: torch.dtype) -> dict:
    """BLOCK_T, num_warps and num_stages for the forward or backward kernels."""
    if interpreting():
        return {"BLOCK_T": max(16, min(_INTERPRETER_BLOCK_T, triton.next_power_of_2(length))), "num_warps": 4, "num_stages": 1}
    return _gpu_launch_config(kind, dtype)


def _gpu_launch_config(kind: str, dtype: torch.dtype) -> dict:
    """The GPU configuration of _launch_config; also what the compile specs compile."""
    block_t, warps = _GPU_CONFIG[kind]
    if kind == "forward" and dtype == torch.float32:
        block_t = _GPU_FP32_FORWARD_BLOCK_T
    return {"BLOCK_T": block_t, "num_warps": warps, "num_stages": pipeline_stages(dtype)}


def pipeline_stages(dtype: torch.dtype) -> int:
    """Software-pipelining depth on the GPU: fp32 operands are twice the bytes, so one stage."""
    return _GPU_STAGES[dtype]


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision. fp32 activations: 3xTF32 on the tensor cores (fp32-level accuracy;
    plain "ieee" fp32 dots fall back to FMA loops that are slow to run and to compile), or plain
    TF32 when PyTorch's own matmul flag allows it. Half activations ignore it."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "tf32x3"
    return "tf32"


# ----------------------------------------------------------------------------------------------
# Input checks (shared by the real and fake implementations, so torch.compile sees them too)
# ----------------------------------------------------------------------------------------------

_ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_inputs(op: str, h: Tensor, conv_weight: Tensor, vectors: dict[str, Tensor], masks: Optional[Tensor], dilation: int) -> tuple[int, int, int]:
    if h.dim() != 4 or h.shape[0] != 2:
        raise ValueError(f"{op}: h must have shape (2, B, T, F) (both directions), got {tuple(h.shape)}")
    if h.dtype not in _ACTIVATION_DTYPES:
        raise TypeError(f"{op}: h must be float32, float16 or bfloat16, got {h.dtype}")
    _, batch, length, channels = h.shape
    if batch < 1 or length < 1 or channels < 1:
        raise ValueError(f"{op}: h must be non-empty, got shape {tuple(h.shape)}")
    if tuple(conv_weight.shape) != (2, 2, channels, channels, 2):
        raise ValueError(f"{op}: conv_weight must have shape (2, 2, {channels}, {channels}, 2), got {tuple(conv_weight.shape)}")
    tensors = {"h": h, "conv_weight": conv_weight, **vectors}
    for name, t in vectors.items():
        if tuple(t.shape) != (2, 2, channels):
            raise ValueError(f"{op}: {name} must have shape (2, 2, {channels}), got {tuple(t.shape)}")
    if masks is not None:
        if tuple(masks.shape) != (2, 2, batch, channels):
            raise ValueError(f"{op}: masks must have shape (2, 2, {batch}, {channels}), got {tuple(masks.shape)}")
        tensors["masks"] = masks
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    check_same_device(op, **tensors)
    if dilation < 1:
        raise ValueError(f"{op}: dilation must be >= 1, got {dilation}")
    return batch, length, channels


# ----------------------------------------------------------------------------------------------
# Inference op
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("glam_fast::temporal_block_inference", mutates_args=())
def temporal_block_inference(
    h: Tensor, conv_weight: Tensor, conv_bias: Tensor, bn_weight: Tensor, bn_bias: Tensor,
    running_mean: Tensor, running_var: Tensor, dilation: int, eps: float,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One TAB for both directions in eval mode, no autograd.

    h: (2, B, T, F) fp32/fp16/bf16 channels-last; conv_weight: (2 directions, 2 convs, F, F, 2);
    conv_bias, bn_weight, bn_bias, running_mean, running_var: (2, 2, F). Returns out (2, B, T, F)
    in h's dtype and its time mean (2, B, F) fp32.
    """
    vectors = {"conv_bias": conv_bias, "bn_weight": bn_weight, "bn_bias": bn_bias, "running_mean": running_mean, "running_var": running_var}
    batch, length, channels = _check_inputs("temporal_block_inference", h, conv_weight, vectors, None, dilation)
    h, conv_weight = h.contiguous(), conv_weight.contiguous()
    conv_bias, bn_weight, bn_bias, running_mean, running_var = (t.contiguous() for t in vectors.values())
    out = empty_output(h.shape, dtype=h.dtype, device=h.device)
    out_mean = empty_output((2, batch, channels), dtype=torch.float32, device=h.device)
    _temporal_block_inference_kernel[(batch, 2)](
        h, out, out_mean, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var,
        batch, length, channels, dilation, eps,
        BLOCK_F=_block_f(channels), PRECISION=dot_precision(h.dtype), **_launch_config("forward", length, h.dtype),
    )  # fmt: skip
    return out, out_mean


@temporal_block_inference.register_fake
def _(h, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, dilation, eps):
    vectors = {"conv_bias": conv_bias, "bn_weight": bn_weight, "bn_bias": bn_bias, "running_mean": running_mean, "running_var": running_var}
    batch, _, channels = _check_inputs("temporal_block_inference", h, conv_weight, vectors, None, dilation)
    return torch.empty_like(h), h.new_empty((2, batch, channels), dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# Training-capable op
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("glam_fast::temporal_block", mutates_args=())
def temporal_block(
    h: Tensor, conv_weight: Tensor, conv_bias: Tensor, bn_weight: Tensor, bn_bias: Tensor,
    running_mean: Tensor, running_var: Tensor, masks: Optional[Tensor], dilation: int, training: bool, eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """One TAB for both directions, differentiable; in training BatchNorm uses batch statistics.

    Shapes as :func:`temporal_block_inference`; masks: (2 directions, 2 convs, B, F) channel
    dropout scales or None. Returns (out (2, B, T, F), out time mean (2, B, F) fp32, u1, u2 (the
    pre-BatchNorm conv outputs, kept for the backward), stats): in training stats is (2, 2, 2, F)
    fp32 = [batch mean, biased batch variance][direction][BatchNorm], otherwise empty (0,).
    """
    vectors = {"conv_bias": conv_bias, "bn_weight": bn_weight, "bn_bias": bn_bias, "running_mean": running_mean, "running_var": running_var}
    batch, length, channels = _check_inputs("temporal_block", h, conv_weight, vectors, masks, dilation)
    if training and batch * length < 2:
        raise ValueError(f"temporal_block: training BatchNorm needs more than 1 value per channel, got B * T = {batch * length}")
    h, conv_weight = h.contiguous(), conv_weight.contiguous()
    conv_bias, bn_weight, bn_bias, running_mean, running_var = (t.contiguous() for t in vectors.values())
    masks = masks.contiguous() if masks is not None else None
    device = h.device
    block_f = _block_f(channels)
    u1 = empty_output(h.shape, dtype=h.dtype, device=device)
    u2 = empty_output(h.shape, dtype=h.dtype, device=device)
    out = empty_output(h.shape, dtype=h.dtype, device=device)
    out_mean = empty_output((2, batch, channels), dtype=torch.float32, device=device)
    if training:
        stats = empty_output((2, 2, 2, channels), dtype=torch.float32, device=device)
        partial = new_partials(2, batch, block_f, device)
        mean, var = stats[0], stats[1]
    else:
        stats = h.new_empty((0,), dtype=torch.float32)
        partial = stats
        mean, var = running_mean, running_var
    mask_arg = masks if masks is not None else bn_weight
    common = dict(BLOCK_F=block_f, **_launch_config("forward", length, h.dtype))
    precision = dot_precision(h.dtype)
    grid = (batch, 2)
    _causal_conv_stats_kernel[grid](
        h, u1, partial, conv_weight, conv_bias, bn_weight, bn_bias, mean, var, mask_arg, 0, batch, length, channels, dilation, eps,
        NORMALIZE_INPUT=False, HAS_MASK=False, COMPUTE_STATS=training, PRECISION=precision, **common,
    )  # fmt: skip
    if training:
        batch_norm_stats(partial, length, channels, stats.view(2, 4, channels), group_stride=2, group_offset=0)
    _causal_conv_stats_kernel[grid](
        u1, u2, partial, conv_weight, conv_bias, bn_weight, bn_bias, mean, var, mask_arg, 1, batch, length, channels, dilation, eps,
        NORMALIZE_INPUT=True, HAS_MASK=masks is not None, COMPUTE_STATS=training, PRECISION=precision, **common,
    )  # fmt: skip
    if training:
        batch_norm_stats(partial, length, channels, stats.view(2, 4, channels), group_stride=2, group_offset=1)
    _temporal_block_gate_kernel[grid](
        h, u2, out, out_mean, bn_weight, bn_bias, mean, var, mask_arg, batch, length, channels, eps,
        HAS_MASK=masks is not None, **common,
    )  # fmt: skip
    return out, out_mean, u1, u2, stats


@temporal_block.register_fake
def _(h, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, masks, dilation, training, eps):
    vectors = {"conv_bias": conv_bias, "bn_weight": bn_weight, "bn_bias": bn_bias, "running_mean": running_mean, "running_var": running_var}
    batch, _, channels = _check_inputs("temporal_block", h, conv_weight, vectors, masks, dilation)
    stats = h.new_empty((2, 2, 2, channels) if training else (0,), dtype=torch.float32)
    return torch.empty_like(h), h.new_empty((2, batch, channels), dtype=torch.float32), torch.empty_like(h), torch.empty_like(h), stats


@torch.library.custom_op("glam_fast::temporal_block_backward", mutates_args=())
def temporal_block_backward(
    grad_out: Optional[Tensor], grad_mean: Optional[Tensor], h: Tensor, u1: Tensor, u2: Tensor,
    conv_weight: Tensor, bn_weight: Tensor, bn_bias: Tensor, mean: Tensor, var: Tensor, masks: Optional[Tensor],
    dilation: int, training: bool, eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Backward of :func:`temporal_block`. mean/var: the (2, 2, F) statistics BatchNorm used.

    Returns grads of h (h's dtype), conv_weight (2, 2, F, F, 2), conv_bias, bn_weight, bn_bias
    (2, 2, F), all fp32 except h's.
    """
    _, batch, length, channels = h.shape
    device = h.device
    block_f = _block_f(channels)
    contiguous = [t.contiguous() if t is not None else None for t in (grad_out, grad_mean, h, u1, u2, conv_weight, bn_weight, bn_bias, mean, var, masks)]
    grad_out, grad_mean, h, u1, u2, conv_weight, bn_weight, bn_bias, mean, var, masks = contiguous
    sums2_partial = empty_output((2, batch, 2, block_f), dtype=torch.float32, device=device)
    sums1_partial = empty_output((2, batch, 2, block_f), dtype=torch.float32, device=device)
    w_partial = empty_output((2, batch, 2, channels, channels, 2), dtype=torch.float32, device=device)
    b_partial = empty_output((2, batch, 2, channels), dtype=torch.float32, device=device)
    grad_n1 = empty_output(h.shape, dtype=torch.float32, device=device)
    grad_h = empty_output(h.shape, dtype=h.dtype, device=device)
    flags = dict(HAS_GRAD_OUT=grad_out is not None, HAS_GRAD_MEAN=grad_mean is not None, HAS_MASK=masks is not None)
    grad_out_arg = grad_out if grad_out is not None else h
    grad_mean_arg = grad_mean if grad_mean is not None else bn_weight
    mask_arg = masks if masks is not None else bn_weight
    common = dict(BLOCK_F=block_f, **_launch_config("backward", length, h.dtype))
    precision = dot_precision(h.dtype)
    grid = (batch, 2)
    _temporal_block_gate_backward_kernel[grid](
        grad_out_arg, grad_mean_arg, h, u2, sums2_partial, bn_weight, bn_bias, mean, var, mask_arg, batch, length, channels, eps,
        **flags, **common,
    )  # fmt: skip
    sums2 = sums2_partial.sum(dim=1)  # (2, 2, BLOCK_F): [sum dn2, sum dn2 * xhat2]
    _temporal_block_conv2_backward_kernel[grid](
        grad_out_arg, grad_mean_arg, h, u1, u2, grad_n1, sums1_partial, sums2, w_partial, b_partial,
        conv_weight, bn_weight, bn_bias, mean, var, mask_arg, batch, length, channels, dilation, eps,
        TRAINING=training, PRECISION=precision, **flags, **common,
    )  # fmt: skip
    sums1 = sums1_partial.sum(dim=1)
    _temporal_block_conv1_backward_kernel[grid](
        grad_out_arg, grad_mean_arg, h, u1, u2, grad_n1, sums1, grad_h, w_partial, b_partial,
        conv_weight, bn_weight, bn_bias, mean, var, mask_arg, batch, length, channels, dilation, eps,
        TRAINING=training, PRECISION=precision, **flags, **common,
    )  # fmt: skip
    sums = torch.stack((sums1, sums2), dim=1)[..., :channels]  # (2 directions, 2 BNs, 2, F)
    return grad_h, w_partial.sum(dim=1), b_partial.sum(dim=1), sums[:, :, 1].contiguous(), sums[:, :, 0].contiguous()


@temporal_block_backward.register_fake
def _(grad_out, grad_mean, h, u1, u2, conv_weight, bn_weight, bn_bias, mean, var, masks, dilation, training, eps):
    _, _, _, channels = h.shape
    vec = h.new_empty((2, 2, channels), dtype=torch.float32)
    return torch.empty_like(h), h.new_empty((2, 2, channels, channels, 2), dtype=torch.float32), vec, vec.clone(), vec.clone()


def _setup_context(ctx, inputs, output):
    h, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, masks, dilation, training, eps = inputs
    _, _, u1, u2, stats = output
    mean, var = (stats[0], stats[1]) if training else (running_mean, running_var)
    ctx.save_for_backward(h, u1, u2, conv_weight, bn_weight, bn_bias, mean, var, masks)
    ctx.dilation, ctx.training, ctx.eps = dilation, training, eps
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(u1, u2, stats)


def _backward(ctx, grad_out, grad_mean, _grad_u1, _grad_u2, _grad_stats):
    h, u1, u2, conv_weight, bn_weight, bn_bias, mean, var, masks = ctx.saved_tensors
    if grad_out is None and grad_mean is None:
        return (None,) * 11
    grad_h, grad_w, grad_b, grad_gamma, grad_beta = temporal_block_backward(
        grad_out, grad_mean, h, u1, u2, conv_weight, bn_weight, bn_bias, mean, var, masks, ctx.dilation, ctx.training, ctx.eps
    )
    dtype_of = lambda g, like: g.to(like.dtype)  # noqa: E731 - parameter grads in the parameter's dtype
    return (
        grad_h, dtype_of(grad_w, conv_weight), dtype_of(grad_b, conv_weight), dtype_of(grad_gamma, bn_weight), dtype_of(grad_beta, bn_bias),
        None, None, None, None, None, None,
    )  # fmt: skip


temporal_block.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------


def temporal_block_ref(
    h: Tensor, conv_weight: Tensor, conv_bias: Tensor, bn_weight: Tensor, bn_bias: Tensor,
    running_mean: Tensor, running_var: Tensor, masks: Optional[Tensor], dilation: int, training: bool, eps: float,
    momentum: float = 0.0,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Plain PyTorch, same signature and layout: (out (2, B, T, F), time mean (2, B, F)).

    In training, running_mean / running_var are updated in place with ``momentum`` (as BatchNorm)."""
    outs = []
    for d in range(2):
        x = h[d].transpose(1, 2)  # (B, F, T)
        c = x
        for i in range(2):
            c = F.conv1d(F.pad(c, (dilation, 0)), conv_weight[d, i], conv_bias[d, i], dilation=dilation)
            c = F.batch_norm(c, running_mean[d, i], running_var[d, i], bn_weight[d, i], bn_bias[d, i], training, momentum, eps)
            c = F.relu(c)
            if masks is not None:
                c = c * masks[d, i][:, :, None]
        outs.append((x * torch.sigmoid(c)).transpose(1, 2))
    out = torch.stack(outs)
    return out, out.float().mean(dim=2)


@register_compile_specs
def _compile_specs():
    """Every kernel at the configuration _launch_config gives on a GPU, for bf16 (fp16 launches
    alike) and fp32 activations."""
    block_f = 64
    scalars = {"B": "i32", "T": "i32", "F": "i32"}
    for act, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        precision = "tf32x3" if act == "fp32" else "tf32"
        fwd, bwd = _gpu_launch_config("forward", dtype), _gpu_launch_config("backward", dtype)
        fwd_launch = {"num_warps": fwd["num_warps"], "num_stages": fwd["num_stages"]}
        bwd_launch = {"num_warps": bwd["num_warps"], "num_stages": bwd["num_stages"]}
        sig = {
            "h_ptr": f"*{act}", "out_ptr": f"*{act}", "mean_ptr": "*fp32", "conv_w_ptr": "*fp32", "conv_b_ptr": "*fp32",
            "bn_w_ptr": "*fp32", "bn_b_ptr": "*fp32", "rmean_ptr": "*fp32", "rvar_ptr": "*fp32", **scalars, "dilation": "i32", "eps": "fp32",
            "BLOCK_T": "constexpr", "BLOCK_F": "constexpr", "PRECISION": "constexpr",
        }  # fmt: skip
        yield KernelSpec("temporal_block", f"_temporal_block_inference_kernel[{act}]", _temporal_block_inference_kernel, sig,
                         {"BLOCK_T": fwd["BLOCK_T"], "BLOCK_F": block_f, "PRECISION": precision}, **fwd_launch)  # fmt: skip
        params = {"conv_w_ptr": "*fp32", "conv_b_ptr": "*fp32", "bn_w_ptr": "*fp32", "bn_b_ptr": "*fp32", "mean_ptr": "*fp32", "var_ptr": "*fp32", "mask_ptr": f"*{act}"}
        sig = {"in_ptr": f"*{act}", "u_ptr": f"*{act}", "partial_ptr": "*fp32", **params, "conv_index": "i32", **scalars, "dilation": "i32", "eps": "fp32",
               "NORMALIZE_INPUT": "constexpr", "HAS_MASK": "constexpr", "COMPUTE_STATS": "constexpr", "BLOCK_T": "constexpr", "BLOCK_F": "constexpr", "PRECISION": "constexpr"}  # fmt: skip
        yield KernelSpec("temporal_block", f"_causal_conv_stats_kernel[conv2, train, {act}]", _causal_conv_stats_kernel, sig,
                         {"NORMALIZE_INPUT": True, "HAS_MASK": True, "COMPUTE_STATS": True, "BLOCK_T": fwd["BLOCK_T"], "BLOCK_F": block_f, "PRECISION": precision}, **fwd_launch)  # fmt: skip
        gate_params = {k: v for k, v in params.items() if not k.startswith("conv")}
        sig = {"h_ptr": f"*{act}", "u2_ptr": f"*{act}", "out_ptr": f"*{act}", "out_mean_ptr": "*fp32", **gate_params, **scalars, "eps": "fp32",
               "HAS_MASK": "constexpr", "BLOCK_T": "constexpr", "BLOCK_F": "constexpr"}  # fmt: skip
        yield KernelSpec("temporal_block", f"_temporal_block_gate_kernel[{act}]", _temporal_block_gate_kernel, sig,
                         {"HAS_MASK": True, "BLOCK_T": fwd["BLOCK_T"], "BLOCK_F": block_f}, **fwd_launch)  # fmt: skip
        flags = {"HAS_GRAD_OUT": True, "HAS_GRAD_MEAN": True, "HAS_MASK": True}
        sig = {"grad_out_ptr": f"*{act}", "grad_mean_ptr": "*fp32", "h_ptr": f"*{act}", "u2_ptr": f"*{act}", "sums_ptr": "*fp32", **gate_params,
               **scalars, "eps": "fp32", **{k: "constexpr" for k in flags}, "BLOCK_T": "constexpr", "BLOCK_F": "constexpr"}  # fmt: skip
        yield KernelSpec("temporal_block", f"_temporal_block_gate_backward_kernel[{act}]", _temporal_block_gate_backward_kernel, sig,
                         {**flags, "BLOCK_T": bwd["BLOCK_T"], "BLOCK_F": block_f}, **bwd_launch)  # fmt: skip
        bwd_params = {"conv_w_ptr": "*fp32", **gate_params}
        tail = {**scalars, "dilation": "i32", "eps": "fp32", "TRAINING": "constexpr", **{k: "constexpr" for k in flags},
                "BLOCK_T": "constexpr", "BLOCK_F": "constexpr", "PRECISION": "constexpr"}  # fmt: skip
        consts = {"TRAINING": True, **flags, "BLOCK_T": bwd["BLOCK_T"], "BLOCK_F": block_f, "PRECISION": precision}
        sig = {"grad_out_ptr": f"*{act}", "grad_mean_ptr": "*fp32", "h_ptr": f"*{act}", "u1_ptr": f"*{act}", "u2_ptr": f"*{act}", "grad_n1_ptr": "*fp32",
               "sums1_ptr": "*fp32", "sums2_ptr": "*fp32", "w_partial_ptr": "*fp32", "b_partial_ptr": "*fp32", **bwd_params, **tail}  # fmt: skip
        yield KernelSpec("temporal_block", f"_temporal_block_conv2_backward_kernel[{act}]", _temporal_block_conv2_backward_kernel, sig, consts, **bwd_launch)
        sig = {"grad_out_ptr": f"*{act}", "grad_mean_ptr": "*fp32", "h_ptr": f"*{act}", "u1_ptr": f"*{act}", "u2_ptr": f"*{act}", "grad_n1_ptr": "*fp32",
               "sums1_ptr": "*fp32", "grad_h_ptr": f"*{act}", "w_partial_ptr": "*fp32", "b_partial_ptr": "*fp32", **bwd_params, **tail}  # fmt: skip
        yield KernelSpec("temporal_block", f"_temporal_block_conv1_backward_kernel[{act}]", _temporal_block_conv1_backward_kernel, sig, consts, **bwd_launch)
