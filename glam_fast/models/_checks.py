"""Input validation shared by the models: clear errors before any kernel sees a bad tensor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from glam_fast.interop import as_tensor, is_dlpack_array


def check_input(
    x: object,
    module: nn.Module,
    layout: str,
    sizes: Sequence[int | None],
    min_sizes: Sequence[int] | None = None,
) -> torch.Tensor:
    """Validate a model input against ``layout`` (e.g. "(B, 1, 26, 57)") and return it as a tensor.

    ``x`` may be a torch.Tensor or any DLPack array (a CuPy array, ...), taken over without a copy.
    ``sizes`` holds the required size of each dim (None: any). ``min_sizes`` (optional) holds the
    smallest size each dim may have. Errors name the model, the expected layout and what came in.
    """
    name = type(module).__name__
    if is_dlpack_array(x):
        x = as_tensor(x, f"{name} input")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor (or a DLPack array such as a CuPy array) of shape {layout}, got {type(x).__name__}")
    shape = tuple(x.shape)
    if x.dim() != len(sizes):
        raise ValueError(f"{name} expects a {len(sizes)}-D input of shape {layout}, got shape {shape}")
    for dim, (got, want) in enumerate(zip(shape, sizes)):
        if want is not None and got != want:
            raise ValueError(f"{name} expects input of shape {layout}, got shape {shape} (dim {dim} is {got}, expected {want})")
    if min_sizes is not None:
        for dim, (got, least) in enumerate(zip(shape, min_sizes)):
            if got < least:
                raise ValueError(f"{name} expects input of shape {layout} with dim {dim} >= {least}, got shape {shape}")
    if shape[0] == 0:
        raise ValueError(f"{name} got an empty batch (shape {shape})")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point input of shape {layout}, got dtype {x.dtype}")
    param = next(module.parameters())
    if x.device != param.device:
        raise ValueError(
            f"{name} input is on {x.device} but the model is on {param.device}; move one of them with .to(...)"
        )
    if x.dtype != param.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"{name} input has dtype {x.dtype} but the model's parameters are {param.dtype}; "
            f"convert the input (x.to({param.dtype})) or the model, or run under torch.autocast"
        )
    return x
