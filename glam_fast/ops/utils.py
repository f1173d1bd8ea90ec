"""Helpers shared by the fused ops (Triton launchers and autograd glue)."""

from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """True when Triton kernels run under the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def autotune_configs(configs: list) -> list:
    """The autotuning space: all configs on a GPU, only the first under the interpreter."""
    return configs[:1] if interpreting() else configs


def empty_output(shape, *, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """torch.empty for kernel outputs; NaN-filled when GLAM_FAST_POISON=1 (the tests set it), so an
    element a kernel fails to write shows up as NaN instead of stale memory that happens to pass."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if os.environ.get("GLAM_FAST_POISON") == "1" and out.is_floating_point():
        out.fill_(float("nan"))
    return out


def check_same_device(op: str, **tensors: torch.Tensor) -> torch.device:
    """All tensors on one device, or an error naming each tensor's device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"{op}: tensors are on different devices: {devices}")
    return next(iter(devices.values()))


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the kernels run in: the autocast dtype inside ``torch.autocast`` for x's device, else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype
