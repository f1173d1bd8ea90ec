"""GLAM's head: the global-aware fusion (one gMLP block over the 128 channel tokens), the ReLU and
the classifier, fused.

    logits = fc( ReLU( X + gMLP(LN_d(X)) ).flatten(1) )
    gMLP(Z) = proj_out( tanh(Ws @ LN_2d(G) + bs[:, None]) * R ),   [R | G] = GELU(Z @ W1ᵀ + b1)

X is (B, 128, d): conv5's output flattened over H·W (d = 182 at 26×57, 195 at 26×63).

Kernels (the four GEMMs of a segment and the cheap work between them):

* forward: one kernel, one program per segment (128 tokens), in phases that hand tiles to each
  other through the program's own rows in memory (hot in L1/L2; a barrier between phases), so the
  working tiles stay small (128 × 64 at most, besides the 128×128 token-mixing weight and 32 whole
  rows in the LayerNorm phase): (0) LN_d → Z; (1) proj_in with GELU's LN_2d statistics of the gate
  half merged tile by tile, storing the pre-activations A; (2) GELU + LN_2d as the prologue of the
  128×128 token mixing, tanh and ·R as its epilogue → T, V; (3) proj_out with b2, the residual,
  the ReLU and the classifier in its epilogue: P is stored (for the backward), Y never is, and
  each program writes its segment's logits.
* backward: three kernels. (1) One program per segment: dO = dP·[P > 0] from the logits gradient,
  dV = dO W2, dS and dR (T saved by the forward, no recomputed token mixing), dĜ = Wsᵀ dS, LN_2d
  and GELU backward (two passes over the gate half), dZ = dA W1 with LN_d backward and the
  residual: dX. It leaves dO, dS, dA and per-segment LayerNorm column sums for (2) the weight
  gradients: one grouped kernel whose programs each own a tile of one weight gradient (W1, W2,
  Ws, classifier, with their biases; the LayerNorm affine parameters) and a fixed split of the
  batch, and write fp32 partial sums; (3) a reduction over the splits in a fixed order. No float
  atomics: gradients are bitwise reproducible for a given batch size.

Saved for the backward (per token): Z (d), A (4d), T and V (2d each), P (d) in the input dtype,
and four fp32 LayerNorm statistics.

Precision: fp32, fp16 or bf16 tensors, fp32 accumulation and fp32 elementwise math (LayerNorm
statistics, GELU, tanh, the classifier's reduction). fp32 GEMMs follow PyTorch's matmul setting:
IEEE fp32 by default, TF32 on tensor cores when ``torch.backends.cuda.matmul.allow_tf32`` is set
(inputs rounded to 10 mantissa bits: relative errors around 1e-3 against float64). The IEEE fp32
kernels spill registers (FMA dots hold whole fp32 tiles); for speed run bf16 or allow TF32. Half-precision runs store the saved activations and the backward scratch in the
input dtype, as an eager run in that dtype would.

Autocast: under ``torch.autocast`` every tensor argument is cast to the autocast dtype before the
op runs (the reference's Linears and matmul run in that dtype under autocast; its LayerNorms, which
autocast keeps in fp32, run in fp32 inside these kernels anyway). Gradients flow back through the
casts to the parameters' own dtype.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from glam_fast.kernels import KernelSpec, register_compile_specs
from glam_fast.ops.utils import check_same_device, empty_output, interpreting

N_TOKENS = 128  # GLAM's conv5 channels: the tokens of the gMLP
LAYER_NORM_EPS = 1e-5
MAX_TOKEN_DIM = 256  # the forward's LayerNorm phase holds whole rows: d is padded to a power of two <= 256

# Tile sizes. A program owns a whole segment (all 128 tokens) in the per-segment kernels.
_LN_ROWS = 32  # tokens per step of the forward's LayerNorm_d phase
_BLOCK_N = 64  # proj_in output columns per tile (forward phase 1)
_BLOCK_K = 32  # proj_in reduction chunk over d (forward phase 1)
_BLOCK_C = 32  # gate columns per tile (token mixing; reduction chunk of proj_out)
_BLOCK_D = 64  # token-size columns per tile (proj_out output)
# The per-segment backward keeps many (128, BLOCK) tiles live at once: narrower tiles keep it spill-free.
_BWD_BLOCK_C = 16
_BWD_BLOCK_D = 32
# Weight-gradient kernel: W1/W2 tiles (BLOCK_I × BLOCK_J) over BLOCK_R rows per step; Ws tiles of
# BLOCK_T tokens; classifier tiles of BLOCK_Q features × BLOCK_KC classes over BLOCK_B segments.
_GRAD_TILES = dict(BLOCK_I=64, BLOCK_J=64, BLOCK_R=64, BLOCK_T=64, BLOCK_B=16, BLOCK_Q=512, BLOCK_KC=16, BLOCK_L=256)
_REDUCE_BLOCK = 4096
# The weight-gradient kernel splits the batch into at most _MAX_SPLITS runs of at least
# _MIN_SEGMENTS_PER_SPLIT segments: enough programs to fill a GPU at large batch, fp32 partials small.
_MAX_SPLITS = 8
_MIN_SEGMENTS_PER_SPLIT = 2


# ----------------------------------------------------------------------------------------------
# Elementwise helpers (fp32)


@triton.jit
def _gelu(a):
    """Exact (erf) GELU."""
    return 0.5 * a * (1.0 + tl.math.erf(a * 0.7071067811865476))


@triton.jit
def _gelu_grad(a):
    """d GELU / da = Φ(a) + a·φ(a)."""
    return 0.5 * (1.0 + tl.math.erf(a * 0.7071067811865476)) + a * 0.3989422804014327 * tl.exp(-0.5 * a * a)


@triton.jit
def _tanh(s):
    # 1 - 2 / (e^{2s} + 1) saturates cleanly: e^{2s} = inf gives 1, e^{2s} = 0 gives -1.
    return 1.0 - 2.0 / (tl.exp(2.0 * s) + 1.0)


# ----------------------------------------------------------------------------------------------
# Forward


@triton.jit
def _global_fusion_forward_kernel(
    x_ptr, norm_w_ptr, norm_b_ptr, w1_ptr, b1_ptr, gate_w_ptr, gate_b_ptr, ws_ptr, bs_ptr, w2_ptr, b2_ptr,
    fc_w_ptr, fc_b_ptr,
    logits_ptr, normed_ptr, pre_ptr, gate_tanh_ptr, gated_ptr, relu_ptr, stats_ptr,
    d, n_classes, eps,
    N_TOK: tl.constexpr, D_PAD: tl.constexpr, K_PAD: tl.constexpr, LN_ROWS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One program = one segment. Writes logits[seg] and, saved for the backward: Z = LN_d(X)
    (N_TOK, d), the pre-activations A (N_TOK, 4d), T = tanh(S) and V = T·R (N_TOK, 2d each),
    P = ReLU(X + Y) (N_TOK, d) and the LayerNorm statistics (4, N_TOK): mean_d, rstd_d, mean_2d,
    rstd_2d.

    Each phase reads back what the previous one stored (the program's own rows, hot in L1/L2), so
    the working tiles stay small; a barrier between phases makes the stores of all the program's
    threads visible to all of them."""
    seg = tl.program_id(0).to(tl.int64)
    dtype = x_ptr.dtype.element_ty
    half = 2 * d
    hidden = 4 * d
    tok = tl.arange(0, N_TOK)
    x_seg = x_ptr + seg * N_TOK * d
    normed_seg = normed_ptr + seg * N_TOK * d
    pre_seg = pre_ptr + seg * N_TOK * hidden
    gate_tanh_seg = gate_tanh_ptr + seg * N_TOK * half
    gated_seg = gated_ptr + seg * N_TOK * half
    relu_seg = relu_ptr + seg * N_TOK * d
    stats_seg = stats_ptr + seg * 4 * N_TOK

    # Phase 0: Z = LN_d(X) over whole rows (two-pass statistics), LN_ROWS tokens at a time.
    cols = tl.arange(0, D_PAD)
    col_ok = cols < d
    gamma1 = tl.load(norm_w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    beta1 = tl.load(norm_b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    for t0 in range(0, N_TOK, LN_ROWS):
        rows = t0 + tl.arange(0, LN_ROWS)
        rows_tile = rows[:, None] * d + cols[None, :]
        x = tl.load(x_seg + rows_tile, mask=col_ok[None, :], other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / d
        xc = tl.where(col_ok[None, :], x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / d + eps)
        z = xc * rstd[:, None] * gamma1[None, :] + beta1[None, :]
        tl.store(normed_seg + rows_tile, z.to(dtype), mask=col_ok[None, :])
        tl.store(stats_seg + rows, mean)
        tl.store(stats_seg + N_TOK + rows, rstd)
    tl.debug_barrier()

    # Phase 1: A = Z W1ᵀ + b1 over the 4d columns, BLOCK_N at a time (a tile may straddle the R | G
    # boundary at 2d). LN_2d statistics of GELU(A) as stored (rounded to the dtype, as phase 2 and
    # the backward read it), merged tile by tile with Chan et al.'s pairwise update.
    count = 0.0
    mean2 = tl.zeros([N_TOK], dtype=tl.float32)
    m2 = tl.zeros([N_TOK], dtype=tl.float32)
    for n0 in range(0, hidden, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < hidden
        acc = tl.zeros([N_TOK, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, d, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < d
            z = tl.load(normed_seg + tok[:, None] * d + k[None, :], mask=k_ok[None, :], other=0.0)
            w1t = tl.load(w1_ptr + n[None, :] * d + k[:, None], mask=n_ok[None, :] & k_ok[:, None], other=0.0)
            acc = tl.dot(z, w1t, acc, input_precision=DOT_PRECISION)
        bias = tl.load(b1_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
        a = (acc + bias[None, :]).to(dtype)
        tl.store(pre_seg + tok[:, None] * hidden + n[None, :], a, mask=n_ok[None, :])
        if n0 + BLOCK_N > half:
            in_gate = (n >= half) & n_ok
            g = tl.where(in_gate[None, :], _gelu(a.to(tl.float32)), 0.0)
            tile_count = tl.sum(in_gate.to(tl.float32), axis=0)
            tile_mean = tl.sum(g, axis=1) / tl.maximum(tile_count, 1.0)
            dev = tl.where(in_gate[None, :], g - tile_mean[:, None], 0.0)
            new_count = count + tile_count
            weight = tile_count / tl.maximum(new_count, 1.0)
            delta = tile_mean - mean2
            mean2 += delta * weight
            m2 += tl.sum(dev * dev, axis=1) + delta * delta * (count * weight)
            count = new_count
    rstd2 = 1.0 / tl.sqrt(m2 / half + eps)
    tl.store(stats_seg + 2 * N_TOK + tok, mean2)
    tl.store(stats_seg + 3 * N_TOK + tok, rstd2)
    tl.debug_barrier()

    # Phase 2: T = tanh(Ws LN_2d(G) + bs) and V = T·R, BLOCK_C gate columns at a time.
    ws = tl.load(ws_ptr + tok[:, None] * N_TOK + tok[None, :])
    bs = tl.load(bs_ptr + tok).to(tl.float32)
    for c0 in range(0, half, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < half
        pre_tile = pre_seg + tok[:, None] * hidden + c[None, :]
        a_r = tl.load(pre_tile, mask=c_ok[None, :], other=0.0).to(tl.float32)
        a_g = tl.load(pre_tile + half, mask=c_ok[None, :], other=0.0).to(tl.float32)
        gamma = tl.load(gate_w_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        beta = tl.load(gate_b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        gn = (_gelu(a_g) - mean2[:, None]) * rstd2[:, None] * gamma[None, :] + beta[None, :]
        t = _tanh(tl.dot(ws, gn.to(dtype), input_precision=DOT_PRECISION) + bs[:, None])
        half_tile = tok[:, None] * half + c[None, :]
        tl.store(gate_tanh_seg + half_tile, t.to(dtype), mask=c_ok[None, :])
        tl.store(gated_seg + half_tile, (t * _gelu(a_r)).to(dtype), mask=c_ok[None, :])
    tl.debug_barrier()

    # Phase 3: Y = V W2ᵀ, BLOCK_D output columns at a time, with the epilogue: + b2 + X, ReLU,
    # P stored, and this block's share of every class's logit (fc over the flattened segment).
    classes = tl.arange(0, K_PAD)
    logits = tl.zeros([K_PAD], dtype=tl.float32)
    for d0 in range(0, d, BLOCK_D):
        j = d0 + tl.arange(0, BLOCK_D)
        j_ok = j < d
        acc = tl.zeros([N_TOK, BLOCK_D], dtype=tl.float32)
        for c0 in range(0, half, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            c_ok = c < half
            v = tl.load(gated_seg + tok[:, None] * half + c[None, :], mask=c_ok[None, :], other=0.0)
            w2t = tl.load(w2_ptr + j[None, :] * half + c[:, None], mask=c_ok[:, None] & j_ok[None, :], other=0.0)
            acc = tl.dot(v, w2t, acc, input_precision=DOT_PRECISION)
        block = tok[:, None] * d + j[None, :]
        b2 = tl.load(b2_ptr + j, mask=j_ok, other=0.0).to(tl.float32)
        x = tl.load(x_seg + block, mask=j_ok[None, :], other=0.0).to(tl.float32)
        p = tl.maximum(acc + b2[None, :] + x, 0.0)  # 0 in padded columns
        tl.store(relu_seg + block, p.to(dtype), mask=j_ok[None, :])
        for k in range(0, n_classes):
            w_fc = tl.load(fc_w_ptr + k * (N_TOK * d) + block, mask=j_ok[None, :], other=0.0).to(tl.float32)
            logits = tl.where(classes == k, logits + tl.sum(tl.sum(p * w_fc, axis=1), axis=0), logits)
    class_ok = classes < n_classes
    fc_b = tl.load(fc_b_ptr + classes, mask=class_ok, other=0.0).to(tl.float32)
    tl.store(logits_ptr + seg * n_classes + classes, (logits + fc_b).to(dtype), mask=class_ok)


# ----------------------------------------------------------------------------------------------
# Backward: per-segment kernel


@triton.jit
def _global_fusion_backward_kernel(
    grad_logits_ptr, x_ptr, norm_w_ptr, w1_ptr, gate_w_ptr, ws_ptr, w2_ptr, fc_w_ptr,
    pre_ptr, gate_tanh_ptr, relu_ptr, stats_ptr,
    grad_x_ptr, grad_out_ptr, grad_mix_ptr, grad_pre_ptr, grad_xhat_ptr, ln_partial_ptr,
    d, n_classes,
    N_TOK: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program = one segment. Writes grad_x and, for the weight-gradient kernel, dO = dL/d(X+Y)
    (N_TOK, d), dS (N_TOK, 2d), dA (N_TOK, 4d) and this segment's column sums for the LayerNorm
    affine gradients (6d,): [dγ_d, dβ_d, dγ_2d, dβ_2d]. grad_xhat (N_TOK, d) fp32 is scratch.
    Like the forward, passes hand tiles to each other through the program's own rows in memory."""
    seg = tl.program_id(0).to(tl.int64)
    dtype = x_ptr.dtype.element_ty
    half = 2 * d
    hidden = 4 * d
    tok = tl.arange(0, N_TOK)
    x_seg = x_ptr + seg * N_TOK * d
    stats_seg = stats_ptr + seg * 4 * N_TOK
    pre_seg = pre_ptr + seg * N_TOK * hidden
    gate_tanh_seg = gate_tanh_ptr + seg * N_TOK * half
    grad_out_seg = grad_out_ptr + seg * N_TOK * d
    grad_pre_seg = grad_pre_ptr + seg * N_TOK * hidden
    grad_mix_seg = grad_mix_ptr + seg * N_TOK * half
    grad_xhat_seg = grad_xhat_ptr + seg * N_TOK * d
    ln_seg = ln_partial_ptr + seg * 6 * d

    # Pass 0: dO = (P > 0) · Σ_k dlogits[seg, k] · Wfc[k], BLOCK_D columns at a time.
    for d0 in range(0, d, BLOCK_D):
        j = d0 + tl.arange(0, BLOCK_D)
        j_ok = j < d
        block = tok[:, None] * d + j[None, :]
        grad = tl.zeros([N_TOK, BLOCK_D], dtype=tl.float32)
        for k in range(0, n_classes):
            g_k = tl.load(grad_logits_ptr + seg * n_classes + k).to(tl.float32)
            grad += g_k * tl.load(fc_w_ptr + k * (N_TOK * d) + block, mask=j_ok[None, :], other=0.0).to(tl.float32)
        p = tl.load(relu_ptr + seg * N_TOK * d + block, mask=j_ok[None, :], other=0.0)
        tl.store(grad_out_seg + block, tl.where(p > 0, grad, 0.0).to(dtype), mask=j_ok[None, :])
    tl.debug_barrier()

    # Pass 1 over the gate columns: dV = dO W2, dS, dA of the value half, dĜ = (Wsᵀ dS)·γ_2d kept
    # (in dA's gate half) for pass 2, and the row sums LN_2d backward needs.
    mean2 = tl.load(stats_seg + 2 * N_TOK + tok)
    rstd2 = tl.load(stats_seg + 3 * N_TOK + tok)
    ws_t = tl.load(ws_ptr + tok[None, :] * N_TOK + tok[:, None])
    sum_dghat = tl.zeros([N_TOK, BLOCK_C], dtype=tl.float32)  # reduced over columns after the loop
    sum_dghat_ghat = tl.zeros([N_TOK, BLOCK_C], dtype=tl.float32)
    for c0 in range(0, half, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < half
        mask = c_ok[None, :]
        grad_v = tl.zeros([N_TOK, BLOCK_C], dtype=tl.float32)
        for d0 in range(0, d, BLOCK_D):
            j = d0 + tl.arange(0, BLOCK_D)
            j_ok = j < d
            grad_o = tl.load(grad_out_seg + tok[:, None] * d + j[None, :], mask=j_ok[None, :], other=0.0)
            w2 = tl.load(w2_ptr + j[:, None] * half + c[None, :], mask=j_ok[:, None] & mask, other=0.0)
            grad_v = tl.dot(grad_o, w2, grad_v, input_precision=DOT_PRECISION)
        pre_tile = pre_seg + tok[:, None] * hidden + c[None, :]
        a_r = tl.load(pre_tile, mask=mask, other=0.0).to(tl.float32)
        a_g = tl.load(pre_tile + half, mask=mask, other=0.0).to(tl.float32)
        t = tl.load(gate_tanh_seg + tok[:, None] * half + c[None, :], mask=mask, other=0.0).to(tl.float32)
        gamma = tl.load(gate_w_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        r = _gelu(a_r)
        ghat = (_gelu(a_g) - mean2[:, None]) * rstd2[:, None]
        grad_s = (grad_v * r * (1.0 - t * t)).to(dtype)  # 0 in padded columns
        tl.store(grad_mix_seg + tok[:, None] * half + c[None, :], grad_s, mask=mask)
        grad_pre_tile = grad_pre_seg + tok[:, None] * hidden + c[None, :]
        tl.store(grad_pre_tile, (grad_v * t * _gelu_grad(a_r)).to(dtype), mask=mask)
        grad_gn = tl.dot(ws_t, grad_s, input_precision=DOT_PRECISION)
        tl.store(ln_seg + 2 * d + c, tl.sum(grad_gn * ghat, axis=0), mask=c_ok)
        tl.store(ln_seg + 4 * d + c, tl.sum(grad_gn, axis=0), mask=c_ok)
        grad_ghat = grad_gn * gamma[None, :]
        sum_dghat += grad_ghat
        sum_dghat_ghat += grad_ghat * ghat
        tl.store(grad_pre_tile + half, grad_ghat.to(dtype), mask=mask)
    tl.debug_barrier()

    # Pass 2: LN_2d and GELU backward of the gate half, in place over dĜ.
    mean_dghat = tl.sum(sum_dghat, axis=1) / half
    mean_dghat_ghat = tl.sum(sum_dghat_ghat, axis=1) / half
    for c0 in range(0, half, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = (c < half)[None, :]
        grad_pre_tile = grad_pre_seg + tok[:, None] * hidden + half + c[None, :]
        grad_ghat = tl.load(grad_pre_tile, mask=mask, other=0.0).to(tl.float32)
        a_g = tl.load(pre_seg + tok[:, None] * hidden + half + c[None, :], mask=mask, other=0.0).to(tl.float32)
        ghat = (_gelu(a_g) - mean2[:, None]) * rstd2[:, None]
        grad_g = rstd2[:, None] * (grad_ghat - mean_dghat[:, None] - ghat * mean_dghat_ghat[:, None])
        tl.store(grad_pre_tile, (grad_g * _gelu_grad(a_g)).to(dtype), mask=mask)
    tl.debug_barrier()

    # Pass 3: dZ = dA W1, BLOCK_D columns at a time: LN_d affine partials, dX̂ = dZ·γ_d kept in fp32
    # scratch, and the row sums LN_d backward needs.
    mean1 = tl.load(stats_seg + tok)
    rstd1 = tl.load(stats_seg + N_TOK + tok)
    sum_dxhat = tl.zeros([N_TOK, BLOCK_D], dtype=tl.float32)  # reduced over columns after the loop
    sum_dxhat_xhat = tl.zeros([N_TOK, BLOCK_D], dtype=tl.float32)
    for d0 in range(0, d, BLOCK_D):
        j = d0 + tl.arange(0, BLOCK_D)
        j_ok = j < d
        grad_z = tl.zeros([N_TOK, BLOCK_D], dtype=tl.float32)
        for k0 in range(0, hidden, BLOCK_C):
            k = k0 + tl.arange(0, BLOCK_C)
            k_ok = k < hidden
            grad_a = tl.load(grad_pre_seg + tok[:, None] * hidden + k[None, :], mask=k_ok[None, :], other=0.0)
            w1 = tl.load(w1_ptr + k[:, None] * d + j[None, :], mask=k_ok[:, None] & j_ok[None, :], other=0.0)
            grad_z = tl.dot(grad_a, w1, grad_z, input_precision=DOT_PRECISION)
        block = tok[:, None] * d + j[None, :]
        x = tl.load(x_seg + block, mask=j_ok[None, :], other=0.0).to(tl.float32)
        xhat = tl.where(j_ok[None, :], (x - mean1[:, None]) * rstd1[:, None], 0.0)
        tl.store(ln_seg + j, tl.sum(grad_z * xhat, axis=0), mask=j_ok)
        tl.store(ln_seg + d + j, tl.sum(grad_z, axis=0), mask=j_ok)
        grad_xhat = grad_z * tl.load(norm_w_ptr + j, mask=j_ok, other=0.0).to(tl.float32)[None, :]
        sum_dxhat += grad_xhat
        sum_dxhat_xhat += grad_xhat * xhat
        tl.store(grad_xhat_seg + block, grad_xhat, mask=j_ok[None, :])
    tl.debug_barrier()

    # Pass 4: dX = rstd·(dX̂ − mean(dX̂) − X̂·mean(dX̂·X̂)) + dO.
    mean_dxhat = tl.sum(sum_dxhat, axis=1) / d
    mean_dxhat_xhat = tl.sum(sum_dxhat_xhat, axis=1) / d
    for d0 in range(0, d, BLOCK_D):
        j = d0 + tl.arange(0, BLOCK_D)
        j_ok = j < d
        block = tok[:, None] * d + j[None, :]
        grad_xhat = tl.load(grad_xhat_seg + block, mask=j_ok[None, :], other=0.0)
        x = tl.load(x_seg + block, mask=j_ok[None, :], other=0.0).to(tl.float32)
        xhat = (x - mean1[:, None]) * rstd1[:, None]
        grad_x = rstd1[:, None] * (grad_xhat - mean_dxhat[:, None] - xhat * mean_dxhat_xhat[:, None])
        grad_x += tl.load(grad_out_seg + block, mask=j_ok[None, :], other=0.0).to(tl.float32)
        tl.store(grad_x_ptr + seg * N_TOK * d + block, grad_x.to(dtype), mask=j_ok[None, :])


# ----------------------------------------------------------------------------------------------
# Backward: weight gradients (one grouped kernel, fp32 partial sums per batch split) and reduction


@triton.jit
def _grad_linear_weight_tile(
    lhs_ptr, lhs_cols, rhs_ptr, rhs_cols, out_ptr, bias_out_ptr, tile, row_lo, row_hi,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_R: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """out[i, j] = Σ_r lhs[r, i]·rhs[r, j] and bias_out[i] = Σ_r lhs[r, i] over rows [row_lo, row_hi),
    for one (BLOCK_I, BLOCK_J) tile of a Linear's weight gradient (lhs = output grad, rhs = input)."""
    n_tiles_j = tl.cdiv(rhs_cols, BLOCK_J)
    i = (tile // n_tiles_j) * BLOCK_I + tl.arange(0, BLOCK_I)
    j = (tile % n_tiles_j) * BLOCK_J + tl.arange(0, BLOCK_J)
    i_ok = i < lhs_cols
    j_ok = j < rhs_cols
    acc = tl.zeros([BLOCK_I, BLOCK_J], dtype=tl.float32)
    bias = tl.zeros([BLOCK_R, BLOCK_I], dtype=tl.float32)  # reduced over rows once, after the loop
    for r0 in range(row_lo, row_hi, BLOCK_R):
        r = (r0 + tl.arange(0, BLOCK_R)).to(tl.int64)
        lhs = tl.load(lhs_ptr + r[:, None] * lhs_cols + i[None, :], mask=i_ok[None, :], other=0.0)
        rhs = tl.load(rhs_ptr + r[:, None] * rhs_cols + j[None, :], mask=j_ok[None, :], other=0.0)
        acc = tl.dot(tl.trans(lhs), rhs, acc, input_precision=DOT_PRECISION)
        bias += lhs.to(tl.float32)
    tl.store(out_ptr + i[:, None] * rhs_cols + j[None, :], acc, mask=i_ok[:, None] & j_ok[None, :])
    if tile % n_tiles_j == 0:
        tl.store(bias_out_ptr + i, tl.sum(bias, axis=0), mask=i_ok)


@triton.jit
def _grad_token_weight_tile(
    grad_mix_ptr, pre_ptr, stats_ptr, gate_w_ptr, gate_b_ptr, out_ptr, bias_out_ptr, tile, seg_lo, seg_hi, d,
    N_TOK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """dWs[i, j] = Σ_seg Σ_c dS[i, c]·LN_2d(G)[j, c] and dbs[i] = Σ_seg Σ_c dS[i, c], one (BLOCK_T, BLOCK_T)
    tile over segments [seg_lo, seg_hi); LN_2d(G) recomputed from the pre-activations and stats."""
    half = 2 * d
    hidden = 4 * d
    n_tiles_j = N_TOK // BLOCK_T
    i = (tile // n_tiles_j) * BLOCK_T + tl.arange(0, BLOCK_T)
    j = (tile % n_tiles_j) * BLOCK_T + tl.arange(0, BLOCK_T)
    acc = tl.zeros([BLOCK_T, BLOCK_T], dtype=tl.float32)
    bias = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)  # reduced over columns once, after the loops
    for seg in range(seg_lo, seg_hi):
        seg64 = tl.cast(seg, tl.int64)
        mean2 = tl.load(stats_ptr + seg64 * 4 * N_TOK + 2 * N_TOK + j)
        rstd2 = tl.load(stats_ptr + seg64 * 4 * N_TOK + 3 * N_TOK + j)
        for c0 in range(0, half, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            c_ok = c < half
            grad_s = tl.load(grad_mix_ptr + seg64 * N_TOK * half + i[:, None] * half + c[None, :],
                             mask=c_ok[None, :], other=0.0)
            a_g = tl.load(pre_ptr + seg64 * N_TOK * hidden + j[:, None] * hidden + half + c[None, :],
                          mask=c_ok[None, :], other=0.0).to(tl.float32)
            gamma = tl.load(gate_w_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
            beta = tl.load(gate_b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
            gn = (_gelu(a_g) - mean2[:, None]) * rstd2[:, None] * gamma[None, :] + beta[None, :]
            acc = tl.dot(grad_s, tl.trans(gn.to(grad_s.dtype)), acc, input_precision=DOT_PRECISION)
            bias += grad_s.to(tl.float32)
    tl.store(out_ptr + i[:, None] * N_TOK + j[None, :], acc)
    if tile % n_tiles_j == 0:
        tl.store(bias_out_ptr + i, tl.sum(bias, axis=1))


@triton.jit
def _grad_classifier_tile(
    grad_logits_ptr, relu_ptr, out_ptr, bias_out_ptr, tile, seg_lo, seg_hi, n_classes, features,
    BLOCK_B: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_KC: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """dWfc[k, q] = Σ_b dlogits[b, k]·P[b, q] and dbfc[k] = Σ_b dlogits[b, k] over segments
    [seg_lo, seg_hi), for BLOCK_Q features q and every class (BLOCK_KC at a time)."""
    q = tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ok = q < features
    for k0 in range(0, n_classes, BLOCK_KC):
        k = k0 + tl.arange(0, BLOCK_KC)
        k_ok = k < n_classes
        acc = tl.zeros([BLOCK_KC, BLOCK_Q], dtype=tl.float32)
        bias = tl.zeros([BLOCK_B, BLOCK_KC], dtype=tl.float32)  # reduced over segments after the loop
        for b0 in range(seg_lo, seg_hi, BLOCK_B):
            b = (b0 + tl.arange(0, BLOCK_B)).to(tl.int64)
            b_ok = b < seg_hi
            grad = tl.load(grad_logits_ptr + b[:, None] * n_classes + k[None, :], mask=b_ok[:, None] & k_ok[None, :],
                           other=0.0)
            p = tl.load(relu_ptr + b[:, None] * features + q[None, :], mask=b_ok[:, None] & q_ok[None, :], other=0.0)
            acc = tl.dot(tl.trans(grad), p, acc, input_precision=DOT_PRECISION)
            bias += grad.to(tl.float32)
        tl.store(out_ptr + k[:, None] * features + q[None, :], acc, mask=k_ok[:, None] & q_ok[None, :])
        if tile == 0:
            tl.store(bias_out_ptr + k, tl.sum(bias, axis=0), mask=k_ok)


@triton.jit
def _sum_layer_norm_partials(ln_partial_ptr, out_ptr, tile, seg_lo, seg_hi, d, off_gate_norm,
                             BLOCK_L: tl.constexpr):
    """Σ over segments [seg_lo, seg_hi) of the per-segment [dγ_d, dβ_d, dγ_2d, dβ_2d] column sums."""
    col = tile * BLOCK_L + tl.arange(0, BLOCK_L)
    ok = col < 6 * d
    acc = tl.zeros([BLOCK_L], dtype=tl.float32)
    for seg in range(seg_lo, seg_hi):
        acc += tl.load(ln_partial_ptr + tl.cast(seg, tl.int64) * 6 * d + col, mask=ok, other=0.0)
    # [dγ_d, dβ_d] open the flat gradient; [dγ_2d, dβ_2d] sit at off_gate_norm.
    dest = tl.where(col < 2 * d, col, off_gate_norm + col - 2 * d)
    tl.store(out_ptr + dest, acc, mask=ok)


@triton.jit
def _global_fusion_weight_grad_kernel(
    grad_logits_ptr, normed_ptr, gate_w_ptr, gate_b_ptr, pre_ptr, relu_ptr, stats_ptr,
    grad_out_ptr, gated_ptr, grad_mix_ptr, grad_pre_ptr, ln_partial_ptr, partial_ptr,
    n_seg, segs_per_split, d, n_classes, total,
    off_w1, off_gate_norm, off_ws, off_w2, off_fc,
    tiles_w1, tiles_w2, tiles_ws, tiles_fc,
    N_TOK: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_Q: tl.constexpr,
    BLOCK_KC: tl.constexpr, BLOCK_L: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Grid (tiles, splits): program (t, s) writes the fp32 partial sum over split s's segments of
    one tile of one weight gradient into row s of partial (splits, total), laid out as the flat
    gradient (see _flat_layout). Tiles: W1 (+b1), W2 (+b2), Ws (+bs), classifier (+bias), LayerNorms."""
    tile = tl.program_id(0)
    split = tl.program_id(1)
    seg_lo = split * segs_per_split
    seg_hi = tl.minimum(seg_lo + segs_per_split, n_seg)
    out = partial_ptr + split.to(tl.int64) * total
    if tile < tiles_w1:
        _grad_linear_weight_tile(grad_pre_ptr, 4 * d, normed_ptr, d, out + off_w1, out + off_w1 + 4 * d * d,
                                 tile, seg_lo * N_TOK, seg_hi * N_TOK, BLOCK_I, BLOCK_J, BLOCK_R, DOT_PRECISION)
    elif tile < tiles_w1 + tiles_w2:
        _grad_linear_weight_tile(grad_out_ptr, d, gated_ptr, 2 * d, out + off_w2, out + off_w2 + 2 * d * d,
                                 tile - tiles_w1, seg_lo * N_TOK, seg_hi * N_TOK, BLOCK_I, BLOCK_J, BLOCK_R,
                                 DOT_PRECISION)
    elif tile < tiles_w1 + tiles_w2 + tiles_ws:
        _grad_token_weight_tile(grad_mix_ptr, pre_ptr, stats_ptr, gate_w_ptr, gate_b_ptr, out + off_ws,
                                out + off_ws + N_TOK * N_TOK, tile - tiles_w1 - tiles_w2, seg_lo, seg_hi, d,
                                N_TOK, BLOCK_T, BLOCK_C, DOT_PRECISION)
    elif tile < tiles_w1 + tiles_w2 + tiles_ws + tiles_fc:
        _grad_classifier_tile(grad_logits_ptr, relu_ptr, out + off_fc, out + off_fc + n_classes * N_TOK * d,
                              tile - tiles_w1 - tiles_w2 - tiles_ws, seg_lo, seg_hi, n_classes, N_TOK * d,
                              BLOCK_B, BLOCK_Q, BLOCK_KC, DOT_PRECISION)
    else:
        _sum_layer_norm_partials(ln_partial_ptr, out, tile - tiles_w1 - tiles_w2 - tiles_ws - tiles_fc,
                                 seg_lo, seg_hi, d, off_gate_norm, BLOCK_L)


@triton.jit
def _global_fusion_reduce_kernel(partial_ptr, out_ptr, n_split, total, BLOCK: tl.constexpr):
    """out[i] = Σ_s partial[s, i] in split order (deterministic), cast to out's dtype."""
    col = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = col < total
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(0, n_split):
        acc += tl.load(partial_ptr + s * total + col, mask=ok, other=0.0)
    tl.store(out_ptr + col, acc.to(out_ptr.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------------------------
# Launch configuration (shared by the launchers and the compile report)

_PARAM_NAMES = (
    "norm_weight", "norm_bias", "proj_in_weight", "proj_in_bias", "gate_norm_weight", "gate_norm_bias",
    "token_weight", "token_bias", "proj_out_weight", "proj_out_bias", "fc_weight", "fc_bias",
)


def _dot_precision(dtype: torch.dtype) -> str:
    # The head is linear layers: fp32 GEMMs use TF32 tensor cores only where PyTorch's own matmuls
    # would (torch.backends.cuda.matmul.allow_tf32, off by default). Half-precision inputs ignore it.
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _token_dim_pad(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _classes_pad(n_classes: int) -> int:
    return max(16, triton.next_power_of_2(n_classes))


# num_warps / num_stages of each kernel, for every dtype (the compile report checks exactly these).
_LAUNCH = {
    "forward": {"num_warps": 8, "num_stages": 2},
    "backward": {"num_warps": 8, "num_stages": 2},
    "weight_grad": {"num_warps": 8, "num_stages": 2},
    "reduce": {"num_warps": 4, "num_stages": 1},
}


def _flat_layout(d: int, n_classes: int) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Offset and shape of each parameter's gradient in the flat gradient buffer (argument order;
    each bias right after its weight, which the weight-gradient kernel relies on)."""
    shapes = {
        "norm_weight": (d,), "norm_bias": (d,),
        "proj_in_weight": (4 * d, d), "proj_in_bias": (4 * d,),
        "gate_norm_weight": (2 * d,), "gate_norm_bias": (2 * d,),
        "token_weight": (N_TOKENS, N_TOKENS), "token_bias": (N_TOKENS,),
        "proj_out_weight": (d, 2 * d), "proj_out_bias": (d,),
        "fc_weight": (n_classes, N_TOKENS * d), "fc_bias": (n_classes,),
    }
    layout, offset = {}, 0
    for name in _PARAM_NAMES:
        layout[name] = (offset, shapes[name])
        offset += int(torch.Size(shapes[name]).numel())
    layout["total"] = (offset, ())
    return layout


def _weight_grad_tiles(d: int) -> dict[str, int]:
    t = _GRAD_TILES
    return {
        "tiles_w1": triton.cdiv(4 * d, t["BLOCK_I"]) * triton.cdiv(d, t["BLOCK_J"]),
        "tiles_w2": triton.cdiv(d, t["BLOCK_I"]) * triton.cdiv(2 * d, t["BLOCK_J"]),
        "tiles_ws": (N_TOKENS // t["BLOCK_T"]) ** 2,
        "tiles_fc": triton.cdiv(N_TOKENS * d, t["BLOCK_Q"]),
        "tiles_ln": triton.cdiv(6 * d, t["BLOCK_L"]),
    }


def _batch_splits(n_seg: int) -> tuple[int, int]:
    """(segments per split, splits): a function of the batch size only, so results are reproducible."""
    per_split = max(_MIN_SEGMENTS_PER_SPLIT, triton.cdiv(n_seg, _MAX_SPLITS))
    return per_split, triton.cdiv(n_seg, per_split)


# ----------------------------------------------------------------------------------------------
# Argument checks (before any launch)


def _check_arguments(tensors: tuple[torch.Tensor, ...]) -> tuple[int, int, int]:
    """Shapes, devices and dtypes of global_fusion_head's 13 tensor arguments; returns (B, d, K)."""
    names = ("x", *_PARAM_NAMES)
    if len(tensors) != len(names):
        raise TypeError(f"global_fusion_head takes {len(names)} tensors ({', '.join(names)}), got {len(tensors)}")
    for name, t in zip(names, tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"global_fusion_head: {name} must be a torch.Tensor, got {type(t).__name__}")
    x, fc_weight = tensors[0], tensors[11]
    if x.dim() != 3 or x.shape[1] != N_TOKENS or x.shape[0] == 0 or x.shape[2] == 0:
        raise ValueError(f"global_fusion_head: x must have shape (B, {N_TOKENS}, d) with B, d >= 1, "
                         f"got {tuple(x.shape)}")
    n_seg, d = x.shape[0], x.shape[2]
    if d > MAX_TOKEN_DIM:
        raise ValueError(f"global_fusion_head: token size d = {d} is larger than the supported {MAX_TOKEN_DIM}")
    if fc_weight.dim() != 2 or fc_weight.shape[0] < 1:
        raise ValueError(f"global_fusion_head: fc_weight must have shape (K, {N_TOKENS * d}) with K >= 1, "
                         f"got {tuple(fc_weight.shape)}")
    n_classes = fc_weight.shape[0]
    expected = {name: shape for name, (_, shape) in _flat_layout(d, n_classes).items() if name != "total"}
    for name, t in zip(names[1:], tensors[1:]):
        if tuple(t.shape) != expected[name]:
            raise ValueError(f"global_fusion_head: {name} must have shape {expected[name]} for x of shape "
                             f"{tuple(x.shape)} and {n_classes} classes, got {tuple(t.shape)}")
    device = check_same_device("global_fusion_head", **dict(zip(names, tensors)))
    if device.type != "cuda" and not (device.type == "cpu" and interpreting()):
        raise ValueError(f"global_fusion_head runs Triton kernels: it needs CUDA tensors (or CPU tensors with "
                         f"TRITON_INTERPRET=1), got tensors on {device}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"global_fusion_head: x must be float32, float16 or bfloat16, got {x.dtype}")
    mismatched = {name: t.dtype for name, t in zip(names, tensors) if t.dtype != x.dtype}
    if mismatched:
        raise TypeError(f"global_fusion_head: every tensor must have x's dtype {x.dtype} (or run under "
                        f"torch.autocast), got {mismatched}")
    return n_seg, d, n_classes


# ----------------------------------------------------------------------------------------------
# Host launchers


def _device_context(device: torch.device):
    """Launch on the tensors' GPU (not the current one) when there are several."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def global_fusion_forward(x, *params):
    """Forward launcher: (x, 12 parameters) -> (logits (B, K), and saved for the backward: Z = LN_d(X)
    (B, 128, d), pre-activations A (B, 128, 4d), T = tanh(S) and V = T·R (B, 128, 2d), P = ReLU(X + Y)
    (B, 128, d), LayerNorm statistics (B, 4, 128) fp32: mean_d, rstd_d, mean_2d, rstd_2d).
    One kernel launch."""
    tensors = tuple(t.contiguous() for t in (x, *params))
    n_seg, d, n_classes = _check_arguments(tensors)
    x = tensors[0]
    logits = empty_output((n_seg, n_classes), dtype=x.dtype, device=x.device)
    normed = empty_output((n_seg, N_TOKENS, d), dtype=x.dtype, device=x.device)
    pre = empty_output((n_seg, N_TOKENS, 4 * d), dtype=x.dtype, device=x.device)
    gate_tanh = empty_output((n_seg, N_TOKENS, 2 * d), dtype=x.dtype, device=x.device)
    gated = empty_output((n_seg, N_TOKENS, 2 * d), dtype=x.dtype, device=x.device)
    relu_out = empty_output((n_seg, N_TOKENS, d), dtype=x.dtype, device=x.device)
    stats = empty_output((n_seg, 4, N_TOKENS), dtype=torch.float32, device=x.device)
    with _device_context(x.device):
        _global_fusion_forward_kernel[(n_seg,)](
            *tensors, logits, normed, pre, gate_tanh, gated, relu_out, stats, d, n_classes, LAYER_NORM_EPS,
            N_TOK=N_TOKENS, D_PAD=_token_dim_pad(d), K_PAD=_classes_pad(n_classes), LN_ROWS=_LN_ROWS,
            BLOCK_N=_BLOCK_N, BLOCK_K=_BLOCK_K, BLOCK_C=_BLOCK_C, BLOCK_D=_BLOCK_D,
            DOT_PRECISION=_dot_precision(x.dtype), **_LAUNCH["forward"],
        )
    return logits, normed, pre, gate_tanh, gated, relu_out, stats


def global_fusion_backward(grad_logits, x, *params_and_saved):
    """Backward launcher: (grad_logits (B, K), x, 12 parameters, and the forward's normed, pre,
    gate_tanh, gated, relu_out, stats) ->
    (grad_x (B, 128, d), flat parameter gradient (total,) in x's dtype, laid out by _flat_layout).
    Three kernel launches."""
    params, (normed, pre, gate_tanh, gated, relu_out, stats) = params_and_saved[:12], params_and_saved[12:]
    tensors = tuple(t.contiguous() for t in (x, *params))
    n_seg, d, n_classes = _check_arguments(tensors)
    x = tensors[0]
    if grad_logits.shape != (n_seg, n_classes) or grad_logits.dtype != x.dtype:
        raise ValueError(f"global_fusion_head backward: grad_logits must be {x.dtype} of shape {(n_seg, n_classes)}, "
                         f"got {grad_logits.dtype} {tuple(grad_logits.shape)}")
    grad_logits = grad_logits.contiguous()
    norm_w, _norm_b, w1, _b1, gate_w, gate_b, ws, _bs, w2, _b2, fc_w, _fc_b = tensors[1:]
    device, dtype = x.device, x.dtype
    precision = _dot_precision(dtype)
    grad_x = empty_output(x.shape, dtype=dtype, device=device)
    grad_out = empty_output((n_seg, N_TOKENS, d), dtype=dtype, device=device)
    grad_mix = empty_output((n_seg, N_TOKENS, 2 * d), dtype=dtype, device=device)
    grad_pre = empty_output((n_seg, N_TOKENS, 4 * d), dtype=dtype, device=device)
    grad_xhat = empty_output((n_seg, N_TOKENS, d), dtype=torch.float32, device=device)
    ln_partial = empty_output((n_seg, 6 * d), dtype=torch.float32, device=device)
    layout = _flat_layout(d, n_classes)
    total = layout["total"][0]
    per_split, n_split = _batch_splits(n_seg)
    partial = empty_output((n_split, total), dtype=torch.float32, device=device)
    grad_params = empty_output((total,), dtype=dtype, device=device)
    tiles = _weight_grad_tiles(d)
    with _device_context(device):
        _global_fusion_backward_kernel[(n_seg,)](
            grad_logits, x, norm_w, w1, gate_w, ws, w2, fc_w, pre, gate_tanh, relu_out, stats,
            grad_x, grad_out, grad_mix, grad_pre, grad_xhat, ln_partial, d, n_classes,
            N_TOK=N_TOKENS, BLOCK_C=_BWD_BLOCK_C, BLOCK_D=_BWD_BLOCK_D, DOT_PRECISION=precision,
            **_LAUNCH["backward"],
        )
        _global_fusion_weight_grad_kernel[(sum(tiles.values()), n_split)](
            grad_logits, normed, gate_w, gate_b, pre, relu_out, stats,
            grad_out, gated, grad_mix, grad_pre, ln_partial, partial,
            n_seg, per_split, d, n_classes, total,
            layout["proj_in_weight"][0], layout["gate_norm_weight"][0], layout["token_weight"][0],
            layout["proj_out_weight"][0], layout["fc_weight"][0],
            tiles["tiles_w1"], tiles["tiles_w2"], tiles["tiles_ws"], tiles["tiles_fc"],
            N_TOK=N_TOKENS, BLOCK_C=_BLOCK_C, DOT_PRECISION=precision, **_GRAD_TILES,
            **_LAUNCH["weight_grad"],
        )
        _global_fusion_reduce_kernel[(triton.cdiv(total, _REDUCE_BLOCK),)](
            partial, grad_params, n_split, total, BLOCK=_REDUCE_BLOCK, **_LAUNCH["reduce"],
        )
    return grad_x, grad_params


# ----------------------------------------------------------------------------------------------
# torch.library registration: a forward op returning the logits and what the backward needs, a
# backward op, and the autograd formula joining them.


@torch.library.custom_op("glam_fast::global_fusion_head_forward", mutates_args=())
def _global_fusion_head_forward_op(
    x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, proj_in_weight: torch.Tensor,
    proj_in_bias: torch.Tensor, gate_norm_weight: torch.Tensor, gate_norm_bias: torch.Tensor,
    token_weight: torch.Tensor, token_bias: torch.Tensor, proj_out_weight: torch.Tensor,
    proj_out_bias: torch.Tensor, fc_weight: torch.Tensor, fc_bias: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return global_fusion_forward(
        x, norm_weight, norm_bias, proj_in_weight, proj_in_bias, gate_norm_weight, gate_norm_bias,
        token_weight, token_bias, proj_out_weight, proj_out_bias, fc_weight, fc_bias,
    )


@_global_fusion_head_forward_op.register_fake
def _(x, norm_weight, norm_bias, proj_in_weight, proj_in_bias, gate_norm_weight, gate_norm_bias,
      token_weight, token_bias, proj_out_weight, proj_out_bias, fc_weight, fc_bias):
    n_seg, d = x.shape[0], x.shape[2]
    _check_arguments((x, norm_weight, norm_bias, proj_in_weight, proj_in_bias, gate_norm_weight, gate_norm_bias,
                      token_weight, token_bias, proj_out_weight, proj_out_bias, fc_weight, fc_bias))
    return (
        x.new_empty((n_seg, fc_weight.shape[0])),
        x.new_empty((n_seg, N_TOKENS, d)),
        x.new_empty((n_seg, N_TOKENS, 4 * d)),
        x.new_empty((n_seg, N_TOKENS, 2 * d)),
        x.new_empty((n_seg, N_TOKENS, 2 * d)),
        x.new_empty((n_seg, N_TOKENS, d)),
        x.new_empty((n_seg, 4, N_TOKENS), dtype=torch.float32),
    )


@torch.library.custom_op("glam_fast::global_fusion_head_backward", mutates_args=())
def _global_fusion_head_backward_op(
    grad_logits: torch.Tensor, x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
    proj_in_weight: torch.Tensor, proj_in_bias: torch.Tensor, gate_norm_weight: torch.Tensor,
    gate_norm_bias: torch.Tensor, token_weight: torch.Tensor, token_bias: torch.Tensor,
    proj_out_weight: torch.Tensor, proj_out_bias: torch.Tensor, fc_weight: torch.Tensor, fc_bias: torch.Tensor,
    normed: torch.Tensor, pre: torch.Tensor, gate_tanh: torch.Tensor, gated: torch.Tensor, relu_out: torch.Tensor,
    stats: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    return global_fusion_backward(
        grad_logits, x, norm_weight, norm_bias, proj_in_weight, proj_in_bias, gate_norm_weight, gate_norm_bias,
        token_weight, token_bias, proj_out_weight, proj_out_bias, fc_weight, fc_bias, normed, pre, gate_tanh, gated,
        relu_out, stats,
    )


@_global_fusion_head_backward_op.register_fake
def _(grad_logits, x, norm_weight, norm_bias, proj_in_weight, proj_in_bias, gate_norm_weight, gate_norm_bias,
      token_weight, token_bias, proj_out_weight, proj_out_bias, fc_weight, fc_bias, normed, pre, gate_tanh, gated,
      relu_out, stats):
    total = _flat_layout(x.shape[2], fc_weight.shape[0])["total"][0]
    return x.new_empty(x.shape), x.new_empty((total,))


def _setup_context(ctx, inputs, output):
    _logits, *saved = output
    ctx.mark_non_differentiable(*saved)
    ctx.save_for_backward(*inputs, *saved)


def _backward(ctx, grad_logits, *_grad_saved):
    saved = ctx.saved_tensors
    x, fc_weight = saved[0], saved[11]
    grad_x, flat = _global_fusion_head_backward_op(grad_logits, *saved)
    layout = _flat_layout(x.shape[2], fc_weight.shape[0])
    grads = [flat[offset:offset + torch.Size(shape).numel()].view(shape)
             for offset, shape in (layout[name] for name in _PARAM_NAMES)]
    return (grad_x, *grads)


torch.library.register_autograd("glam_fast::global_fusion_head_forward", _backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Public API


def global_fusion_head(x, norm_weight, norm_bias, proj_in_weight, proj_in_bias, gate_norm_weight, gate_norm_bias,
                       token_weight, token_bias, proj_out_weight, proj_out_bias, fc_weight, fc_bias):
    """GLAM's head, fused: ``fc(ReLU(X + gMLP(LN(X))).flatten(1))``.

    Args (GLAM's parameter names in brackets, ``g.`` = ``gmlp.layers.0.fn.``):
        x: (B, 128, d) conv5 output flattened over H·W.
        norm_weight, norm_bias: (d,) [g.norm].
        proj_in_weight (4d, d), proj_in_bias (4d,) [g.fn.fn.proj_in.0].
        gate_norm_weight, gate_norm_bias: (2d,) [g.fn.fn.sgu.norm].
        token_weight (128, 128), token_bias (128,) [g.fn.fn.sgu.weight[0], g.fn.fn.sgu.bias[0]].
        proj_out_weight (d, 2d), proj_out_bias (d,) [g.fn.fn.proj_out].
        fc_weight (K, 128·d), fc_bias (K,) [fc].

    All tensors on one CUDA device (or the CPU under TRITON_INTERPRET=1), of one dtype: float32,
    float16 or bfloat16; under ``torch.autocast`` they are first cast to the autocast dtype.
    Returns logits (B, K) in that dtype. Differentiable w.r.t. every argument.
    """
    tensors = (x, norm_weight, norm_bias, proj_in_weight, proj_in_bias, gate_norm_weight, gate_norm_bias,
               token_weight, token_bias, proj_out_weight, proj_out_bias, fc_weight, fc_bias)
    if isinstance(x, torch.Tensor) and torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        tensors = tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors)
    _check_arguments(tensors)
    return _global_fusion_head_forward_op(*tensors)[0]


def global_fusion_head_ref(x, norm_weight, norm_bias, proj_in_weight, proj_in_bias, gate_norm_weight, gate_norm_bias,
                           token_weight, token_bias, proj_out_weight, proj_out_bias, fc_weight, fc_bias):
    """Plain-PyTorch GLAM head with the same signature: the numerics global_fusion_head must match."""
    d = x.shape[-1]
    z = F.layer_norm(x, (d,), norm_weight, norm_bias, LAYER_NORM_EPS)
    res, gate = F.gelu(F.linear(z, proj_in_weight, proj_in_bias)).chunk(2, dim=-1)
    gate = F.layer_norm(gate, (2 * d,), gate_norm_weight, gate_norm_bias, LAYER_NORM_EPS)
    gate = torch.matmul(token_weight, gate) + token_bias[:, None]
    y = F.linear(torch.tanh(gate) * res, proj_out_weight, proj_out_bias)
    return F.linear(F.relu(y + x).flatten(1), fc_weight, fc_bias)


# ----------------------------------------------------------------------------------------------
# Compile report: every kernel at the configurations its launcher uses, at GLAM's token sizes
# (d = 182 and 195 both pad to D_PAD = 256, a smaller d only shrinks it) and up to 16 classes.

_TRITON_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _signature(pointer: str, pointers: str, fp32_pointers: str = "", ints: str = "", constexprs: dict = ()) -> dict:
    sig = {name: pointer for name in pointers.split()}
    sig.update({name: "*fp32" for name in fp32_pointers.split()})
    sig.update({name: "i32" for name in ints.split()})
    sig.update({name: "constexpr" for name in constexprs})
    return sig


@register_compile_specs
def _compile_specs():
    for dtype, ty in _TRITON_DTYPE.items():
        p = f"*{ty}"
        dot = {"DOT_PRECISION": _dot_precision(dtype)}
        const = dict(N_TOK=N_TOKENS, D_PAD=MAX_TOKEN_DIM, K_PAD=_classes_pad(1), LN_ROWS=_LN_ROWS,
                     BLOCK_N=_BLOCK_N, BLOCK_K=_BLOCK_K, BLOCK_C=_BLOCK_C, BLOCK_D=_BLOCK_D, **dot)
        sig = _signature(p, "x_ptr norm_w_ptr norm_b_ptr w1_ptr b1_ptr gate_w_ptr gate_b_ptr ws_ptr bs_ptr w2_ptr "
                            "b2_ptr fc_w_ptr fc_b_ptr logits_ptr normed_ptr pre_ptr gate_tanh_ptr gated_ptr relu_ptr",
                         "stats_ptr", "d n_classes", const)
        sig["eps"] = "fp32"
        yield KernelSpec("global_fusion", f"_global_fusion_forward_kernel[{ty}]", _global_fusion_forward_kernel,
                         sig, const, **_LAUNCH["forward"])

        const = dict(N_TOK=N_TOKENS, BLOCK_C=_BWD_BLOCK_C, BLOCK_D=_BWD_BLOCK_D, **dot)
        sig = _signature(p, "grad_logits_ptr x_ptr norm_w_ptr w1_ptr gate_w_ptr ws_ptr w2_ptr fc_w_ptr "
                            "pre_ptr gate_tanh_ptr relu_ptr grad_x_ptr grad_out_ptr grad_mix_ptr grad_pre_ptr",
                         "stats_ptr grad_xhat_ptr ln_partial_ptr", "d n_classes", const)
        yield KernelSpec("global_fusion", f"_global_fusion_backward_kernel[{ty}]", _global_fusion_backward_kernel,
                         sig, const, **_LAUNCH["backward"])

        const = dict(N_TOK=N_TOKENS, BLOCK_C=_BLOCK_C, **_GRAD_TILES, **dot)
        sig = _signature(p, "grad_logits_ptr normed_ptr gate_w_ptr gate_b_ptr pre_ptr relu_ptr grad_out_ptr "
                            "gated_ptr grad_mix_ptr grad_pre_ptr", "stats_ptr ln_partial_ptr partial_ptr",
                         "n_seg segs_per_split d n_classes total off_w1 off_gate_norm off_ws off_w2 off_fc "
                         "tiles_w1 tiles_w2 tiles_ws tiles_fc", const)
        yield KernelSpec("global_fusion", f"_global_fusion_weight_grad_kernel[{ty}]",
                         _global_fusion_weight_grad_kernel, sig, const, **_LAUNCH["weight_grad"])

        const = {"BLOCK": _REDUCE_BLOCK}
        sig = _signature(p, "out_ptr", "partial_ptr", "n_split total", const)
        yield KernelSpec("global_fusion", f"_global_fusion_reduce_kernel[{ty}]", _global_fusion_reduce_kernel,
                         sig, const, **_LAUNCH["reduce"])
