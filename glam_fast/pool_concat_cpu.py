"""2x2 max pooling of several channels-last maps written side by side along channels, for CPU
inference, as one native call (``csrc/pool_concat_cpu.cpp``).

GLAM's multi-scale blocks pool each branch and concatenate them: in PyTorch that is a
``max_pool2d`` per branch (each computing indices) and a ``cat``, three passes and allocations;
the native op reads each branch once and writes the pooled concatenation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from glam_fast import _extension
from glam_fast.ops.utils import empty_output

CHANNEL_STEP = 16  # every map's channel count a multiple of this


def native_available() -> bool:
    return _extension.has("pool_concat_cpu")


def applies(maps: list[torch.Tensor]) -> bool:
    """Whether :func:`pool_concat` takes these maps: float32 CPU (B, C_i, H, W) maps of one batch and
    size, C_i multiples of :data:`CHANNEL_STEP`, no gradient wanted."""
    first = maps[0]
    return native_available() and all(
        m.device.type == "cpu" and m.dtype == torch.float32 and m.dim() == 4 and m.shape[1] % CHANNEL_STEP == 0
        and (m.shape[0], *m.shape[2:]) == (first.shape[0], *first.shape[2:]) and not (m.requires_grad and torch.is_grad_enabled())
        for m in maps
    )


def pool_concat_reference(maps: list[torch.Tensor]) -> torch.Tensor:
    """``cat([max_pool2d(m, 2) for m in maps], dim=1)``: (B, C_i, H, W) maps -> (B, sum C_i, H // 2, W // 2)."""
    return torch.cat([F.max_pool2d(m, 2) for m in maps], dim=1)


def pool_concat(maps: list[torch.Tensor]) -> torch.Tensor:
    """The native op, same result as :func:`pool_concat_reference` (channels-last); maps in any memory format."""
    module = _extension.require("pool_concat_cpu", "the native pooled concatenation")
    nhwc = [m.permute(0, 2, 3, 1).contiguous() for m in maps]  # a view for channels-last maps
    batch, height, width = nhwc[0].shape[:3]
    if height < 2 or width < 2:
        raise ValueError(f"pool_concat: a {height} x {width} map pools to nothing (2x2 windows, stride 2)")
    out = empty_output((batch, height // 2, width // 2, sum(m.shape[-1] for m in nhwc)), dtype=torch.float32, device="cpu")
    d = _extension.tensor_descriptor
    module.pool_concat_cpu([d(m) for m in nhwc], d(out), torch.get_num_threads())
    return out.permute(0, 3, 1, 2)
