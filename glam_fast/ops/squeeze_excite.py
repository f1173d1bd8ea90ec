"""MS-SENet multi-scale squeeze-and-excitation front end, both time directions in one launch.

Per direction, on the MFCC x (T, M) seen as a one-channel image (direction 1 reads x time-reversed
by indexing, no copy):

    y_k = ReLU(BN_k(conv_k(x))) * keep_k    conv_k: 11x1, 1x9, 3x3 'same', 1 -> F channels
    y   = cat(y_1, y_2, y_3 along the MFCC axis)                 (F, T, 3M)
    s   = sigmoid(E ReLU(S mean_{T,3M}(y) + b_S) + b_E)          (F,) squeeze and excitation
    z   = ReLU(sum_c w_c s_c y_c + b_c)                          (T, 3M) 1x1 collapse
    h0  = P [z, x] + b_P                                         (T, F) skip concat + 1x1 projection

The activation y (F x T x 3M per sample, the model's largest) is never written to memory: it is
recomputed from x, which is tiny, in each pass. The three convolutions are one GEMM per tile of
(time, column) positions: K = 32 = 11 + 9 + 9 taps + 3 branch-indicator rows carrying the biases,
where each position gathers only its own branch's taps (zeros elsewhere). BatchNorm, the conv bias
and the dropout scale fold into that GEMM's weights per (sample, direction), since
ReLU(n) * keep == ReLU(n * keep) for keep >= 0.

Passes (each one program per (sample, direction) over the whole sequence):
- training only: per-branch BatchNorm summaries of the conv outputs, combined by ``batch_norm_stats``;
- forward: squeeze (sum of y), the excitation in-program, then collapse + projection -> h0;
- backward: (1) projection, collapse and excitation grads and d(squeeze); (2) per-branch BatchNorm
  sums; (3) conv tap / bias grads, and, only when x needs a grad, the per-position tap grads that
  (4) gathers into dx.
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
from glam_fast.ops.temporal_block import dot_precision, pipeline_stages
from glam_fast.ops.utils import check_same_device, empty_output, interpreting

TIME_TAPS, FREQ_TAPS, SQUARE_TAPS = 11, 9, 9
N_TAPS = TIME_TAPS + FREQ_TAPS + SQUARE_TAPS  # 29 conv taps; rows 29..31 of the GEMM carry the biases
GEMM_K = 32

# ----------------------------------------------------------------------------------------------
# Triton helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _tap_geometry():
    """Per GEMM row k (32): owning branch, time / MFCC offset of the tap, and whether it is a bias row."""
    k = tl.arange(0, 32)
    branch = tl.where(k < 11, 0, tl.where(k < 20, 1, tl.where(k < 29, 2, k - 29)))
    dt = tl.where(k < 11, k - 5, tl.where(k < 20, 0, (k - 20) // 3 - 1))
    dm = tl.where(k < 11, 0, tl.where(k < 20, k - 15, (k - 20) % 3 - 1))
    return k, branch, dt, dm, k >= 29


@triton.jit
def _positions(t0, j0, M, BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr):
    """Positions of a tile, p = r * BLOCK_J + c: time t0 + r, column j0 + c of the (T, 3M) map."""
    p = tl.arange(0, BLOCK_T * BLOCK_J)
    t = t0 + p // BLOCK_J
    j = j0 + p % BLOCK_J
    return t, j, j // M, j % M


@triton.jit
def _patches(
    x_seq, reverse, t0, j0, T, M, tap_branch, dt, dm, is_bias, BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr,
):  # fmt: skip
    """[P, 32] GEMM operand of the tile at (t0, j0), position p = r * BLOCK_J + c: its branch's taps
    of x (zero padded), a 1 in its branch's bias row, zeros elsewhere (all zero outside the map).
    Direction 1 (reverse) reads x time-reversed. The row part depends only on (time, tap) and the
    column part only on (column, tap), so both are built small and combined by broadcasting.
    The tap geometry comes from :func:`_tap_geometry` (computed once per program)."""
    t = t0 + tl.arange(0, BLOCK_T)
    j = j0 + tl.arange(0, BLOCK_J)
    src_t = t[:, None] + dt[None, :]  # [BLOCK_T, 32]
    row_ok = (t < T)[:, None] & (src_t >= 0) & (src_t < T)
    row = tl.where(reverse, T - 1 - src_t, src_t)
    own = ((j // M)[:, None] == tap_branch[None, :]) & (j < 3 * M)[:, None]  # [BLOCK_J, 32]
    src_m = (j % M)[:, None] + dm[None, :]
    col_ok = own & ~is_bias[None, :] & (src_m >= 0) & (src_m < M)
    vals = tl.load(x_seq + row[:, None, :] * M + src_m[None, :, :], mask=row_ok[:, None, :] & col_ok[None, :, :], other=0.0)
    bias = (t < T)[:, None, None] & (own & is_bias[None, :])[None, :, :]
    vals = tl.where(bias, 1.0, vals)
    return tl.reshape(vals, [BLOCK_T * BLOCK_J, 32]).to(x_seq.dtype.element_ty)


@triton.jit
def _select_branch(branch, v0, v1, v2):
    """[R, C]: row r takes v_{branch[r]} ([C] vectors)."""
    sel = branch[:, None]
    return tl.where(sel == 0, v0[None, :], tl.where(sel == 1, v1[None, :], v2[None, :]))


@triton.jit
def _load_vec(ptr, cols, F):
    return tl.load(ptr + cols, mask=cols < F, other=0.0).to(tl.float32)


@triton.jit
def _branch_weights(time_w_ptr, freq_w_ptr, square_w_ptr, branch_b_ptr, d, F, cols):
    """[32, C] fp32: the three convs' taps (rows 0..28) and biases (rows 29..31), channel c in column c."""
    k, tap_branch, dt, dm, is_bias = _tap_geometry()
    c = cols[None, :]
    cm = c < F
    kk = k[:, None]
    w = tl.load(time_w_ptr + (d * F + c) * 11 + kk, mask=cm & (kk < 11), other=0.0)
    w += tl.load(freq_w_ptr + (d * F + c) * 9 + (kk - 11), mask=cm & (kk >= 11) & (kk < 20), other=0.0)
    w += tl.load(square_w_ptr + (d * F + c) * 9 + (kk - 20), mask=cm & (kk >= 20) & (kk < 29), other=0.0)
    w += tl.load(branch_b_ptr + (d * 3 + (kk - 29)) * F + c, mask=cm & (kk >= 29), other=0.0)
    return w.to(tl.float32)


@triton.jit
def _branch_bn(bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr, d, b, B, branch, cols, F, eps, HAS_MASK: tl.constexpr):
    """BatchNorm of one branch as (gamma * invstd, beta - mean * gamma * invstd, mean, invstd, keep)."""
    p = (d * 3 + branch) * F
    invstd = 1.0 / tl.sqrt(_load_vec(var_ptr + p, cols, F) + eps)
    mean = _load_vec(mean_ptr + p, cols, F)
    gamma_invstd = _load_vec(bn_w_ptr + p, cols, F) * invstd
    shift = _load_vec(bn_b_ptr + p, cols, F) - mean * gamma_invstd
    if HAS_MASK:
        keep = _load_vec(mask_ptr + ((d * 3 + branch) * B + b) * F, cols, F)
    else:
        keep = tl.full([cols.shape[0]], 1.0, dtype=tl.float32)
    return gamma_invstd, shift, mean, invstd, keep


@triton.jit
def _excitation(squeeze, sq_w_ptr, sq_b_ptr, ex_w_ptr, ex_b_ptr, d, F, cols):
    """e1 = S squeeze + b_S, h1 = ReLU(e1), s = sigmoid(E h1 + b_E) for one direction: [C] each."""
    o = cols[:, None]
    i = cols[None, :]
    wmask = (o < F) & (i < F)
    sq_w = tl.load(sq_w_ptr + d * F * F + o * F + i, mask=wmask, other=0.0).to(tl.float32)
    e1 = tl.sum(sq_w * squeeze[None, :], axis=1) + _load_vec(sq_b_ptr + d * F, cols, F)
    h1 = tl.maximum(e1, 0.0)
    ex_w = tl.load(ex_w_ptr + d * F * F + o * F + i, mask=wmask, other=0.0).to(tl.float32)
    e2 = tl.sum(ex_w * h1[None, :], axis=1) + _load_vec(ex_b_ptr + d * F, cols, F)
    return e1, h1, tl.sigmoid(e2)


@triton.jit
def _front_setup(
    time_w_ptr, freq_w_ptr, square_w_ptr, branch_b_ptr, bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr,
    d, b, B, F, eps, cols, HAS_MASK: tl.constexpr,
):  # fmt: skip
    """Weights of the folded GEMM and of xhat = (u - mean) * invstd, plus the per-branch BN vectors.

    n * keep = patches @ w_fold (n = BN output), xhat = patches @ w_xhat, u = patches @ w_conv."""
    k, tap_branch, dt, dm, is_bias = _tap_geometry()
    w_conv = _branch_weights(time_w_ptr, freq_w_ptr, square_w_ptr, branch_b_ptr, d, F, cols)
    gi0, sh0, mu0, inv0, keep0 = _branch_bn(bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr, d, b, B, 0, cols, F, eps, HAS_MASK)
    gi1, sh1, mu1, inv1, keep1 = _branch_bn(bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr, d, b, B, 1, cols, F, eps, HAS_MASK)
    gi2, sh2, mu2, inv2, keep2 = _branch_bn(bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr, d, b, B, 2, cols, F, eps, HAS_MASK)
    bias_row = is_bias[:, None]
    w_fold = (w_conv * _select_branch(tap_branch, gi0, gi1, gi2) + tl.where(bias_row, _select_branch(tap_branch, sh0, sh1, sh2), 0.0))
    w_fold = w_fold * _select_branch(tap_branch, keep0, keep1, keep2)
    w_xhat = w_conv * _select_branch(tap_branch, inv0, inv1, inv2) - tl.where(bias_row, _select_branch(tap_branch, mu0 * inv0, mu1 * inv1, mu2 * inv2), 0.0)
    return w_conv, w_fold, w_xhat, gi0, gi1, gi2, keep0, keep1, keep2


@triton.jit
def _collapse_grad(
    z, rows, j0, grad_h_seq, proj_w_ptr, d, T, F, J, cols,
    BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """dz [P] = grad of the collapse pre-activation z at the tile's positions, from the grad of h0
    through the projection (zero outside the map: those rows / columns load as zero); also
    returns the h0 grad rows [BLOCK_T, C] fp32."""
    dot_t = grad_h_seq.dtype.element_ty
    jc = j0 + tl.arange(0, BLOCK_J)
    g = tl.load(grad_h_seq + rows[:, None] * F + cols[None, :], mask=(rows < T)[:, None] & (cols < F)[None, :], other=0.0)
    w = tl.load(proj_w_ptr + (d * F + cols[:, None]) * (J + J // 3) + jc[None, :], mask=(cols < F)[:, None] & (jc < J)[None, :], other=0.0)
    dcol = tl.dot(g, w.to(dot_t), input_precision=PRECISION)  # [BLOCK_T, BLOCK_J]
    dz = tl.where(z > 0.0, tl.reshape(dcol, [BLOCK_T * BLOCK_J]), 0.0)
    return dz, g.to(tl.float32)


# ----------------------------------------------------------------------------------------------
# Forward kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _squeeze_excite_stats_kernel(
    x_ptr, partial_ptr, time_w_ptr, freq_w_ptr, square_w_ptr, branch_b_ptr,
    B, T, M, F,
    BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_F: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Training: per-branch [mean, M2] of the conv outputs over this program's sequence."""
    b = tl.program_id(0)
    d = tl.program_id(1)
    dot_t = x_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK_F)
    w_conv = _branch_weights(time_w_ptr, freq_w_ptr, square_w_ptr, branch_b_ptr, d, F, cols).to(dot_t)
    _, tap_branch, dt, dm, is_bias = _tap_geometry()
    x_seq = x_ptr + b * T * M
    zero = tl.zeros([BLOCK_F], dtype=tl.float32)
    n0, mean0, m20 = zero, zero, zero
    n1, mean1, m21 = zero, zero, zero
    n2, mean2, m22 = zero, zero, zero
    for t0 in range(0, T, BLOCK_T):
        for j0 in range(0, 3 * M, BLOCK_J):
            t, j, branch, m = _positions(t0, j0, M, BLOCK_T, BLOCK_J)
            valid = (t < T) & (j < 3 * M)
            u = tl.dot(_patches(x_seq, d == 1, t0, j0, T, M, tap_branch, dt, dm, is_bias, BLOCK_T, BLOCK_J), w_conv, input_precision=PRECISION)
            c, mu, m2 = _tile_moments(u, valid & (branch == 0))
            n0, mean0, m20 = _chan_merge(n0, mean0, m20, c, mu, m2)
            c, mu, m2 = _tile_moments(u, valid & (branch == 1))
            n1, mean1, m21 = _chan_merge(n1, mean1, m21, c, mu, m2)
            c, mu, m2 = _tile_moments(u, valid & (branch == 2))
            n2, mean2, m22 = _chan_merge(n2, mean2, m22, c, mu, m2)
    row = 2 * BLOCK_F
    out = partial_ptr + ((d * 3) * B + b) * row + cols
    tl.store(out, mean0)
    tl.store(out + BLOCK_F, m20)
    out += B * row
    tl.store(out, mean1)
    tl.store(out + BLOCK_F, m21)
    out += B * row
    tl.store(out, mean2)
    tl.store(out + BLOCK_F, m22)


@triton.jit
def _squeeze_excite_forward_kernel(
    x_ptr, h_ptr, squeeze_ptr,
    time_w_ptr, freq_w_ptr, square_w_ptr, branch_b_ptr, bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr,
    sq_w_ptr, sq_b_ptr, ex_w_ptr, ex_b_ptr, col_w_ptr, col_b_ptr, proj_w_ptr, proj_b_ptr,
    B, T, M, F, eps,
    HAS_MASK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """h0 (2, B, T, F) and the squeeze (2, B, F) fp32 for one (sample, direction)."""
    b = tl.program_id(0)
    d = tl.program_id(1)
    dot_t = x_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK_F)
    J = 3 * M
    _, w_fold, _, _, _, _, _, _, _ = _front_setup(
        time_w_ptr, freq_w_ptr, square_w_ptr, branch_b_ptr, bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr, d, b, B, F, eps, cols, HAS_MASK
    )
    w_fold = w_fold.to(dot_t)
    _, tap_branch, dt, dm, is_bias = _tap_geometry()
    x_seq = x_ptr + b * T * M
    # pass 1: the squeeze (y is zero at positions outside the map: their patches are all zero)
    total = tl.zeros([BLOCK_F], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        for j0 in range(0, J, BLOCK_J):
            y = tl.maximum(tl.dot(_patches(x_seq, d == 1, t0, j0, T, M, tap_branch, dt, dm, is_bias, BLOCK_T, BLOCK_J), w_fold, input_precision=PRECISION), 0.0)
            total += tl.sum(y, axis=0)
    squeeze = total / (T * J)
    tl.store(squeeze_ptr + (d * B + b) * F + cols, squeeze, mask=cols < F)
    _, _, scale = _excitation(squeeze, sq_w_ptr, sq_b_ptr, ex_w_ptr, ex_b_ptr, d, F, cols)
    collapse_w = _load_vec(col_w_ptr + d * F, cols, F) * scale
    collapse_b = tl.load(col_b_ptr + d).to(tl.float32)
    # pass 2: collapse, skip concat and projection, a row tile at a time
    mm = tl.arange(0, BLOCK_M)
    proj_x = tl.load(proj_w_ptr + (d * F + cols[None, :]) * (J + M) + J + mm[:, None], mask=(mm < M)[:, None] & (cols < F)[None, :], other=0.0).to(dot_t)
    proj_b = _load_vec(proj_b_ptr + d * F, cols, F)
    h_seq = h_ptr + (d * B + b) * T * F
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        x_rows = tl.where(d == 1, T - 1 - rows, rows)
        x_tile = tl.load(x_seq + x_rows[:, None] * M + mm[None, :], mask=(rows < T)[:, None] & (mm < M)[None, :], other=0.0)
        acc = tl.dot(x_tile, proj_x, input_precision=PRECISION) + proj_b[None, :]
        for j0 in range(0, J, BLOCK_J):
            y = tl.maximum(tl.dot(_patches(x_seq, d == 1, t0, j0, T, M, tap_branch, dt, dm, is_bias, BLOCK_T, BLOCK_J), w_fold, input_precision=PRECISION), 0.0)
            z = tl.sum(y * collapse_w[None, :], axis=1) + collapse_b
            collapsed = tl.reshape(tl.maximum(z, 0.0), [BLOCK_T, BLOCK_J]).to(dot_t)
            jc = j0 + tl.arange(0, BLOCK_J)
            proj_c = tl.load(proj_w_ptr + (d * F + cols[None, :]) * (J + M) + jc[:, None], mask=(jc < J)[:, None] & (cols < F)[None, :], other=0.0)
            acc = tl.dot(collapsed, proj_c.to(dot_t), acc, input_precision=PRECISION)
        tl.store(h_seq + rows[:, None] * F + cols[None, :], acc.to(dot_t), mask=(rows < T)[:, None] & (cols < F)[None, :])


# ----------------------------------------------------------------------------------------------
# Backward kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _squeeze_excite_backward_head_kernel(
    x_ptr, grad_h_ptr, squeeze_ptr, grad_squeeze_ptr, proj_partial_ptr, collapse_partial_ptr, excite_partial_ptr,
    time_w_ptr, freq_w_ptr, square_w_ptr, branch_b_ptr, bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr,
    sq_w_ptr, sq_b_ptr, ex_w_ptr, ex_b_ptr, col_w_ptr, col_b_ptr, proj_w_ptr,
    B, T, M, F, eps,
    HAS_MASK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """Grads of the projection, collapse, squeeze and excitation weights (per-program partials:
    weight matrices with the bias grad as an extra last column) and of the squeeze itself."""
    b = tl.program_id(0)
    d = tl.program_id(1)
    dot_t = x_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK_F)
    J = 3 * M
    _, w_fold, _, _, _, _, _, _, _ = _front_setup(
        time_w_ptr, freq_w_ptr, square_w_ptr, branch_b_ptr, bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr, d, b, B, F, eps, cols, HAS_MASK
    )
    w_fold = w_fold.to(dot_t)
    _, tap_branch, dt, dm, is_bias = _tap_geometry()
    x_seq = x_ptr + b * T * M
    grad_h_seq = grad_h_ptr + (d * B + b) * T * F
    squeeze = _load_vec(squeeze_ptr + (d * B + b) * F, cols, F)
    e1, h1, scale = _excitation(squeeze, sq_w_ptr, sq_b_ptr, ex_w_ptr, ex_b_ptr, d, F, cols)
    col_w = _load_vec(col_w_ptr + d * F, cols, F)
    collapse_w = col_w * scale
    collapse_b = tl.load(col_b_ptr + d).to(tl.float32)
    proj_row = proj_partial_ptr + (d * B + b) * F * (J + M + 1)
    # projection weights on the raw-MFCC half, and the projection bias
    mm = tl.arange(0, BLOCK_M)
    grad_px = tl.zeros([BLOCK_F, BLOCK_M], dtype=tl.float32)
    grad_pb = tl.zeros([BLOCK_F], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        x_rows = tl.where(d == 1, T - 1 - rows, rows)
        x_tile = tl.load(x_seq + x_rows[:, None] * M + mm[None, :], mask=(rows < T)[:, None] & (mm < M)[None, :], other=0.0)
        g = tl.load(grad_h_seq + rows[:, None] * F + cols[None, :], mask=(rows < T)[:, None] & (cols < F)[None, :], other=0.0)
        grad_px = tl.dot(tl.trans(g.to(dot_t)), x_tile, grad_px, input_precision=PRECISION)
        grad_pb += tl.sum(g.to(tl.float32), axis=0)
    pmask = (cols < F)[:, None] & (mm < M)[None, :]
    tl.store(proj_row + cols[:, None] * (J + M + 1) + J + mm[None, :], grad_px, mask=pmask)
    tl.store(proj_row + cols * (J + M + 1) + J + M, grad_pb, mask=cols < F)
    # collapse-side projection weights, column chunk by column chunk; sum over positions of dz * y
    y_dz = tl.zeros([BLOCK_F], dtype=tl.float32)
    grad_cb = tl.zeros([BLOCK_T * BLOCK_J], dtype=tl.float32)
    for j0 in range(0, J, BLOCK_J):
        grad_pc = tl.zeros([BLOCK_F, BLOCK_J], dtype=tl.float32)
        for t0 in range(0, T, BLOCK_T):
            rows = t0 + tl.arange(0, BLOCK_T)
            t, j, branch, m = _positions(t0, j0, M, BLOCK_T, BLOCK_J)
            valid = (t < T) & (j < J)
            y = tl.maximum(tl.dot(_patches(x_seq, d == 1, t0, j0, T, M, tap_branch, dt, dm, is_bias, BLOCK_T, BLOCK_J), w_fold, input_precision=PRECISION), 0.0)
            z = tl.sum(y * collapse_w[None, :], axis=1) + collapse_b
            dz, g = _collapse_grad(z, rows, j0, grad_h_seq, proj_w_ptr, d, T, F, J, cols, BLOCK_T, BLOCK_J, PRECISION)
            y_dz += tl.sum(dz[:, None] * y, axis=0)
            grad_cb += dz
            collapsed = tl.reshape(tl.where(valid, tl.maximum(z, 0.0), 0.0), [BLOCK_T, BLOCK_J]).to(dot_t)
            grad_pc = tl.dot(tl.trans(g.to(dot_t)), collapsed, grad_pc, input_precision=PRECISION)
        jc = j0 + tl.arange(0, BLOCK_J)
        tl.store(proj_row + cols[:, None] * (J + M + 1) + jc[None, :], grad_pc, mask=(cols < F)[:, None] & (jc < J)[None, :])
    collapse_row = collapse_partial_ptr + (d * B + b) * (F + 1)
    tl.store(collapse_row + cols, scale * y_dz, mask=cols < F)
    tl.store(collapse_row + F, tl.sum(grad_cb, axis=0))
    # excitation backward: s = sigmoid(e2), e2 = E h1 + b_E, h1 = ReLU(e1), e1 = S squeeze + b_S
    o = cols[:, None]
    i = cols[None, :]
    wmask = (o < F) & (i < F)
    de2 = col_w * y_dz * scale * (1.0 - scale)
    ex_row = excite_partial_ptr + ((d * B + b) * 2 + 1) * F * (F + 1)
    tl.store(ex_row + o * (F + 1) + i, de2[:, None] * h1[None, :], mask=wmask)
    tl.store(ex_row + cols * (F + 1) + F, de2, mask=cols < F)
    ex_w = tl.load(ex_w_ptr + d * F * F + o * F + i, mask=wmask, other=0.0).to(tl.float32)
    de1 = tl.where(e1 > 0.0, tl.sum(ex_w * de2[:, None], axis=0), 0.0)
    sq_row = excite_partial_ptr + ((d * B + b) * 2) * F * (F + 1)
    tl.store(sq_row + o * (F + 1) + i, de1[:, None] * squeeze[None, :], mask=wmask)
    tl.store(sq_row + cols * (F + 1) + F, de1, mask=cols < F)
    sq_w = tl.load(sq_w_ptr + d * F * F + o * F + i, mask=wmask, other=0.0).to(tl.float32)
    tl.store(grad_squeeze_ptr + (d * B + b) * F + cols, tl.sum(sq_w * de1[:, None], axis=0), mask=cols < F)


@triton.jit
def _grad_bn_output(
    y_pre, z, scale, rows, j0, grad_h_seq, proj_w_ptr, collapse_w, grad_squeeze, inv_count,
    d, T, F, J, cols, BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """scale * dn [P, C]: dn the grad of the BatchNorm outputs at the tile's positions, through the
    collapse (z) and the squeeze (a mean over all positions); y_pre = n * keep; scale [P, C] a
    per-position factor (keep, or keep * gamma * invstd). Zero outside the map, where the
    patches, hence y_pre, are zero."""
    dz, _ = _collapse_grad(z, rows, j0, grad_h_seq, proj_w_ptr, d, T, F, J, cols, BLOCK_T, BLOCK_J, PRECISION)
    dy = dz[:, None] * collapse_w[None, :] + grad_squeeze[None, :] * inv_count
    return tl.where(y_pre > 0.0, dy * scale, 0.0)


@triton.jit
def _bias_rows(is_bias, tap_branch, v0, v1, v2):
    """[32, C]: per-branch vectors v_b in the GEMM's bias rows, zeros elsewhere. The patches carry
    a one-hot of the position's branch in those rows, so patches @ this selects v_branch per
    position (and zero outside the map) on the tensor cores."""
    return tl.where(is_bias[:, None], _select_branch(tap_branch, v0, v1, v2), 0.0)


@triton.jit
def _squeeze_excite_backward_bn_kernel(
    x_ptr, grad_h_ptr, squeeze_ptr, grad_squeeze_ptr, sums_ptr,
    time_w_ptr, freq_w_ptr, square_w_ptr, branch_b_ptr, bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr,
    sq_w_ptr, sq_b_ptr, ex_w_ptr, ex_b_ptr, col_w_ptr, col_b_ptr, proj_w_ptr,
    B, T, M, F, eps,
    HAS_MASK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_F: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Per program and branch: sums of dn and dn * xhat (the BatchNorm beta and gamma grads).
    Both the per-branch dropout scale and the per-branch sums go through the GEMM's bias rows
    (the one-hot of each position's branch): patches @ keep rows, patches^T @ dn."""
    b = tl.program_id(0)
    d = tl.program_id(1)
    dot_t = x_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK_F)
    J = 3 * M
    _, w_fold, w_xhat, _, _, _, keep0, keep1, keep2 = _front_setup(
        time_w_ptr, freq_w_ptr, square_w_ptr, branch_b_ptr, bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr, d, b, B, F, eps, cols, HAS_MASK
    )
    k, tap_branch, dt, dm, is_bias = _tap_geometry()
    w_fold = w_fold.to(dot_t)
    w_xhat = w_xhat.to(dot_t)
    w_keep = _bias_rows(is_bias, tap_branch, keep0, keep1, keep2).to(dot_t)
    x_seq = x_ptr + b * T * M
    grad_h_seq = grad_h_ptr + (d * B + b) * T * F
    squeeze = _load_vec(squeeze_ptr + (d * B + b) * F, cols, F)
    _, _, scale = _excitation(squeeze, sq_w_ptr, sq_b_ptr, ex_w_ptr, ex_b_ptr, d, F, cols)
    collapse_w = _load_vec(col_w_ptr + d * F, cols, F) * scale
    collapse_b = tl.load(col_b_ptr + d).to(tl.float32)
    grad_squeeze = _load_vec(grad_squeeze_ptr + (d * B + b) * F, cols, F)
    inv_count = 1.0 / (T * J)
    sum_dn = tl.zeros([32, BLOCK_F], dtype=tl.float32)
    sum_dn_xhat = tl.zeros([32, BLOCK_F], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        for j0 in range(0, J, BLOCK_J):
            patches = _patches(x_seq, d == 1, t0, j0, T, M, tap_branch, dt, dm, is_bias, BLOCK_T, BLOCK_J)
            y_pre = tl.dot(patches, w_fold, input_precision=PRECISION)
            z = tl.sum(tl.maximum(y_pre, 0.0) * collapse_w[None, :], axis=1) + collapse_b
            keep = tl.dot(patches, w_keep, input_precision=PRECISION)
            dn = _grad_bn_output(y_pre, z, keep, rows, j0, grad_h_seq, proj_w_ptr, collapse_w, grad_squeeze, inv_count,
                                 d, T, F, J, cols, BLOCK_T, BLOCK_J, PRECISION)  # fmt: skip
            xhat = tl.dot(patches, w_xhat, input_precision=PRECISION)
            patches_t = tl.trans(patches)
            sum_dn = tl.dot(patches_t, dn.to(dot_t), sum_dn, input_precision=PRECISION)
            sum_dn_xhat = tl.dot(patches_t, (dn * xhat).to(dot_t), sum_dn_xhat, input_precision=PRECISION)
    # (2, B, 3, 2, BLOCK_F): [sum dn, sum dn * xhat] per branch, from bias rows 29..31
    out = sums_ptr + (d * B + b) * 6 * BLOCK_F + (k[:, None] - 29) * 2 * BLOCK_F + cols[None, :]
    tl.store(out, sum_dn, mask=is_bias[:, None])
    tl.store(out + BLOCK_F, sum_dn_xhat, mask=is_bias[:, None])


@triton.jit
def _squeeze_excite_backward_conv_kernel(
    x_ptr, grad_h_ptr, squeeze_ptr, grad_squeeze_ptr, sums_ptr, conv_partial_ptr, tap_grad_ptr,
    time_w_ptr, freq_w_ptr, square_w_ptr, branch_b_ptr, bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr,
    sq_w_ptr, sq_b_ptr, ex_w_ptr, ex_b_ptr, col_w_ptr, col_b_ptr, proj_w_ptr,
    B, T, M, F, eps,
    TRAINING: tl.constexpr, HAS_MASK: tl.constexpr, NEED_INPUT_GRAD: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_F: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """du (grad of the conv outputs) through BatchNorm; per-program grads of the 32 GEMM rows (taps
    and biases) = patches^T du, and with NEED_INPUT_GRAD the per-position tap grads
    sum_c W[k, c] du[p, c] (2, B, T, M, 32) fp32, position (t, b*M + m) writing its branch's taps
    at [t, m]."""
    b = tl.program_id(0)
    d = tl.program_id(1)
    dot_t = x_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK_F)
    J = 3 * M
    w_conv, w_fold, w_xhat, gi0, gi1, gi2, keep0, keep1, keep2 = _front_setup(
        time_w_ptr, freq_w_ptr, square_w_ptr, branch_b_ptr, bn_w_ptr, bn_b_ptr, mean_ptr, var_ptr, mask_ptr, d, b, B, F, eps, cols, HAS_MASK
    )
    w_conv_t = tl.trans(w_conv.to(dot_t))
    k, tap_branch, dt, dm, is_bias = _tap_geometry()
    x_seq = x_ptr + b * T * M
    grad_h_seq = grad_h_ptr + (d * B + b) * T * F
    squeeze = _load_vec(squeeze_ptr + (d * B + b) * F, cols, F)
    _, _, scale = _excitation(squeeze, sq_w_ptr, sq_b_ptr, ex_w_ptr, ex_b_ptr, d, F, cols)
    collapse_w = _load_vec(col_w_ptr + d * F, cols, F) * scale
    collapse_b = tl.load(col_b_ptr + d).to(tl.float32)
    grad_squeeze = _load_vec(grad_squeeze_ptr + (d * B + b) * F, cols, F)
    inv_count = 1.0 / (T * J)
    # BatchNorm training backward: du = g*invstd * (dn - mean(dn) - xhat * mean(dn * xhat)); the
    # two mean terms are per branch and linear in the patches: one GEMM with w_bc
    inv_n = 1.0 / (B * T * M)
    sums = sums_ptr + d * 6 * BLOCK_F
    mdn0 = gi0 * _load_vec(sums, cols, F) * inv_n
    mdx0 = gi0 * _load_vec(sums + BLOCK_F, cols, F) * inv_n
    mdn1 = gi1 * _load_vec(sums + 2 * BLOCK_F, cols, F) * inv_n
    mdx1 = gi1 * _load_vec(sums + 3 * BLOCK_F, cols, F) * inv_n
    mdn2 = gi2 * _load_vec(sums + 4 * BLOCK_F, cols, F) * inv_n
    mdx2 = gi2 * _load_vec(sums + 5 * BLOCK_F, cols, F) * inv_n
    w_bc = (w_xhat * _select_branch(tap_branch, mdx0, mdx1, mdx2) + _bias_rows(is_bias, tap_branch, mdn0, mdn1, mdn2)).to(dot_t)
    w_fold = w_fold.to(dot_t)
    grad_rows = tl.zeros([32, BLOCK_F], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        for j0 in range(0, J, BLOCK_J):
            t, j, branch, m = _positions(t0, j0, M, BLOCK_T, BLOCK_J)
            patches = _patches(x_seq, d == 1, t0, j0, T, M, tap_branch, dt, dm, is_bias, BLOCK_T, BLOCK_J)
            y_pre = tl.dot(patches, w_fold, input_precision=PRECISION)
            z = tl.sum(tl.maximum(y_pre, 0.0) * collapse_w[None, :], axis=1) + collapse_b
            gain = _select_branch(branch, gi0 * keep0, gi1 * keep1, gi2 * keep2)  # exact fp32: the main term
            du = _grad_bn_output(y_pre, z, gain, rows, j0, grad_h_seq, proj_w_ptr, collapse_w, grad_squeeze, inv_count,
                                 d, T, F, J, cols, BLOCK_T, BLOCK_J, PRECISION)  # fmt: skip
            if TRAINING:
                du -= tl.dot(patches, w_bc, input_precision=PRECISION)  # zero outside the map too
            du = du.to(dot_t)
            grad_rows = tl.dot(tl.trans(patches), du, grad_rows, input_precision=PRECISION)
            if NEED_INPUT_GRAD:
                taps = tl.dot(du, w_conv_t, input_precision=PRECISION)  # [P, 32]
                own = (((t < T) & (j < J))[:, None] & (branch[:, None] == tap_branch[None, :])) & ~is_bias[None, :]
                row = (d * B + b).to(tl.int64) * T + t[:, None]  # the buffer outgrows int32 at large B * T
                dst = tap_grad_ptr + (row * M + m[:, None]) * 32 + k[None, :]
                tl.store(dst, taps, mask=own)
    c = cols[None, :]
    tl.store(conv_partial_ptr + (d * B + b) * 32 * F + k[:, None] * F + c, grad_rows, mask=c < F)


@triton.jit
def _squeeze_excite_input_grad_kernel(
    tap_grad_ptr, grad_h_ptr, proj_w_ptr, grad_x_ptr,
    B, T, M, F,
    BLOCK_T: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """dx (B, T, M): both directions' conv-tap grads gathered back onto x, plus the skip path."""
    pid_t = tl.program_id(0)
    b = tl.program_id(1)
    dot_t = grad_h_ptr.dtype.element_ty
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    mm = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_F)
    J = 3 * M
    acc = tl.zeros([BLOCK_T, BLOCK_M], dtype=tl.float32)
    for d in tl.static_range(2):
        own_rows = rows if d == 0 else T - 1 - rows  # this row in the direction's own time order
        base = tap_grad_ptr + (d * B + b).to(tl.int64) * T * M * 32  # outgrows int32 at large B * T
        for k in tl.static_range(29):
            if k < 11:
                dt = k - 5
                dm = 0
            elif k < 20:
                dt = 0
                dm = k - 15
            else:
                dt = (k - 20) // 3 - 1
                dm = (k - 20) % 3 - 1
            src_t = own_rows - dt
            src_m = mm - dm
            mask = ((rows < T) & (src_t >= 0) & (src_t < T))[:, None] & ((src_m >= 0) & (src_m < M))[None, :]
            acc += tl.load(base + (src_t[:, None] * M + src_m[None, :]) * 32 + k, mask=mask, other=0.0)
        g = tl.load(grad_h_ptr + ((d * B + b) * T + own_rows[:, None]) * F + cols[None, :], mask=(rows < T)[:, None] & (cols < F)[None, :], other=0.0)
        w = tl.load(proj_w_ptr + (d * F + cols[:, None]) * (J + M) + J + mm[None, :], mask=(cols < F)[:, None] & (mm < M)[None, :], other=0.0)
        acc = tl.dot(g, w.to(dot_t), acc, input_precision=PRECISION)
    tl.store(grad_x_ptr + (b * T + rows[:, None]) * M + mm[None, :], acc.to(grad_x_ptr.dtype.element_ty), mask=(rows < T)[:, None] & (mm < M)[None, :])


# ----------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------

# GPU: 16 rows x 16 columns = 256 positions per tile (the smallest tile tl.dot allows for the
# projection / collapse-grad GEMMs); the 117 columns take 8 chunks. The [256, 64] fp32 position
# tiles need 8 warps: the forward kernels then fit in registers; the backward kernels, holding
# 3-4 such tiles at once, spill 0.3-0.9 KB per thread. Backward kernels take one pipeline stage:
# with two or more, ptxas for sm_80 drops to 32 registers and spills 4+ KB.
_GPU_TILE = (16, 16, 8)  # BLOCK_T, BLOCK_J, num_warps
# fp32 activations (3xTF32 dots): at 256 positions the BatchNorm- and conv-grad kernels need
# 245-255 KB of shared memory, over sm_90's 227 KB; 8 x 16 = 128 positions take 150 KB. Their
# dots contract over the 32 taps, not over positions, so 8 rows are allowed there (the head
# kernel's position-contracting dots are not: it keeps 16 x 16, which fits).
_GPU_FP32_BACKWARD_TILE = (8, 16, 8)
_GPU_INPUT_GRAD = (16, 8)
_INTERPRETER_TILE_POSITIONS = 16384


def _gpu_front_config(dtype: torch.dtype, kernels: str) -> dict:
    """The GPU launch configuration (see _front_config); also what the compile specs compile."""
    narrow = kernels == "backward" and dtype == torch.float32
    block_t, block_j, warps = _GPU_FP32_BACKWARD_TILE if narrow else _GPU_TILE
    stages = pipeline_stages(dtype) if kernels == "forward" else 1
    return {"BLOCK_T": block_t, "BLOCK_J": block_j, "num_warps": warps, "num_stages": stages}


def _front_config(length: int, mfcc: int, dtype: torch.dtype, kernels: str = "forward") -> dict:
    """BLOCK_T, BLOCK_J, num_warps, num_stages of the front-end kernels: ``kernels`` is "forward"
    (stats + forward), "backward_head" or "backward" (the BatchNorm- and conv-grad kernels)."""
    if not interpreting():
        return _gpu_front_config(dtype, kernels)
    block_j = triton.next_power_of_2(3 * mfcc)
    block_t = max(16, min(triton.next_power_of_2(length), _INTERPRETER_TILE_POSITIONS // block_j))
    return {"BLOCK_T": block_t, "BLOCK_J": block_j, "num_warps": 4, "num_stages": 1}


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


# ----------------------------------------------------------------------------------------------
# Input checks (real and fake implementations)
# ----------------------------------------------------------------------------------------------

PARAMETER_NAMES = (
    "time_weight", "freq_weight", "square_weight", "branch_bias", "bn_weight", "bn_bias", "running_mean", "running_var",
    "squeeze_weight", "squeeze_bias", "excite_weight", "excite_bias", "collapse_weight", "collapse_bias", "project_weight", "project_bias",
)  # fmt: skip


def _parameter_shapes(channels: int, mfcc: int) -> dict[str, tuple[int, ...]]:
    f = channels
    vec3 = (2, 3, f)
    return {
        "time_weight": (2, f, TIME_TAPS), "freq_weight": (2, f, FREQ_TAPS), "square_weight": (2, f, SQUARE_TAPS), "branch_bias": vec3,
        "bn_weight": vec3, "bn_bias": vec3, "running_mean": vec3, "running_var": vec3,
        "squeeze_weight": (2, f, f), "squeeze_bias": (2, f), "excite_weight": (2, f, f), "excite_bias": (2, f),
        "collapse_weight": (2, f), "collapse_bias": (2, 1), "project_weight": (2, f, 4 * mfcc), "project_bias": (2, f),
    }  # fmt: skip


def _check_inputs(op: str, x: Tensor, params: dict[str, Tensor], masks: Optional[Tensor]) -> tuple[int, int, int, int]:
    if x.dim() != 3:
        raise ValueError(f"{op}: x must have shape (B, T, M), got {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{op}: x must be float32, float16 or bfloat16, got {x.dtype}")
    batch, length, mfcc = x.shape
    if batch < 1 or length < 1 or mfcc < 1:
        raise ValueError(f"{op}: x must be non-empty, got shape {tuple(x.shape)}")
    channels = params["squeeze_bias"].shape[-1] if params["squeeze_bias"].dim() == 2 else -1
    for name, shape in _parameter_shapes(channels, mfcc).items():
        t = params[name]
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {shape} for x of shape {tuple(x.shape)}, got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    tensors = {"x": x, **params}
    if masks is not None:
        if tuple(masks.shape) != (2, 3, batch, channels):
            raise ValueError(f"{op}: masks must have shape (2, 3, {batch}, {channels}), got {tuple(masks.shape)}")
        if not masks.is_floating_point():
            raise TypeError(f"{op}: masks must be a floating-point tensor, got {masks.dtype}")
        tensors["masks"] = masks
    check_same_device(op, **tensors)
    return batch, length, mfcc, channels


# ----------------------------------------------------------------------------------------------
# Ops
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("glam_fast::squeeze_excite", mutates_args=())
def squeeze_excite(
    x: Tensor, time_weight: Tensor, freq_weight: Tensor, square_weight: Tensor, branch_bias: Tensor,
    bn_weight: Tensor, bn_bias: Tensor, running_mean: Tensor, running_var: Tensor,
    squeeze_weight: Tensor, squeeze_bias: Tensor, excite_weight: Tensor, excite_bias: Tensor,
    collapse_weight: Tensor, collapse_bias: Tensor, project_weight: Tensor, project_bias: Tensor,
    masks: Optional[Tensor], training: bool, eps: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """The front end of both directions.

    x: (B, T, M) MFCC, fp32/fp16/bf16 (the activation dtype). Parameters are direction-stacked:
    time/freq/square_weight (2, F, 11 / 9 / 3*3), branch_bias and the three BatchNorms' weight,
    bias, running_mean, running_var (2, 3, F) (branches in time, freq, square order),
    squeeze/excite_weight (2, F, F) and bias (2, F), collapse_weight (2, F), collapse_bias (2, 1),
    project_weight (2, F, 4M) (columns: collapsed map, then raw MFCC), project_bias (2, F).
    masks: (2, 3, B, F) dropout channel scales or None.

    Returns h0 (2, B, T, F) in x's dtype (direction 1 in reversed time), the squeeze (2, B, F)
    fp32, and in training the batch statistics (2, 2, 3, F) fp32 = [mean, biased variance]
    [direction][branch] (otherwise an empty (0,) tensor).
    """
    params = dict(zip(PARAMETER_NAMES, (time_weight, freq_weight, square_weight, branch_bias, bn_weight, bn_bias, running_mean, running_var,
                                        squeeze_weight, squeeze_bias, excite_weight, excite_bias, collapse_weight, collapse_bias, project_weight, project_bias)))  # fmt: skip
    batch, length, mfcc, channels = _check_inputs("squeeze_excite", x, params, masks)
    x = x.contiguous()
    p = {k: v.contiguous() for k, v in params.items()}
    device = x.device
    block_f = _pow2(channels)
    tiles = _front_config(length, mfcc, x.dtype)
    precision = dot_precision(x.dtype)
    grid = (batch, 2)
    if training:
        stats = empty_output((2, 2, 3, channels), dtype=torch.float32, device=device)
        partial = new_partials(6, batch, block_f, device)
        _squeeze_excite_stats_kernel[grid](
            x, partial, p["time_weight"], p["freq_weight"], p["square_weight"], p["branch_bias"], batch, length, mfcc, channels,
            BLOCK_F=block_f, PRECISION=precision, **tiles,
        )  # fmt: skip
        batch_norm_stats(partial, length * mfcc, channels, stats.view(2, 6, channels))
        mean, var = stats[0], stats[1]
    else:
        stats = x.new_empty((0,), dtype=torch.float32)
        mean, var = p["running_mean"], p["running_var"]
    h0 = empty_output((2, batch, length, channels), dtype=x.dtype, device=device)
    squeeze = empty_output((2, batch, channels), dtype=torch.float32, device=device)
    _squeeze_excite_forward_kernel[grid](
        x, h0, squeeze, p["time_weight"], p["freq_weight"], p["square_weight"], p["branch_bias"], p["bn_weight"], p["bn_bias"], mean, var,
        masks.contiguous() if masks is not None else p["bn_weight"],
        p["squeeze_weight"], p["squeeze_bias"], p["excite_weight"], p["excite_bias"], p["collapse_weight"], p["collapse_bias"],
        p["project_weight"], p["project_bias"], batch, length, mfcc, channels, eps,
        HAS_MASK=masks is not None, BLOCK_M=_pow2(mfcc), BLOCK_F=block_f, PRECISION=precision, **tiles,
    )  # fmt: skip
    return h0, squeeze, stats


@squeeze_excite.register_fake
def _(x, time_weight, freq_weight, square_weight, branch_bias, bn_weight, bn_bias, running_mean, running_var,
      squeeze_weight, squeeze_bias, excite_weight, excite_bias, collapse_weight, collapse_bias, project_weight, project_bias,
      masks, training, eps):  # fmt: skip
    params = dict(zip(PARAMETER_NAMES, (time_weight, freq_weight, square_weight, branch_bias, bn_weight, bn_bias, running_mean, running_var,
                                        squeeze_weight, squeeze_bias, excite_weight, excite_bias, collapse_weight, collapse_bias, project_weight, project_bias)))  # fmt: skip
    batch, length, _, channels = _check_inputs("squeeze_excite", x, params, masks)
    stats = x.new_empty((2, 2, 3, channels) if training else (0,), dtype=torch.float32)
    return x.new_empty((2, batch, length, channels)), x.new_empty((2, batch, channels), dtype=torch.float32), stats


@torch.library.custom_op("glam_fast::squeeze_excite_backward", mutates_args=())
def squeeze_excite_backward(
    grad_h0: Tensor, x: Tensor, squeeze: Tensor,
    time_weight: Tensor, freq_weight: Tensor, square_weight: Tensor, branch_bias: Tensor, bn_weight: Tensor, bn_bias: Tensor,
    mean: Tensor, var: Tensor, squeeze_weight: Tensor, squeeze_bias: Tensor, excite_weight: Tensor, excite_bias: Tensor,
    collapse_weight: Tensor, collapse_bias: Tensor, project_weight: Tensor,
    masks: Optional[Tensor], training: bool, eps: float, need_input_grad: bool,
) -> list[Tensor]:  # fmt: skip
    """Backward of :func:`squeeze_excite` (mean/var: the (2, 3, F) statistics BatchNorm used).

    Returns [grad_x (B, T, M) in x's dtype, or an empty (0,) tensor unless need_input_grad] followed
    by fp32 grads of time_weight, freq_weight, square_weight, branch_bias, bn_weight, bn_bias,
    squeeze_weight, squeeze_bias, excite_weight, excite_bias, collapse_weight, collapse_bias,
    project_weight, project_bias.
    """
    batch, length, mfcc = x.shape
    channels = squeeze_bias.shape[-1]
    device = x.device
    block_f = _pow2(channels)
    head_tiles = _front_config(length, mfcc, x.dtype, "backward_head")
    tiles = _front_config(length, mfcc, x.dtype, "backward")
    precision = dot_precision(x.dtype)
    t = [v.contiguous() for v in (grad_h0, x, squeeze, time_weight, freq_weight, square_weight, branch_bias, bn_weight, bn_bias, mean, var,
                                  squeeze_weight, squeeze_bias, excite_weight, excite_bias, collapse_weight, collapse_bias, project_weight)]  # fmt: skip
    grad_h0, x, squeeze = t[:3]
    setup_args = t[3:11] + [masks.contiguous() if masks is not None else bn_weight]
    head_args = t[11:]
    j = 3 * mfcc
    proj_partial = empty_output((2, batch, channels, j + mfcc + 1), dtype=torch.float32, device=device)
    collapse_partial = empty_output((2, batch, channels + 1), dtype=torch.float32, device=device)
    excite_partial = empty_output((2, batch, 2, channels, channels + 1), dtype=torch.float32, device=device)
    grad_squeeze = empty_output((2, batch, channels), dtype=torch.float32, device=device)
    sums_partial = empty_output((2, batch, 3, 2, block_f), dtype=torch.float32, device=device)
    conv_partial = empty_output((2, batch, GEMM_K, channels), dtype=torch.float32, device=device)
    if need_input_grad:
        tap_grad = empty_output((2, batch, length, mfcc, GEMM_K), dtype=torch.float32, device=device)
        grad_x = empty_output(x.shape, dtype=x.dtype, device=device)
    else:
        tap_grad = grad_x = x.new_empty((0,))
    scalars = (batch, length, mfcc, channels, eps)
    common = dict(HAS_MASK=masks is not None, BLOCK_F=block_f, PRECISION=precision)
    grid = (batch, 2)
    _squeeze_excite_backward_head_kernel[grid](
        x, grad_h0, squeeze, grad_squeeze, proj_partial, collapse_partial, excite_partial, *setup_args, *head_args, *scalars,
        BLOCK_M=_pow2(mfcc), **common, **head_tiles,
    )  # fmt: skip
    _squeeze_excite_backward_bn_kernel[grid](x, grad_h0, squeeze, grad_squeeze, sums_partial, *setup_args, *head_args, *scalars, **common, **tiles)
    sums = sums_partial.sum(dim=1)  # (2, 3, 2, BLOCK_F)
    _squeeze_excite_backward_conv_kernel[grid](
        x, grad_h0, squeeze, grad_squeeze, sums, conv_partial, tap_grad, *setup_args, *head_args, *scalars,
        TRAINING=training, NEED_INPUT_GRAD=need_input_grad, **common, **tiles,
    )  # fmt: skip
    if need_input_grad:
        block_t_x, warps_x = (_GPU_INPUT_GRAD if not interpreting() else (max(16, min(256, triton.next_power_of_2(length))), 4))
        _squeeze_excite_input_grad_kernel[(triton.cdiv(length, block_t_x), batch)](
            tap_grad, grad_h0, t[-1], grad_x, batch, length, mfcc, channels,
            BLOCK_T=block_t_x, BLOCK_M=_pow2(mfcc), BLOCK_F=block_f, PRECISION=precision, num_warps=warps_x, num_stages=tiles["num_stages"],
        )  # fmt: skip
    rows = conv_partial.sum(dim=1)  # (2, 32, F): taps then the three branch biases
    proj = proj_partial.sum(dim=1)
    collapse = collapse_partial.sum(dim=1)
    excite = excite_partial.sum(dim=1)
    bn_sums = sums[..., :channels]
    return [
        grad_x,
        rows[:, :TIME_TAPS].transpose(1, 2).contiguous(),
        rows[:, TIME_TAPS : TIME_TAPS + FREQ_TAPS].transpose(1, 2).contiguous(),
        rows[:, TIME_TAPS + FREQ_TAPS : N_TAPS].transpose(1, 2).contiguous(),
        rows[:, N_TAPS:].contiguous(),
        bn_sums[:, :, 1].contiguous(),
        bn_sums[:, :, 0].contiguous(),
        excite[:, 0, :, :channels].contiguous(),
        excite[:, 0, :, channels].contiguous(),
        excite[:, 1, :, :channels].contiguous(),
        excite[:, 1, :, channels].contiguous(),
        collapse[:, :channels].contiguous(),
        collapse[:, channels:].contiguous(),
        proj[:, :, : j + mfcc].contiguous(),
        proj[:, :, j + mfcc].contiguous(),
    ]


@squeeze_excite_backward.register_fake
def _(grad_h0, x, squeeze, time_weight, freq_weight, square_weight, branch_bias, bn_weight, bn_bias, mean, var,
      squeeze_weight, squeeze_bias, excite_weight, excite_bias, collapse_weight, collapse_bias, project_weight,
      masks, training, eps, need_input_grad):  # fmt: skip
    channels = squeeze_bias.shape[-1]
    grads = [torch.empty_like(x) if need_input_grad else x.new_empty((0,))]
    shapes = _parameter_shapes(channels, x.shape[2])
    for name in PARAMETER_NAMES:
        if name not in ("running_mean", "running_var"):
            grads.append(x.new_empty(shapes[name], dtype=torch.float32))
    return grads


def _setup_context(ctx, inputs, output):
    x, *params = inputs[:17]
    masks, training, eps = inputs[17:]
    _, squeeze, stats = output
    named = dict(zip(PARAMETER_NAMES, params))
    mean, var = (stats[0], stats[1]) if training else (named["running_mean"], named["running_var"])
    saved = [named[n] for n in PARAMETER_NAMES if n not in ("running_mean", "running_var", "project_bias")]
    ctx.save_for_backward(x, squeeze, mean, var, masks, *saved)
    ctx.training, ctx.eps = training, eps
    ctx.param_dtypes = [named[n].dtype for n in PARAMETER_NAMES if n not in ("running_mean", "running_var")]
    ctx.mark_non_differentiable(squeeze, stats)


def _backward(ctx, grad_h0, _grad_squeeze, _grad_stats):
    x, squeeze, mean, var, masks, *saved = ctx.saved_tensors
    time_w, freq_w, square_w, branch_b, bn_w, bn_b, sq_w, sq_b, ex_w, ex_b, col_w, col_b, proj_w = saved
    grads = squeeze_excite_backward(
        grad_h0, x, squeeze, time_w, freq_w, square_w, branch_b, bn_w, bn_b, mean, var, sq_w, sq_b, ex_w, ex_b, col_w, col_b, proj_w,
        masks, ctx.training, ctx.eps, ctx.needs_input_grad[0],
    )  # fmt: skip
    grad_x = grads[0] if ctx.needs_input_grad[0] else None
    param_grads = [g.to(dtype) for g, dtype in zip(grads[1:], ctx.param_dtypes)]
    # order of the op's parameter arguments; running statistics get no grad
    return (grad_x, *param_grads[:6], None, None, *param_grads[6:], None, None, None)


squeeze_excite.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------


def squeeze_excite_ref(
    x: Tensor, time_weight: Tensor, freq_weight: Tensor, square_weight: Tensor, branch_bias: Tensor,
    bn_weight: Tensor, bn_bias: Tensor, running_mean: Tensor, running_var: Tensor,
    squeeze_weight: Tensor, squeeze_bias: Tensor, excite_weight: Tensor, excite_bias: Tensor,
    collapse_weight: Tensor, collapse_bias: Tensor, project_weight: Tensor, project_bias: Tensor,
    masks: Optional[Tensor], training: bool, eps: float, momentum: float = 0.0,
) -> Tensor:  # fmt: skip
    """Plain PyTorch, same signature and layout as :func:`squeeze_excite`: h0 (2, B, T, F).

    In training, running_mean / running_var are updated in place with ``momentum``."""
    f = squeeze_bias.shape[-1]
    outs = []
    for d, xd in enumerate((x, x.flip(1))):
        image = xd.unsqueeze(1)
        weights = (time_weight[d].view(f, 1, 11, 1), freq_weight[d].view(f, 1, 1, 9), square_weight[d].view(f, 1, 3, 3))
        branches = []
        for i, (w, pad) in enumerate(zip(weights, ((5, 0), (0, 4), (1, 1)))):
            y = F.conv2d(image, w, branch_bias[d, i], padding=pad)
            y = F.relu(F.batch_norm(y, running_mean[d, i], running_var[d, i], bn_weight[d, i], bn_bias[d, i], training, momentum, eps))
            if masks is not None:
                y = y * masks[d, i][:, :, None, None]
            branches.append(y)
        y = torch.cat(branches, dim=3)
        s = torch.sigmoid(F.linear(F.relu(F.linear(y.mean(dim=(2, 3)), squeeze_weight[d], squeeze_bias[d])), excite_weight[d], excite_bias[d]))
        z = F.relu(torch.einsum("bftj,f->btj", y * s[:, :, None, None], collapse_weight[d]) + collapse_bias[d])
        outs.append(F.linear(torch.cat((z, xd), dim=2), project_weight[d], project_bias[d]))
    return torch.stack(outs)


@register_compile_specs
def _compile_specs():
    """Every kernel at the configuration _front_config gives on a GPU, for bf16 (fp16 launches
    alike) and fp32 activations."""
    p = "*fp32"
    head = {"sq_w_ptr": p, "sq_b_ptr": p, "ex_w_ptr": p, "ex_b_ptr": p, "col_w_ptr": p, "col_b_ptr": p, "proj_w_ptr": p}
    scalars = {"B": "i32", "T": "i32", "M": "i32", "F": "i32"}
    const = lambda names: {n: "constexpr" for n in names}  # noqa: E731

    def spec(name, kernel, sig, consts, cfg):
        tiles = {"BLOCK_T": cfg["BLOCK_T"], "BLOCK_J": cfg["BLOCK_J"]}
        consts = {**consts, **tiles}
        sig = {**sig, **const(consts)}
        return KernelSpec("squeeze_excite", name, kernel, sig, consts, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])

    for act, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        x = f"*{act}"
        precision = "tf32x3" if act == "fp32" else "tf32"
        forward, backward_head, backward = (_gpu_front_config(dtype, k) for k in ("forward", "backward_head", "backward"))
        setup = {"time_w_ptr": p, "freq_w_ptr": p, "square_w_ptr": p, "branch_b_ptr": p, "bn_w_ptr": p, "bn_b_ptr": p, "mean_ptr": p, "var_ptr": p, "mask_ptr": x}
        base = {"BLOCK_F": 64, "PRECISION": precision}
        sig = {"x_ptr": x, "partial_ptr": p, "time_w_ptr": p, "freq_w_ptr": p, "square_w_ptr": p, "branch_b_ptr": p, **scalars}
        yield spec(f"_squeeze_excite_stats_kernel[{act}]", _squeeze_excite_stats_kernel, sig, base, forward)
        with_m = {"HAS_MASK": True, "BLOCK_M": 64, **base}
        sig = {"x_ptr": x, "h_ptr": x, "squeeze_ptr": p, **setup, **head, "proj_b_ptr": p, **scalars, "eps": "fp32"}
        yield spec(f"_squeeze_excite_forward_kernel[{act}]", _squeeze_excite_forward_kernel, sig, with_m, forward)
        sig = {"x_ptr": x, "grad_h_ptr": x, "squeeze_ptr": p, "grad_squeeze_ptr": p, "proj_partial_ptr": p, "collapse_partial_ptr": p,
               "excite_partial_ptr": p, **setup, **head, **scalars, "eps": "fp32"}  # fmt: skip
        yield spec(f"_squeeze_excite_backward_head_kernel[{act}]", _squeeze_excite_backward_head_kernel, sig, with_m, backward_head)
        sig = {"x_ptr": x, "grad_h_ptr": x, "squeeze_ptr": p, "grad_squeeze_ptr": p, "sums_ptr": p, **setup, **head, **scalars, "eps": "fp32"}
        yield spec(f"_squeeze_excite_backward_bn_kernel[{act}]", _squeeze_excite_backward_bn_kernel, sig, {"HAS_MASK": True, **base}, backward)
        sig = {"x_ptr": x, "grad_h_ptr": x, "squeeze_ptr": p, "grad_squeeze_ptr": p, "sums_ptr": p, "conv_partial_ptr": p, "tap_grad_ptr": p,
               **setup, **head, **scalars, "eps": "fp32"}  # fmt: skip
        conv = {"TRAINING": True, "HAS_MASK": True, "NEED_INPUT_GRAD": True, **base}
        yield spec(f"_squeeze_excite_backward_conv_kernel[{act}]", _squeeze_excite_backward_conv_kernel, sig, conv, backward)
        block_t_x, warps_x = _GPU_INPUT_GRAD
        dx_consts = {"BLOCK_T": block_t_x, "BLOCK_M": 64, **base}
        sig = {"tap_grad_ptr": p, "grad_h_ptr": x, "proj_w_ptr": p, "grad_x_ptr": x, **scalars, **const(dx_consts)}
        yield KernelSpec("squeeze_excite", f"_squeeze_excite_input_grad_kernel[{act}]", _squeeze_excite_input_grad_kernel, sig, dx_consts,
                         num_warps=warps_x, num_stages=1)  # fmt: skip
