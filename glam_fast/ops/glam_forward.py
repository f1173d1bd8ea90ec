"""GLAM's fused forward: the "triton" implementation of the "glam" op.

stem -> multi-scale block(16) + pool -> block(32) + pool -> block(64) -> conv5 + BN + ReLU ->
global-aware fusion head, every stage a glam_fast kernel; activations stay channels-last between
stages and conv5 writes the (B, 128, H/2 * W/4) token layout the head reads.

Three paths, chosen per call:

* training (``model.training``): BatchNorm with batch statistics, running statistics and
  ``num_batches_tracked`` updated exactly as ``nn.BatchNorm2d`` does; differentiable.
* eval with gradients (grad mode on and the input or any parameter requires grad): running
  statistics, unfolded weights; differentiable (saliency maps, fine-tuning with frozen BN).
* inference (eval, no gradients): BatchNorm folded into the conv weights, the multi-scale
  branches combined, weights packed -- computed once and cached on the model; the cache is keyed
  on every parameter's and buffer's identity, storage pointer, version counter, dtype and device,
  so in-place updates (optimizer steps, ``load_state_dict``), ``.to()`` and dtype changes refold.
  (Writes through ``tensor.data`` bypass version counters; after such a write call
  :func:`clear_folded_cache`.) Under ``torch.compile`` the fold is traced into the graph instead.
  For this path call the model under ``torch.no_grad()`` / ``torch.inference_mode()``.

Autocast: under ``torch.autocast`` the kernels run in the autocast dtype (activations and conv /
head weights cast to it); BatchNorm parameters and statistics stay fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from glam_fast import dispatch
from glam_fast.kernels import register_compile_specs
from glam_fast.models.glam import MULTISCALE_BLOCKS
from glam_fast.ops import batch_norm_nhwc, conv2d_nhwc, global_fusion, partial_sums
from glam_fast.ops import stem as stem_op
from glam_fast.ops.conv_bn_relu import conv_bn_relu, conv_relu_inference, fold_conv_bn
from glam_fast.ops.multiscale_block import fold_multiscale_block, multiscale_block
from glam_fast.ops.stem import stem, stem_inference
from glam_fast.ops.utils import compute_dtype

_CACHE_ATTR = "_glam_fast_folded"
STEM_CHANNELS = 16
# (C in, N out, pool) of the convolutions after the stem: multi-scale blocks (C -> 2C) and conv5
CONV_LAYERS = ((16, 32, True), (32, 64, True), (64, 128, False), (128, 128, False))


def _batch_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [model.bn1a, model.bn1b, model.conv2.bn, model.conv3.bn, model.conv4.bn, model.bn5]


def _check_supported(model: nn.Module) -> None:
    for bn in _batch_norms(model):
        if not (bn.affine and bn.track_running_stats and bn.running_mean is not None):
            raise NotImplementedError(f"the fused GLAM needs affine BatchNorms that track running statistics; got {bn}")
    if model.bn1a.eps != model.bn1b.eps or model.bn1a.momentum != model.bn1b.momentum:
        raise NotImplementedError("the fused stem normalises bn1a and bn1b together: they must share eps and momentum")


def _momentum(bn: nn.BatchNorm2d) -> float:
    """As nn.BatchNorm2d in training: count the batch; momentum None means a cumulative average."""
    bn.num_batches_tracked.add_(1)
    if bn.momentum is None:
        return 1.0 / float(bn.num_batches_tracked)
    return bn.momentum


def _head_params(model: nn.Module) -> tuple[Tensor, ...]:
    """The global-aware fusion head's tensors in global_fusion_head's argument order."""
    prenorm = model.gmlp.layers[0].fn
    block = prenorm.fn.fn
    return (
        prenorm.norm.weight, prenorm.norm.bias, block.proj_in[0].weight, block.proj_in[0].bias,
        block.sgu.norm.weight, block.sgu.norm.bias, block.sgu.weight[0], block.sgu.bias[0],
        block.proj_out.weight, block.proj_out.bias, model.fc.weight, model.fc.bias,
    )  # fmt: skip


def _forward_differentiable(model: nn.Module, x: Tensor) -> Tensor:
    training = model.training
    dtype = compute_dtype(x)
    stem_momentum = _momentum(model.bn1a) if training else 0.0
    if training:
        _momentum(model.bn1b)
    bn_a, bn_b = (
        (bn.weight, bn.bias, bn.running_mean, bn.running_var) for bn in (model.bn1a, model.bn1b)
    )  # fmt: skip
    h = stem(
        x, model.conv1a.weight, model.conv1a.bias, model.conv1b.weight, model.conv1b.bias, bn_a, bn_b,
        training=training, momentum=stem_momentum, eps=model.bn1a.eps,
    )  # fmt: skip
    for name, pool in MULTISCALE_BLOCKS:
        block = getattr(model, name)
        bn = block.bn
        h = multiscale_block(
            h, block.conv3.weight, block.conv3.bias, block.conv5.weight, block.conv5.bias,
            bn.weight, bn.bias, bn.running_mean, bn.running_var,
            training=training, momentum=_momentum(bn) if training else 0.0, eps=bn.eps, pool=pool,
        )  # fmt: skip
    bn = model.bn5
    tokens = conv_bn_relu(
        h, model.conv5.weight, model.conv5.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var,
        training=training, momentum=_momentum(bn) if training else 0.0, eps=bn.eps, channels_first_out=True,
    )  # fmt: skip
    head = [p.to(dtype) for p in _head_params(model)]
    return global_fusion.global_fusion_head(tokens.flatten(2), *head)


@dataclass(frozen=True)
class FoldedGLAM:
    """Inference tensors of one GLAM for one compute dtype."""

    stem: tuple[Tensor, ...]  # conv1a w, b, conv1b w, b, then 2C BatchNorm weight, bias, mean, var
    stem_eps: float
    blocks: tuple[tuple[Tensor, Tensor], ...]  # (packed weight (K_pad, 2C), bias) of conv2..conv4
    conv5: tuple[Tensor, Tensor]
    head: tuple[Tensor, ...]


def fold(model: nn.Module, dtype: torch.dtype) -> FoldedGLAM:
    """Fold every BatchNorm into its conv (running statistics), combine each multi-scale block
    into one 5x5 conv, pack the conv weights K-major in ``dtype``. Float64 arithmetic."""
    with torch.no_grad():
        bns = (model.bn1a, model.bn1b)
        stem_bn = tuple(torch.cat([getattr(bn, attr) for bn in bns]).float() for attr in ("weight", "bias", "running_mean", "running_var"))
        stem_params = (model.conv1a.weight, model.conv1a.bias, model.conv1b.weight, model.conv1b.bias, *stem_bn)
        blocks = []
        for name, _ in MULTISCALE_BLOCKS:
            block = getattr(model, name)
            bn = block.bn
            blocks.append(
                fold_multiscale_block(
                    block.conv3.weight, block.conv3.bias, block.conv5.weight, block.conv5.bias,
                    bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps, dtype,
                )  # fmt: skip
            )
        bn = model.bn5
        conv5 = fold_conv_bn(model.conv5.weight, model.conv5.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps, dtype)
        head = tuple(p.detach().to(dtype) for p in _head_params(model))
    return FoldedGLAM(tuple(p.detach() for p in stem_params), model.bn1a.eps, tuple(blocks), conv5, head)


def _state_key(model: nn.Module, dtype: torch.dtype):
    """Identity, storage, version, dtype, device and shape of every parameter and buffer; None if
    some tensor has no version counter (inference-mode tensors): then nothing is cached."""
    try:
        return (dtype,) + tuple(
            (id(t), t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)) for t in (*model.parameters(), *model.buffers())
        )
    except RuntimeError:
        return None


def folded(model: nn.Module, dtype: torch.dtype) -> FoldedGLAM:
    """The model's inference tensors for ``dtype``, from the cache when nothing changed since they were folded."""
    if torch.compiler.is_compiling():
        return fold(model, dtype)
    key = _state_key(model, dtype)
    cached = model.__dict__.get(_CACHE_ATTR)
    if key is not None and cached is not None and cached[0] == key:
        return cached[1]
    value = fold(model, dtype)
    if key is not None:
        model.__dict__[_CACHE_ATTR] = (key, value)
    return value


def clear_folded_cache(model: nn.Module) -> None:
    """Drop the cached inference weights (needed only after writes that bypass version counters)."""
    model.__dict__.pop(_CACHE_ATTR, None)


def _forward_inference(model: nn.Module, x: Tensor) -> Tensor:
    dtype = compute_dtype(x)
    params = folded(model, dtype)
    h = stem_inference(x.to(dtype), *params.stem, params.stem_eps)
    for (weight, bias), (_, pool) in zip(params.blocks, MULTISCALE_BLOCKS):
        h = conv_relu_inference(h, weight, bias, 5, pool=pool)
    tokens = conv_relu_inference(h, *params.conv5, 5, channels_first_out=True)
    return global_fusion.global_fusion_head(tokens.flatten(2), *params.head)


def _needs_grad(model: nn.Module, x: Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in model.parameters()))


@dispatch.register("glam", "triton")
def glam_forward(model: nn.Module, x: Tensor) -> Tensor:
    """GLAM forward through glam_fast's kernels. model: a glam_fast.GLAM (or the same structure);
    x: (B, 1, H, W) validated by the model. Returns (B, num_classes) logits in the compute dtype."""
    _check_supported(model)
    if model.training or _needs_grad(model, x):
        return _forward_differentiable(model, x)
    return _forward_inference(model, x)


@register_compile_specs
def _compile_specs():
    """Every kernel the fused GLAM launches, at the configs its launchers (and autotuners) use,
    for bf16 (fp16 alike) and fp32 activations."""
    specs = []
    for dtype in ("bf16", "fp32"):
        for c, n, pool in CONV_LAYERS:
            specs += conv2d_nhwc.forward_kernel_specs(c, n, dtype=dtype, has_bias=True, relu=True, pool=pool, stats=False)
            specs += conv2d_nhwc.forward_kernel_specs(c, n, dtype=dtype, has_bias=True, relu=False, pool=False, stats=True)
            specs += conv2d_nhwc.forward_kernel_specs(n, c, dtype=dtype, has_bias=False, relu=False, pool=False, stats=False)
            specs += conv2d_nhwc.weight_grad_kernel_specs(c, n, dtype=dtype)
        specs += stem_op.kernel_specs(STEM_CHANNELS, dtype=dtype)
        for _, n, pool in CONV_LAYERS:
            specs += batch_norm_nhwc.kernel_specs(n, pool=pool, dtype=dtype)
    specs.append(batch_norm_nhwc.update_kernel_spec())
    specs += partial_sums.kernel_specs([2 * STEM_CHANNELS] + [n for _, n, _ in CONV_LAYERS])
    # Layers with equal flags share compiled kernels (channel counts are runtime arguments): one
    # spec each, candidate for every layer's tuning problem.
    unique = {}
    for spec in specs:
        key = (spec.name, spec.num_warps, spec.num_stages)
        seen = unique.get(key)
        unique[key] = spec if seen is None else replace(seen, tuning_groups=seen.tuning_groups + spec.tuning_groups)
    return list(unique.values())
