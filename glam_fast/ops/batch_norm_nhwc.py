"""BatchNorm + ReLU (+ 2x2 max-pool) on channels-last conv outputs, forward and backward, and the
running-statistics update: the training-mode half of GLAM's conv stages.

In training the conv kernel (:mod:`glam_fast.ops.conv2d_nhwc`) stores the pre-BatchNorm output y
(B, H, W, N) and per-tile moments; after :func:`glam_fast.ops.partial_sums.combine_moments` gives
(mean, var), these kernels finish the layer:

* :func:`bn_relu_pool` -- z = max-pool(ReLU(gamma * (y - mean) / sqrt(var + eps) + beta)), one pass;
* :func:`bn_relu_pool_backward` -- from dL/dz: the gradient dL/dy, and dL/dgamma, dL/dbeta. Pass 1
  routes the gradient through the pool (the argmax is recomputed from y, PyTorch's tie rule: first
  maximum in row-major window order) and the ReLU, stores it as dz, and writes per-tile sums of dz
  and dz * xhat; pass 2 (after a deterministic reduction) applies BatchNorm's backward
  dy = gamma * invstd * (dz - mean(dz) - xhat * mean(dz * xhat)) (without the two means when the
  statistics were the running ones);
* :func:`update_running_stats_` -- the ``glam_fast::batch_norm_update_running_stats_`` op:
  running = (1 - momentum) * running + momentum * batch, with the unbiased batch variance, as
  ``torch.nn.BatchNorm2d`` does.

Statistics (mean, var) are fp32 vectors; gamma/beta/running buffers may be any float dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from glam_fast.kernels import KernelSpec
from glam_fast.ops.partial_sums import sum_partials
from glam_fast.ops.utils import empty_output

_TILE = 2048  # elements per program: pixels (or pooling windows) x channels
_NUM_WARPS = 4
_FORWARD_NUM_WARPS = 8  # the forward's pooled epilogue spills a register at 4 warps (sm_80, N = 128)
_UPDATE_BLOCK = 128


@triton.jit
def _bn_affine(mean_ptr, var_ptr, gamma_ptr, beta_ptr, offs_n, n_ok, eps):
    """Per-channel (scale, shift, invstd) of y -> gamma * (y - mean) * invstd + beta."""
    mean = tl.load(mean_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    invstd = 1.0 / tl.sqrt_rn(tl.load(var_ptr + offs_n, mask=n_ok, other=1.0).to(tl.float32) + eps)
    scale = tl.load(gamma_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32) * invstd
    shift = tl.load(beta_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32) - mean * scale
    return scale, shift, invstd


@triton.jit
def _bn_relu_pool_forward_kernel(
    y_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, out_ptr,
    H, W, N, M_out, eps,
    stride_ob, stride_oh, stride_ow, stride_on,
    POOL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """out[pixel] = ReLU(scale * y + shift), max over each 2x2 window when POOL. y: (B*H*W, N)."""
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    scale, shift, _ = _bn_affine(mean_ptr, var_ptr, gamma_ptr, beta_ptr, offs_n, n_ok, eps)
    q = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ok = q < M_out
    mask = ok[:, None] & n_ok[None, :]
    if POOL:
        Ho = H // 2
        Wo = W // 2
        b = q // (Ho * Wo)
        ho = (q % (Ho * Wo)) // Wo
        wo = q % Wo
        top_left = (b * H + 2 * ho) * W + 2 * wo
        z = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)  # ReLU outputs are >= 0
        for pixel_offset in tl.static_range(4):
            pixel = top_left + (pixel_offset // 2) * W + pixel_offset % 2
            y = tl.load(y_ptr + pixel[:, None] * N + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
            z = tl.maximum(z, y * scale[None, :] + shift[None, :])
        out_offsets = b * stride_ob + ho * stride_oh + wo * stride_ow
    else:
        y = tl.load(y_ptr + q[:, None] * N + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
        z = tl.maximum(y * scale[None, :] + shift[None, :], 0.0)
        b = q // (H * W)
        out_offsets = b * stride_ob + ((q % (H * W)) // W) * stride_oh + (q % W) * stride_ow
    tl.store(out_ptr + out_offsets[:, None] + offs_n[None, :] * stride_on, z.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _route_grad(dz_ptr, y_ptr, pixel, ok, g, chosen, scale, shift, mean, invstd, offs_n, n_ok, N, acc_dz, acc_dzx):
    """dz = g where this pixel is the pool's choice and BN(y) > 0 (ReLU), else 0; store dz and
    accumulate sum(dz), sum(dz * xhat)."""
    mask = ok[:, None] & n_ok[None, :]
    y = tl.load(y_ptr + pixel[:, None] * N + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    dz = tl.where(chosen & (y * scale[None, :] + shift[None, :] > 0.0), g, 0.0)
    tl.store(dz_ptr + pixel[:, None] * N + offs_n[None, :], dz.to(dz_ptr.dtype.element_ty), mask=mask)
    dz = tl.where(mask, dz, 0.0)
    return acc_dz + dz, acc_dzx + dz * (y - mean[None, :]) * invstd[None, :]


@triton.jit
def _bn_relu_pool_backward_kernel(
    g_ptr, y_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, dz_ptr, partial_ptr,
    H, W, N, M_win, eps,
    stride_gb, stride_gh, stride_gw, stride_gn,
    POOL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Pass 1 of the backward: dz (B*H*W, N) for every pixel, and partial[t] = [sum dz ; sum dz*xhat]
    over this tile. With POOL, the tile walks the ceil(H/2) x ceil(W/2) windows so that pixels the
    floor pool drops (last row/column of an odd size) get dz = 0 too."""
    pid = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    scale, shift, invstd = _bn_affine(mean_ptr, var_ptr, gamma_ptr, beta_ptr, offs_n, n_ok, eps)
    mean = tl.load(mean_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    q = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    ok = q < M_win
    acc_dz = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc_dzx = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    if POOL:
        Hc = (H + 1) // 2
        Wc = (W + 1) // 2
        b = q // (Hc * Wc)
        i = (q % (Hc * Wc)) // Wc
        j = q % Wc
        pooled = ok & (i < H // 2) & (j < W // 2)
        g_mask = pooled[:, None] & n_ok[None, :]
        g = tl.load(g_ptr + (b * stride_gb + i * stride_gh + j * stride_gw)[:, None] + offs_n[None, :] * stride_gn, mask=g_mask, other=0.0).to(tl.float32)
        top_left = (b * H + 2 * i) * W + 2 * j
        # argmax of ReLU(BN(y)) over the window, first maximum wins (as PyTorch's max_pool2d)
        best = tl.full((BLOCK_M, BLOCK_N), -1.0, tl.float32)
        choice = tl.zeros((BLOCK_M, BLOCK_N), tl.int32)
        for s in tl.static_range(4):
            pixel = top_left + (s // 2) * W + s % 2
            inside = ok & (2 * i + s // 2 < H) & (2 * j + s % 2 < W)
            y = tl.load(y_ptr + pixel[:, None] * N + offs_n[None, :], mask=inside[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
            z = tl.maximum(y * scale[None, :] + shift[None, :], 0.0)
            better = z > best
            best = tl.where(better, z, best)
            choice = tl.where(better, s, choice)
        for s in tl.static_range(4):
            pixel = top_left + (s // 2) * W + s % 2
            inside = ok & (2 * i + s // 2 < H) & (2 * j + s % 2 < W)
            acc_dz, acc_dzx = _route_grad(dz_ptr, y_ptr, pixel, inside, g, choice == s, scale, shift, mean, invstd, offs_n, n_ok, N, acc_dz, acc_dzx)
    else:
        b = q // (H * W)
        g_offsets = b * stride_gb + ((q % (H * W)) // W) * stride_gh + (q % W) * stride_gw
        g = tl.load(g_ptr + g_offsets[:, None] + offs_n[None, :] * stride_gn, mask=ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
        acc_dz, acc_dzx = _route_grad(dz_ptr, y_ptr, q, ok, g, True, scale, shift, mean, invstd, offs_n, n_ok, N, acc_dz, acc_dzx)
    tl.store(partial_ptr + pid * 2 * N + offs_n, tl.sum(acc_dz, axis=0), mask=n_ok)
    tl.store(partial_ptr + pid * 2 * N + N + offs_n, tl.sum(acc_dzx, axis=0), mask=n_ok)


@triton.jit
def _bn_backward_input_kernel(
    dz_ptr, y_ptr, mean_ptr, var_ptr, gamma_ptr, sums_ptr, dy_ptr, M, N, eps,
    BATCH_STATS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Pass 2: dy = gamma * invstd * (dz - mean(dz) - xhat * mean(dz * xhat)); the two means are
    batch-statistics terms (absent when BN used its running statistics)."""
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    q = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask = (q < M)[:, None] & n_ok[None, :]
    invstd = 1.0 / tl.sqrt_rn(tl.load(var_ptr + offs_n, mask=n_ok, other=1.0).to(tl.float32) + eps)
    gain = tl.load(gamma_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32) * invstd
    dz = tl.load(dz_ptr + q[:, None] * N + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    if BATCH_STATS:
        count = M.to(tl.float32)
        mean_dz = tl.load(sums_ptr + offs_n, mask=n_ok, other=0.0) / count
        mean_dzx = tl.load(sums_ptr + N + offs_n, mask=n_ok, other=0.0) / count
        mean = tl.load(mean_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + q[:, None] * N + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
        xhat = (y - mean[None, :]) * invstd[None, :]
        dy = gain[None, :] * (dz - mean_dz[None, :] - xhat * mean_dzx[None, :])
    else:
        dy = gain[None, :] * dz
    tl.store(dy_ptr + q[:, None] * N + offs_n[None, :], dy.to(dy_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _update_running_stats_kernel(running_mean_ptr, running_var_ptr, mean_ptr, var_ptr, N, momentum, unbias, BLOCK_N: tl.constexpr):
    offs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = offs < N
    rm = tl.load(running_mean_ptr + offs, mask=ok).to(tl.float32)
    rv = tl.load(running_var_ptr + offs, mask=ok).to(tl.float32)
    mean = tl.load(mean_ptr + offs, mask=ok)
    var = tl.load(var_ptr + offs, mask=ok) * unbias
    tl.store(running_mean_ptr + offs, (momentum * mean + (1.0 - momentum) * rm).to(running_mean_ptr.dtype.element_ty), mask=ok)
    tl.store(running_var_ptr + offs, (momentum * var + (1.0 - momentum) * rv).to(running_var_ptr.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------------------------
# Host side


def _blocks(n: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) for N channels: all channels of a pixel in one program, _TILE elements."""
    block_n = min(128, max(16, triton.next_power_of_2(n)))
    return _TILE // block_n, block_n


def _out_strides(out: torch.Tensor, channels_first: bool) -> tuple[int, int, int, int]:
    """(b, h, w, n) strides of an output stored (B, N, H, W) or (B, H, W, N)."""
    return (out.stride(0), out.stride(2), out.stride(3), out.stride(1)) if channels_first else tuple(out.stride())


def bn_relu_pool(y, mean, var, gamma, beta, eps: float, *, pool: bool, channels_first_out: bool = False) -> torch.Tensor:
    """ReLU(BatchNorm(y)) [2x2 max-pool]. y: (B, H, W, N) contiguous; mean/var (N,) fp32; gamma,
    beta (N,). Returns (B, Ho, Wo, N), or (B, N, Ho, Wo) with ``channels_first_out``, in y's dtype."""
    batch, height, width, n = y.shape
    out_h, out_w = (height // 2, width // 2) if pool else (height, width)
    shape = (batch, n, out_h, out_w) if channels_first_out else (batch, out_h, out_w, n)
    out = empty_output(shape, dtype=y.dtype, device=y.device)
    m_out = batch * out_h * out_w
    block_m, block_n = _blocks(n)
    grid = (triton.cdiv(m_out, block_m), triton.cdiv(n, block_n))
    _bn_relu_pool_forward_kernel[grid](
        y, mean, var, gamma, beta, out, height, width, n, m_out, eps, *_out_strides(out, channels_first_out),
        POOL=pool, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=_FORWARD_NUM_WARPS,
    )  # fmt: skip
    return out


def bn_relu_pool_backward(grad_out, y, mean, var, gamma, beta, eps: float, *, pool: bool, batch_stats: bool, channels_first_out: bool = False):
    """Backward of :func:`bn_relu_pool` w.r.t. y, gamma and beta.

    grad_out: the gradient of the output (its layout as :func:`bn_relu_pool` wrote it, any strides).
    Returns (dy (B, H, W, N) in y's dtype, dgamma (N,) fp32, dbeta (N,) fp32). ``batch_stats``:
    whether mean/var were this batch's statistics (training) or running statistics.
    """
    batch, height, width, n = y.shape
    if pool:
        m_win = batch * ((height + 1) // 2) * ((width + 1) // 2)
    else:
        m_win = batch * height * width
    block_m, block_n = _blocks(n)
    tiles = triton.cdiv(m_win, block_m)
    dz = empty_output(y.shape, dtype=y.dtype, device=y.device)
    partial = empty_output((tiles, 2 * n), dtype=torch.float32, device=y.device)
    _bn_relu_pool_backward_kernel[(tiles, triton.cdiv(n, block_n))](
        grad_out, y, mean, var, gamma, beta, dz, partial, height, width, n, m_win, eps,
        *_out_strides(grad_out, channels_first_out), POOL=pool, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=_NUM_WARPS,
    )  # fmt: skip
    sums = sum_partials(partial)  # [sum dz ; sum dz * xhat]
    m = batch * height * width
    dy = empty_output(y.shape, dtype=y.dtype, device=y.device)
    _bn_backward_input_kernel[(triton.cdiv(m, block_m), triton.cdiv(n, block_n))](
        dz, y, mean, var, gamma, sums, dy, m, n, eps, BATCH_STATS=batch_stats, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=_NUM_WARPS
    )
    return dy, sums[n:].clone(), sums[:n].clone()


@torch.library.custom_op("glam_fast::batch_norm_update_running_stats_", mutates_args=("running_mean", "running_var"))
def update_running_stats_(
    running_mean: torch.Tensor, running_var: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, count: int, momentum: float
) -> None:
    """running = (1 - momentum) * running + momentum * batch statistic, in place, with the
    unbiased variance var * count / (count - 1) (``count`` = values per channel), as PyTorch."""
    n = running_mean.numel()
    if count < 2:
        raise ValueError(f"BatchNorm in training needs more than 1 value per channel, got {count}")
    _update_running_stats_kernel[(triton.cdiv(n, _UPDATE_BLOCK),)](
        running_mean, running_var, mean, var, n, momentum, count / (count - 1), BLOCK_N=_UPDATE_BLOCK, num_warps=_NUM_WARPS
    )


@update_running_stats_.register_fake
def _(running_mean, running_var, mean, var, count, momentum):
    return None


def bn_relu_pool_ref(y, mean, var, gamma, beta, eps, *, pool):
    """Reference of :func:`bn_relu_pool` (NHWC in and out)."""
    z = F.batch_norm(y.permute(0, 3, 1, 2), mean, var, gamma, beta, False, 0.0, eps).relu()
    return (F.max_pool2d(z, 2) if pool else z).permute(0, 2, 3, 1)


def kernel_specs(n: int, *, pool: bool, dtype: str) -> list[KernelSpec]:
    """The kernels as launched for a BatchNorm over N channels of a ``dtype`` activation."""
    block_m, block_n = _blocks(n)
    tag = f"[{dtype},N={n},POOL={int(pool)}]"
    meta = {"POOL": pool, "BLOCK_M": block_m, "BLOCK_N": block_n}
    meta_sig = {k: "constexpr" for k in meta}
    strides = {f"stride_{k}": "i32" for k in ("ob", "oh", "ow", "on")}
    stats = {"mean_ptr": "*fp32", "var_ptr": "*fp32", "gamma_ptr": "*fp32", "beta_ptr": "*fp32"}
    specs = [
        KernelSpec(
            "batch_norm_nhwc", "_bn_relu_pool_forward_kernel" + tag, _bn_relu_pool_forward_kernel,
            {"y_ptr": f"*{dtype}", **stats, "out_ptr": f"*{dtype}", "H": "i32", "W": "i32", "N": "i32", "M_out": "i32", "eps": "fp32",
             **strides, **meta_sig},
            meta, num_warps=_FORWARD_NUM_WARPS,
        ),
        KernelSpec(
            "batch_norm_nhwc", "_bn_relu_pool_backward_kernel" + tag, _bn_relu_pool_backward_kernel,
            {"g_ptr": f"*{dtype}", "y_ptr": f"*{dtype}", **stats, "dz_ptr": f"*{dtype}", "partial_ptr": "*fp32",
             "H": "i32", "W": "i32", "N": "i32", "M_win": "i32", "eps": "fp32", **{k.replace("_o", "_g"): v for k, v in strides.items()}, **meta_sig},
            meta, num_warps=_NUM_WARPS,
        ),
    ]  # fmt: skip
    for batch_stats in (False, True):
        meta = {"BATCH_STATS": batch_stats, "BLOCK_M": block_m, "BLOCK_N": block_n}
        specs.append(KernelSpec(
            "batch_norm_nhwc", f"_bn_backward_input_kernel[{dtype},N={n},BATCH_STATS={int(batch_stats)}]", _bn_backward_input_kernel,
            {"dz_ptr": f"*{dtype}", "y_ptr": f"*{dtype}", "mean_ptr": "*fp32", "var_ptr": "*fp32", "gamma_ptr": "*fp32", "sums_ptr": "*fp32",
             "dy_ptr": f"*{dtype}", "M": "i32", "N": "i32", "eps": "fp32", **{k: "constexpr" for k in meta}},
            meta, num_warps=_NUM_WARPS,
        ))  # fmt: skip
    return specs


def update_kernel_spec() -> KernelSpec:
    return KernelSpec(
        "batch_norm_nhwc", "_update_running_stats_kernel", _update_running_stats_kernel,
        {"running_mean_ptr": "*fp32", "running_var_ptr": "*fp32", "mean_ptr": "*fp32", "var_ptr": "*fp32", "N": "i32",
         "momentum": "fp32", "unbias": "fp32", "BLOCK_N": "constexpr"},
        {"BLOCK_N": _UPDATE_BLOCK}, num_warps=_NUM_WARPS,
    )  # fmt: skip
