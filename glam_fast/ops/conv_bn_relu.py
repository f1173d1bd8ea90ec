"""Conv2d + BatchNorm + ReLU (+ 2x2 max-pool) on channels-last activations: GLAM's conv stages.

GLAM's conv5 (128 -> 128, 5x5) + bn5 + ReLU is this op directly; each multi-scale block is this op
with the combined 5x5 weight of :mod:`glam_fast.ops.multiscale_block`.

Two custom ops (``torch.library.custom_op``, so ``torch.compile(fullgraph=True)`` traces them):

* ``glam_fast::conv_bn_relu`` -- differentiable, for training (``batch_stats=True``: statistics of
  this batch; the caller updates the running statistics with
  :func:`glam_fast.ops.batch_norm_nhwc.update_running_stats_`) and for eval mode with gradients
  (``batch_stats=False``: running statistics). Forward: conv kernel storing the pre-BN output and
  per-tile moments; moments reduction; BN + ReLU + pool kernel. Backward
  (``glam_fast::conv_bn_relu_backward``): pool/ReLU/BN backward in two passes, then the input
  gradient (implicit GEMM, flipped weights) and the weight gradient (split-K implicit GEMM).
* ``glam_fast::conv_relu_inference`` -- inference with BatchNorm folded into the weights
  (:func:`fold_conv_bn`, done once by the caller): one kernel, ReLU and pool in its epilogue.

Autocast: :func:`conv_bn_relu` applies an explicit cast policy before calling the op: under
``torch.autocast`` the activation and the conv weight run in the autocast dtype; BatchNorm
parameters and statistics stay in their own dtype (fp32) and are read as fp32 by the kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from glam_fast.ops.batch_norm_nhwc import bn_relu_pool, bn_relu_pool_backward, update_running_stats_
from glam_fast.ops.conv2d_nhwc import (
    STATS_BLOCK_M,
    conv2d_nhwc,
    conv2d_nhwc_backward_weight,
    conv2d_nhwc_input_grad,
    pack_weight,
)
from glam_fast.ops.partial_sums import combine_moments
from glam_fast.ops.utils import compute_dtype


def _check_conv_args(op: str, x: Tensor, weight: Tensor, *vectors: Tensor) -> None:
    """x (B, H, W, C), weight (N, C, KH, KW) with odd KH, KW, every vector (bias, BatchNorm) (N,)."""
    if x.dim() != 4:
        raise ValueError(f"{op}: expected a channels-last activation (B, H, W, C), got shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[1] != x.shape[3] or weight.shape[2] % 2 == 0 or weight.shape[3] % 2 == 0:
        raise ValueError(
            f"{op}: weight must be (N, C, KH, KW) with C = {x.shape[3]} (the activation's channels) and odd KH, KW; got {tuple(weight.shape)}"
        )
    for vector in vectors:
        if vector.shape != weight.shape[:1]:
            raise ValueError(f"{op}: bias / BatchNorm tensors must have {weight.shape[0]} channels (the conv's outputs), got shape {tuple(vector.shape)}")
    if x.device != weight.device:
        raise ValueError(f"{op}: activation on {x.device}, weight on {weight.device}")


# ----------------------------------------------------------------------------------------------
# Training / differentiable op


@torch.library.custom_op("glam_fast::conv_bn_relu", mutates_args=())
def _conv_bn_relu_op(
    x: Tensor, weight: Tensor, bias: Tensor, bn_weight: Tensor, bn_bias: Tensor, running_mean: Tensor, running_var: Tensor,
    pool: bool, channels_first_out: bool, batch_stats: bool, eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Returns (out, y = conv output before BN (B, H, W, N), mean (N,) fp32, var (N,) fp32), the
    statistics BN used: this batch's (biased variance) or copies of the running ones."""
    y, moments = conv2d_nhwc(x, pack_weight(weight), bias, tuple(weight.shape[2:]), stats=batch_stats)
    if batch_stats:
        mean, var = combine_moments(moments[0], moments[1], STATS_BLOCK_M, y.shape[0] * y.shape[1] * y.shape[2])
    else:
        mean, var = running_mean.float().clone(), running_var.float().clone()
    out = bn_relu_pool(y, mean, var, bn_weight, bn_bias, eps, pool=pool, channels_first_out=channels_first_out)
    return out, y, mean, var


def _output_shape(x: Tensor, n: int, pool: bool, channels_first_out: bool) -> tuple[int, ...]:
    batch, height, width, _ = x.shape
    out_h, out_w = (height // 2, width // 2) if pool else (height, width)
    return (batch, n, out_h, out_w) if channels_first_out else (batch, out_h, out_w, n)


@_conv_bn_relu_op.register_fake
def _(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, pool, channels_first_out, batch_stats, eps):
    n = weight.shape[0]
    stats = x.new_empty((n,), dtype=torch.float32)
    return x.new_empty(_output_shape(x, n, pool, channels_first_out)), x.new_empty((*x.shape[:3], n)), stats, torch.empty_like(stats)


@torch.library.custom_op("glam_fast::conv_bn_relu_backward", mutates_args=())
def _conv_bn_relu_backward_op(
    grad_out: Tensor, x: Tensor, weight: Tensor, y: Tensor, mean: Tensor, var: Tensor, bn_weight: Tensor, bn_bias: Tensor,
    pool: bool, channels_first_out: bool, batch_stats: bool, eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """(dx in x's dtype, dweight, dbias, dbn_weight, dbn_bias in fp32)."""
    dy, dgamma, dbeta = bn_relu_pool_backward(
        grad_out, y, mean, var, bn_weight, bn_bias, eps, pool=pool, batch_stats=batch_stats, channels_first_out=channels_first_out
    )
    dx = conv2d_nhwc_input_grad(dy, weight)
    dw, db = conv2d_nhwc_backward_weight(x, dy, tuple(weight.shape[2:]))
    return dx, dw, db, dgamma, dbeta


@_conv_bn_relu_backward_op.register_fake
def _(grad_out, x, weight, y, mean, var, bn_weight, bn_bias, pool, channels_first_out, batch_stats, eps):
    n = weight.shape[0]
    f32 = dict(dtype=torch.float32)
    return torch.empty_like(x), weight.new_empty(weight.shape, **f32), x.new_empty((n,), **f32), x.new_empty((n,), **f32), x.new_empty((n,), **f32)


def _setup_context(ctx, inputs, output):
    x, weight, bias, bn_weight, bn_bias, _, _, pool, channels_first_out, batch_stats, eps = inputs
    _, y, mean, var = output
    ctx.save_for_backward(x, weight, y, mean, var, bn_weight, bn_bias)
    ctx.options = (pool, channels_first_out, batch_stats, eps)
    ctx.dtypes = (bias.dtype, bn_weight.dtype, bn_bias.dtype)
    ctx.mark_non_differentiable(y, mean, var)


def _backward(ctx, grad_out, _grad_y, _grad_mean, _grad_var):
    x, weight, y, mean, var, bn_weight, bn_bias = ctx.saved_tensors
    dx, dw, db, dgamma, dbeta = _conv_bn_relu_backward_op(grad_out, x, weight, y, mean, var, bn_weight, bn_bias, *ctx.options)
    bias_dtype, gamma_dtype, beta_dtype = ctx.dtypes
    return dx, dw.to(weight.dtype), db.to(bias_dtype), dgamma.to(gamma_dtype), dbeta.to(beta_dtype), None, None, None, None, None, None


_conv_bn_relu_op.register_autograd(_backward, setup_context=_setup_context)


def conv_bn_relu(
    x: Tensor, weight: Tensor, bias: Tensor, bn_weight: Tensor, bn_bias: Tensor, running_mean: Tensor, running_var: Tensor,
    *, training: bool, momentum: float, eps: float, pool: bool = False, channels_first_out: bool = False,
) -> Tensor:  # fmt: skip
    """ReLU(BatchNorm(conv2d(x, weight, bias, padding='same'))) [2x2 max-pool, floor], differentiable.

    Args:
        x: (B, H, W, C) channels-last activation.
        weight: (N, C, KH, KW), odd KH and KW; bias: (N,).
        bn_weight, bn_bias, running_mean, running_var: (N,) BatchNorm parameters and buffers.
        training: use this batch's statistics and update the running ones in place (as
            ``F.batch_norm(training=True)``); otherwise use the running statistics.
        momentum: running-statistics momentum (PyTorch convention, 0.1 by default in BatchNorm2d).
        pool: 2x2 max-pool after the ReLU.
        channels_first_out: return (B, N, Ho, Wo) instead of (B, Ho, Wo, N).

    Returns the activation in the compute dtype (x's, or the autocast dtype).
    """
    _check_conv_args("conv_bn_relu", x, weight, bias, bn_weight, bn_bias, running_mean, running_var)
    dtype = compute_dtype(x)
    out, y, mean, var = _conv_bn_relu_op(
        x.to(dtype), weight.to(dtype), bias, bn_weight, bn_bias, running_mean, running_var, pool, channels_first_out, training, eps
    )
    if training:
        update_running_stats_(running_mean, running_var, mean, var, y.shape[0] * y.shape[1] * y.shape[2], momentum)
    return out


# ----------------------------------------------------------------------------------------------
# Inference op (BatchNorm folded)


@torch.library.custom_op("glam_fast::conv_relu_inference", mutates_args=())
def _conv_relu_inference_op(x: Tensor, weight_packed: Tensor, bias: Tensor, kernel_size: int, pool: bool, channels_first_out: bool) -> Tensor:
    out, _ = conv2d_nhwc(x, weight_packed, bias, (kernel_size, kernel_size), relu=True, pool=pool, channels_first_out=channels_first_out)
    return out


@_conv_relu_inference_op.register_fake
def _(x, weight_packed, bias, kernel_size, pool, channels_first_out):
    return x.new_empty(_output_shape(x, weight_packed.shape[1], pool, channels_first_out))


def fold_conv_bn(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """BatchNorm (running statistics) folded into the conv, computed in float64 once:
    w' = w * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps).
    Returns (packed weight (K_pad, N) in ``dtype``, bias (N,) fp32)."""
    with torch.no_grad():
        scale = bn_weight.double() / torch.sqrt(running_var.double() + eps)
        folded_w = weight.double() * scale[:, None, None, None]
        folded_b = (bias.double() - running_mean.double()) * scale + bn_bias.double()
        return pack_weight(folded_w, dtype), folded_b.float()


def conv_relu_inference(x: Tensor, weight_packed: Tensor, bias: Tensor, kernel_size: int, *, pool: bool = False, channels_first_out: bool = False) -> Tensor:
    """ReLU(conv2d(x) + bias) [2x2 max-pool] with weights packed by :func:`fold_conv_bn` (no autograd).
    x: (B, H, W, C) in the packed weight's dtype. Returns (B, Ho, Wo, N) or (B, N, Ho, Wo)."""
    if x.dim() != 4 or weight_packed.dim() != 2:
        raise ValueError(f"conv_relu_inference: expected x (B, H, W, C) and a packed (K, N) weight, got {tuple(x.shape)} and {tuple(weight_packed.shape)}")
    return _conv_relu_inference_op(x, weight_packed, bias, kernel_size, pool, channels_first_out)


def conv_bn_relu_ref(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, *, training, momentum, eps, pool=False, channels_first_out=False):
    """Plain-PyTorch reference of :func:`conv_bn_relu` (NHWC in; NHWC or NCHW out)."""
    y = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, padding=(weight.shape[2] // 2, weight.shape[3] // 2))
    z = F.relu(F.batch_norm(y, running_mean, running_var, bn_weight, bn_bias, training, momentum, eps))
    if pool:
        z = F.max_pool2d(z, 2)
    return z if channels_first_out else z.permute(0, 2, 3, 1)
