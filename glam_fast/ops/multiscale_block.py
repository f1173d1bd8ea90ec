"""GLAM's multi-scale block as one convolution: ReLU(BN_2C(cat[conv3(x) + x, conv5(x) + x])) [pool].

The identity that makes it one kernel: with W3 (C, C, 3, 3) zero-padded to 5x5 and delta the
identity at the centre tap (delta[n, c, 2, 2] = [c == n]),

    cat([conv3(x) + x, conv5(x) + x], channels) = conv5x5(x, W = [pad(W3) + delta ; W5 + delta], b = [b3 ; b5])

so the block is a single 5x5 convolution C -> 2C followed by BatchNorm, ReLU and (after GLAM's
conv2 and conv3) the 2x2 max-pool: :mod:`glam_fast.ops.conv_bn_relu` runs it. This costs 47 % more
multiply-adds than the two convolutions apart (25 + 25 taps instead of 9 + 25), but it is one GEMM
with one epilogue and no concatenated intermediate.

* :func:`multiscale_block` (training, or eval with gradients): the combined weight is built with
  differentiable torch ops on every call (weights change every step), so autograd maps the
  combined weight's gradient back: dW3 = centre 3x3 of the first C output channels, dW5 = the
  second C, nothing for the identity.
* :func:`fold_multiscale_block` (inference): the combined weight with BatchNorm folded in, packed
  once; :func:`glam_fast.ops.conv_bn_relu.conv_relu_inference` runs it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from glam_fast.ops.conv_bn_relu import conv_bn_relu, fold_conv_bn

def _centre_identity(channels: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """delta (2C, C, 5, 5): 1 at the centre tap where input channel == output channel mod C."""
    eye = torch.eye(channels, dtype=dtype, device=device).repeat(2, 1)
    return F.pad(eye[:, :, None, None], (2, 2, 2, 2))


def combined_weight(conv3_weight: Tensor, conv3_bias: Tensor, conv5_weight: Tensor, conv5_bias: Tensor) -> tuple[Tensor, Tensor]:
    """(2C, C, 5, 5) weight and (2C,) bias of the one convolution equal to the block's two branches
    plus their identity shortcuts. Differentiable (plain torch ops on the parameters)."""
    channels = conv3_weight.shape[0]
    if conv3_weight.shape != (channels, channels, 3, 3) or conv5_weight.shape != (channels, channels, 5, 5):
        raise ValueError(
            f"multiscale block: expected conv3 (C, C, 3, 3) and conv5 (C, C, 5, 5) weights, got {tuple(conv3_weight.shape)} and {tuple(conv5_weight.shape)}"
        )
    weight = torch.cat([F.pad(conv3_weight, (1, 1, 1, 1)), conv5_weight]) + _centre_identity(channels, conv3_weight.dtype, conv3_weight.device)
    return weight, torch.cat([conv3_bias, conv5_bias])


def multiscale_block(
    x: Tensor, conv3_weight: Tensor, conv3_bias: Tensor, conv5_weight: Tensor, conv5_bias: Tensor,
    bn_weight: Tensor, bn_bias: Tensor, running_mean: Tensor, running_var: Tensor,
    *, training: bool, momentum: float, eps: float, pool: bool,
) -> Tensor:  # fmt: skip
    """The multi-scale block on a channels-last activation, differentiable.

    x: (B, H, W, C). conv3: (C, C, 3, 3) + (C,); conv5: (C, C, 5, 5) + (C,); BatchNorm over 2C.
    training: batch statistics, running statistics updated in place; else running statistics.
    Returns (B, H, W, 2C), or (B, H//2, W//2, 2C) with ``pool``, in the compute dtype.
    """
    weight, bias = combined_weight(conv3_weight, conv3_bias, conv5_weight, conv5_bias)
    return conv_bn_relu(
        x, weight, bias, bn_weight, bn_bias, running_mean, running_var, training=training, momentum=momentum, eps=eps, pool=pool
    )


def fold_multiscale_block(conv3_weight, conv3_bias, conv5_weight, conv5_bias, bn_weight, bn_bias, running_mean, running_var, eps, dtype):
    """Inference weights: the combined conv with BatchNorm folded in, computed in float64 and packed
    as (K_pad, 2C) in ``dtype``, and the (2C,) fp32 bias."""
    with torch.no_grad():
        weight, bias = combined_weight(conv3_weight.double(), conv3_bias.double(), conv5_weight.double(), conv5_bias.double())
    return fold_conv_bn(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps, dtype)


def multiscale_block_ref(x, conv3_weight, conv3_bias, conv5_weight, conv5_bias, bn_weight, bn_bias, running_mean, running_var, *, training, momentum, eps, pool):
    """Plain-PyTorch reference, exactly the model's ResMultiConv (+ pool), NCHW in and out."""
    x3 = F.conv2d(x, conv3_weight, conv3_bias, padding=1) + x
    x5 = F.conv2d(x, conv5_weight, conv5_bias, padding=2) + x
    y = F.relu(F.batch_norm(torch.cat((x3, x5), dim=1), running_mean, running_var, bn_weight, bn_bias, training, momentum, eps))
    return F.max_pool2d(y, 2) if pool else y
