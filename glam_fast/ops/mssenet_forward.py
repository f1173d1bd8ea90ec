"""Fused MS-SENet forward for backend "triton": front end, temporal blocks, dynamic fusion.

Launches per forward (both directions share every launch):
- eval without gradients: 1 front end + n_blocks temporal blocks + 1 fusion (+ 1 stack of the
  block means); the direction-stacked parameters are cached between calls (:func:`prepare_mssenet`);
- training, or eval with gradients: front end 1 (+2 for the training BatchNorm statistics), 3 per
  block (+2 per block in training), 1 fusion, plus two concatenations packing parameters and
  running statistics direction-stacked (the backward: one concatenation of grads) and, in
  training, the dropout-mask draws (two small launches each, as in the reference), one stack of
  them and a handful of ``torch._foreach_*`` running-statistics updates.

Dropout masks come from :func:`glam_fast.models.mssenet.channel_dropout_mask`, drawn with the same
shapes, dtype and order as the reference model, so a seeded run draws the same masks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from glam_fast import dispatch
from glam_fast.models import mssenet as mssenet_model
from glam_fast.ops.dynamic_fusion import dynamic_fusion
from glam_fast.ops.squeeze_excite import PARAMETER_NAMES as FRONT_PARAMETERS
from glam_fast.ops.squeeze_excite import squeeze_excite
from glam_fast.ops.temporal_block import temporal_block, temporal_block_inference

BLOCK_PARAMETERS = ("conv_weight", "conv_bias", "bn_weight", "bn_bias", "running_mean", "running_var")
_CACHE_ATTRIBUTE = "_glam_fast_stacked_parameters"


def compute_dtype(x: Tensor) -> torch.dtype:
    """The activation dtype: autocast's when it is on for x's device, else x's own."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _front_tensors(direction) -> dict[str, list[Tensor]]:
    f = direction.front
    branches = ((f.conv_time, f.bn_time), (f.conv_freq, f.bn_freq), (f.conv_square, f.bn_square))
    return {
        "time_weight": [f.conv_time.weight], "freq_weight": [f.conv_freq.weight], "square_weight": [f.conv_square.weight],
        "branch_bias": [conv.bias for conv, _ in branches],
        "bn_weight": [bn.weight for _, bn in branches], "bn_bias": [bn.bias for _, bn in branches],
        "running_mean": [bn.running_mean for _, bn in branches], "running_var": [bn.running_var for _, bn in branches],
        "squeeze_weight": [f.squeeze.weight], "squeeze_bias": [f.squeeze.bias], "excite_weight": [f.excite.weight], "excite_bias": [f.excite.bias],
        "collapse_weight": [f.collapse.weight], "collapse_bias": [f.collapse.bias], "project_weight": [f.project.weight], "project_bias": [f.project.bias],
    }  # fmt: skip


def _block_tensors(block) -> dict[str, list[Tensor]]:
    pairs = ((block.conv1, block.bn1), (block.conv2, block.bn2))
    return {
        "conv_weight": [conv.weight for conv, _ in pairs], "conv_bias": [conv.bias for conv, _ in pairs],
        "bn_weight": [bn.weight for _, bn in pairs], "bn_bias": [bn.bias for _, bn in pairs],
        "running_mean": [bn.running_mean for _, bn in pairs], "running_var": [bn.running_var for _, bn in pairs],
    }  # fmt: skip


def _groups(model) -> list[tuple[str, list[Tensor], list[Tensor]]]:
    """(name, forward-direction tensors, backward-direction tensors) in op-argument order."""
    fwd, bwd = model.forward_direction, model.backward_direction
    front_f, front_b = _front_tensors(fwd), _front_tensors(bwd)
    groups = [(f"front.{n}", front_f[n], front_b[n]) for n in FRONT_PARAMETERS]
    for j, (block_f, block_b) in enumerate(zip(fwd.blocks, bwd.blocks)):
        tf, tb = _block_tensors(block_f), _block_tensors(block_b)
        groups += [(f"blocks.{j}.{n}", tf[n], tb[n]) for n in BLOCK_PARAMETERS]
    return groups


def stacked_parameters(model) -> dict[str, Tensor]:
    """Every per-direction parameter and running statistic as a direction-stacked (2, ...) view of
    a concatenation (differentiable: its backward splits the gradient back to each parameter).

    Without autograd (inference) the result is cached on the model and reused while no source
    tensor has been replaced or modified in place (optimizer steps, load_state_dict, .to(...)).
    """
    groups = _groups(model)
    sources = [t for _, a, b in groups for t in (*a, *b)]
    cacheable = not torch.compiler.is_compiling() and not (torch.is_grad_enabled() and any(t.requires_grad for t in sources))
    if cacheable:
        key = tuple((t.data_ptr(), t._version, t.dtype) for t in sources)
        cached = model.__dict__.get(_CACHE_ATTRIBUTE)
        if cached is not None and cached[0] == key:
            return cached[1]
    stacked = {}
    # parameters and running statistics packed separately, so that the parameters' pack has a
    # grad for every piece; split (not slicing): its backward is one concatenation
    for is_buffer in (False, True):
        part = [(name, a, b) for name, a, b in groups if _is_buffer(name) == is_buffer]
        flat = torch.cat([t.reshape(-1) for _, a, b in part for t in (*a, *b)])
        pieces = flat.split([2 * sum(t.numel() for t in a) for _, a, _ in part])
        for (name, a, _), piece in zip(part, pieces):
            shape = (len(a), *a[0].shape) if len(a) > 1 else tuple(a[0].shape)
            stacked[name] = piece.view(2, *_op_shape(name, shape))
    if cacheable:
        model.__dict__[_CACHE_ATTRIBUTE] = (key, stacked)
    return stacked


def _is_buffer(name: str) -> bool:
    return name.endswith(("running_mean", "running_var"))


def _op_shape(name: str, module_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-direction shape the ops take, from the modules' shapes."""
    kind = name.rsplit(".", 1)[1]
    if kind in ("time_weight", "freq_weight", "square_weight"):  # (F, 1, kh, kw) -> (F, kh * kw)
        return (module_shape[0], math.prod(module_shape[1:]))
    if kind == "collapse_weight":  # (1, F, 1, 1) -> (F,)
        return (module_shape[1],)
    if kind == "project_weight":  # (F, 4M, 1) -> (F, 4M)
        return module_shape[:2]
    return module_shape


def prepare_mssenet(model) -> "torch.nn.Module":
    """Build the cached direction-stacked parameters that the fused inference path reads, so the
    first timed call does no packing. Returns the model. Safe to call again after weights change
    (the cache is also refreshed automatically)."""
    with torch.no_grad():
        stacked_parameters(model)
    return model


def _draw_masks(model, batch: int, length: int, dtype: torch.dtype, device: torch.device):
    """Spatial-dropout masks in the reference's order (forward direction first; per direction the
    three front-end branches, then two per block), stacked for the fused ops:
    front (2, 3, B, F) or None, and per block (2, 2, B, F) or None."""
    draw = mssenet_model.channel_dropout_mask  # looked up at call time: tests replace it
    mfcc, channels = model.n_mfcc, model.n_filters
    like = lambda *shape: torch.empty((), dtype=dtype, device=device).expand(*shape)  # noqa: E731 - shape/dtype/device only
    drawn = []
    for direction in (model.forward_direction, model.backward_direction):
        p = direction.front.dropout
        front = [draw(like(batch, channels, length, mfcc), p) for _ in range(3)] if p > 0 else None
        blocks = []
        for block in direction.blocks:
            q = block.dropout
            blocks.append([draw(like(batch, channels, length), q) for _ in range(2)] if q > 0 else None)
        drawn.append((front, blocks))
    (front_f, blocks_f), (front_b, blocks_b) = drawn
    order = []
    if front_f is not None:
        order += front_f + front_b
    for bf, bb in zip(blocks_f, blocks_b):
        if bf is not None:
            order += bf + bb
    if not order:
        return None, [None] * len(blocks_f)
    stacked = torch.stack(order)
    offset = 0
    front_masks = None
    if front_f is not None:
        front_masks = stacked[:6].view(2, 3, batch, channels)
        offset = 6
    block_masks = []
    for bf in blocks_f:
        if bf is None:
            block_masks.append(None)
        else:
            block_masks.append(stacked[offset : offset + 4].view(2, 2, batch, channels))
            offset += 4
    return front_masks, block_masks


def _batch_norms(model):
    """(front BatchNorms, block BatchNorms), each in [direction][bn] order matching the ops' stats."""
    front, blocks = [], []
    for direction in (model.forward_direction, model.backward_direction):
        f = direction.front
        front.append([f.bn_time, f.bn_freq, f.bn_square])
        blocks.append([[b.bn1, b.bn2] for b in direction.blocks])
    return front, blocks


def _momentum_and_eps(norms) -> tuple[float, float]:
    values = {(bn.momentum, bn.eps) for bn in norms}
    if len(values) != 1:
        raise NotImplementedError(f"fused MS-SENet needs one BatchNorm momentum and eps for the whole model, got {sorted(values)}")
    momentum, eps = values.pop()
    if momentum is None:
        raise NotImplementedError("fused MS-SENet does not support BatchNorm momentum=None (cumulative averaging)")
    return momentum, eps


def _update_running_stats(model, front_stats: Tensor, block_stats: list[Tensor], batch: int, length: int, momentum: float) -> None:
    """running = (1 - momentum) * running + momentum * batch statistic, with the unbiased batch
    variance, and num_batches_tracked += 1: BatchNorm's training update, as a few foreach ops."""
    front, blocks = _batch_norms(model)
    means, running_means, groups = [], [], []
    for d in range(2):
        for i, bn in enumerate(front[d]):
            means.append(front_stats[0, d, i])
            running_means.append(bn.running_mean)
    front_vars = [front_stats[1, d, i] for d in range(2) for i in range(3)]
    groups.append(([bn.running_var for d in range(2) for bn in front[d]], front_vars, batch * length * model.n_mfcc))
    block_vars, block_running_vars = [], []
    for j, stats in enumerate(block_stats):
        for d in range(2):
            for i, bn in enumerate(blocks[d][j]):
                means.append(stats[0, d, i])
                running_means.append(bn.running_mean)
                block_vars.append(stats[1, d, i])
                block_running_vars.append(bn.running_var)
    groups.append((block_running_vars, block_vars, batch * length))
    counters = [bn.num_batches_tracked for d in range(2) for bn in front[d]]
    counters += [bn.num_batches_tracked for d in range(2) for pair in blocks[d] for bn in pair]
    with torch.no_grad():
        torch._foreach_mul_(running_means, 1.0 - momentum)
        torch._foreach_add_(running_means, means, alpha=momentum)
        for running_vars, batch_vars, count in groups:
            if running_vars:
                torch._foreach_mul_(running_vars, 1.0 - momentum)
                torch._foreach_add_(running_vars, batch_vars, alpha=momentum * count / (count - 1))
        torch._foreach_add_(counters, 1)


@dispatch.register("mssenet", "triton")
def mssenet_forward(model, x: Tensor) -> Tensor:
    """(B, T, n_mfcc) -> (B, num_classes) logits with the fused Triton ops (input already checked)."""
    dtype = compute_dtype(x)
    x = x.to(dtype)
    batch, length, _ = x.shape
    training = model.training
    front_norms, block_norms = _batch_norms(model)
    momentum, eps = _momentum_and_eps([bn for d in range(2) for bn in front_norms[d]] + [bn for d in range(2) for pair in block_norms[d] for bn in pair])
    if training and batch * length < 2:
        raise ValueError(f"MSSENet in training mode needs more than one frame in the batch for BatchNorm, got input shape {tuple(x.shape)}")
    params = stacked_parameters(model)
    front_masks, block_masks = _draw_masks(model, batch, length, dtype, x.device) if training else (None, [None] * model.n_blocks)
    front = [params[f"front.{n}"] for n in FRONT_PARAMETERS]
    h, _, front_stats = squeeze_excite(x, *front, front_masks, training, eps)
    differentiable = training or (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in model.parameters())))
    means, block_stats = [], []
    for j, block in enumerate(model.forward_direction.blocks):
        args = [params[f"blocks.{j}.{n}"] for n in BLOCK_PARAMETERS]
        if differentiable:
            h, mean, _, _, stats = temporal_block(h, *args, block_masks[j], block.dilation, training, eps)
            block_stats.append(stats)
        else:
            h, mean = temporal_block_inference(h, *args, block.dilation, eps)
        means.append(mean)
    logits = dynamic_fusion(torch.stack(means), model.fusion_weight, model.classifier.weight, model.classifier.bias)
    if training:
        _update_running_stats(model, front_stats, block_stats, batch, length, momentum)
    return logits.to(dtype)
