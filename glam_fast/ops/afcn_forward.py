"""Fused AFCN forward for backend "triton".

The AlexNet trunk stays on cuDNN (PyTorch convolutions and pools, zeroing every map beyond each
item's valid length exactly as the reference does); the attention pooling over the trunk's map
and the classifier run in one Triton kernel per item (:mod:`glam_fast.ops.attention_pool`), reading
the map where the trunk wrote it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from glam_fast import dispatch
from glam_fast.models import afcn as afcn_model
from glam_fast.ops.attention_pool import attention_pool


def afcn_trunk(model, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The trunk's map (B, 256, F', T') and the valid T' per item (None when lengths is None)."""
    h = x
    if lengths is not None:
        h = model._zero_beyond(h, lengths)
    for layer in model.features:
        h = layer(h)
        if lengths is not None and isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            lengths = afcn_model._out_size(lengths, layer)
            h = model._zero_beyond(h, lengths)
    return h, lengths


@dispatch.register("afcn", "triton")
def afcn_forward(model, x: Tensor, lengths: Tensor | None = None, return_attention: bool = False):
    """(B, 3, F, T) [+ (B,) lengths] -> logits [, (B, F', T') attention] (inputs already checked)."""
    h, map_lengths = afcn_trunk(model, x, lengths)
    attention = model.attention
    logits, alpha, _ = attention_pool(
        h, map_lengths, attention.proj.weight, attention.proj.bias, attention.context.weight,
        model.classifier.weight, model.classifier.bias, float(attention.scale),
    )  # fmt: skip
    if return_attention:
        # alpha in the reference's dtype: CUDA autocast runs softmax in fp32, otherwise it keeps the
        # map's dtype (the kernel computes it in fp32 either way)
        autocast_fp32 = h.device.type == "cuda" and torch.is_autocast_enabled("cuda")
        return logits, alpha.to(torch.float32 if autocast_fp32 else h.dtype)
    return logits
