"""``glam_fast.optimize(model)``: make a GLAM ready for the fused path."""

from __future__ import annotations

import torch
from torch import nn

from glam_fast.models.glam import GLAM


def _shape_of(model: nn.Module, shape) -> tuple[int, int]:
    shape = shape if shape is not None else getattr(model, "shape", None)
    if shape is None:
        raise ValueError(
            f"optimize: cannot tell the input shape (H, W) of this {type(model).__name__} (it has no `shape` attribute); "
            "pass shape=(H, W), e.g. shape=(26, 57)"
        )
    return int(shape[0]), int(shape[1])


def _adopt(model: nn.Module, shape) -> GLAM:
    """A glam_fast.GLAM whose parameters and buffers ARE the given model's tensors (same objects)."""
    height, width = _shape_of(model, shape)
    theirs = dict(model.named_parameters())
    their_buffers = dict(model.named_buffers())
    if "fc.weight" not in theirs:
        raise ValueError(f"optimize: {type(model).__name__} has no `fc.weight`; expected GLAM's parameter names (MODELS.md §1)")
    with torch.device("meta"):  # nothing is allocated: every tensor is replaced below
        glam = GLAM(shape=(height, width), num_classes=theirs["fc.weight"].shape[0])
    ours = dict(glam.named_parameters())
    our_buffers = dict(glam.named_buffers())
    for kind, want, got in (("parameters", ours, theirs), ("buffers", our_buffers, their_buffers)):
        missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        if missing or unexpected:
            raise ValueError(f"optimize: {type(model).__name__} does not have GLAM's {kind}: missing {missing}, unexpected {unexpected}")
        for name, tensor in got.items():
            if tensor.shape != want[name].shape:
                raise ValueError(
                    f"optimize: {name} has shape {tuple(tensor.shape)}, GLAM(shape=({height}, {width})) expects {tuple(want[name].shape)}"
                )
    for name, tensor in theirs.items():
        owner, _, leaf = name.rpartition(".")
        glam.get_submodule(owner)._parameters[leaf] = tensor
    for name, tensor in their_buffers.items():
        owner, _, leaf = name.rpartition(".")
        glam.get_submodule(owner)._buffers[leaf] = tensor
    glam.train(model.training)
    return glam


def optimize(model: nn.Module, *, shape: tuple[int, int] | None = None, dtype: torch.dtype | None = None) -> GLAM:
    """Return ``model`` as a glam_fast.GLAM ready for the fused (``triton``) path.

    Args:
        model: a glam_fast.GLAM (returned as is), or a GLAM built from another class with the same
            parameter names (the authors' code): then a glam_fast.GLAM is returned that shares its
            parameters and buffers -- the same tensors, not copies -- so training either trains both.
        shape: (H, W) of the input segments, needed when ``model`` has no ``shape`` attribute.
        dtype: the compute dtype to prepare inference weights for (default: the parameters'
            dtype; pass e.g. torch.bfloat16 for use under autocast).

    In eval mode the BatchNorm-folded, packed inference weights are computed now (and cached),
    so the first fused call does not pay for it.
    """
    glam = model if isinstance(model, GLAM) else _adopt(model, shape)
    if not glam.training:
        from glam_fast.ops.glam_forward import folded

        folded(glam, dtype or glam.fc.weight.dtype)
    return glam
