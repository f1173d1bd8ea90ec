"""oneDNN calls for the CPU inference forms (:mod:`glam_fast.inference`): fused epilogues and
pre-packed convolution weights.

``F.conv2d`` on the CPU reorders its weight into oneDNN's blocked layout on every call and runs
the ReLU that follows as a separate pass over the output; ``F.linear`` + ``F.gelu`` is likewise
two passes. PyTorch's own oneDNN operators (the ones inductor's CPU freezing pass emits) take a
weight packed once and apply ReLU / GELU / a residual add as the GEMM's epilogue:

- ``torch.ops.mkldnn._reorder_convolution_weight``: the weight in oneDNN's layout (an opaque
  tensor: no storage, so it is never saved, copied or pickled; it is rebuilt on first use);
- ``torch.ops.mkldnn._convolution_pointwise(..., "relu")``: convolution + bias + ReLU;
- ``torch.ops.mkldnn._linear_pointwise(..., "gelu" / "tanh")`` and its ``.binary(..., "add")`` form.

These operators have no backward, so they run only when no gradient is needed; an input that
requires grad (with grad mode on) runs the equivalent PyTorch ops, which give the same values.
Whether a prepared module uses oneDNN is fixed when it is built (``prepare(onednn=...)``) and
re-checked when it is moved (``.to(...)``): CPU, float32 and a PyTorch build with oneDNN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def available(device: torch.device, dtype: torch.dtype) -> bool:
    """True when the oneDNN path can run for parameters on ``device`` with ``dtype``."""
    return (
        device.type == "cpu"
        and dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    )


def resolve(requested: bool | None, device: torch.device, dtype: torch.dtype) -> bool:
    """The oneDNN flag of a prepared module: ``None`` = where available; ``True`` = required."""
    usable = available(device, dtype)
    if requested and not usable:
        raise RuntimeError(
            f"prepare(onednn=True) needs float32 parameters on the CPU and a PyTorch build with oneDNN; "
            f"got {dtype} on {device} (torch.backends.mkldnn.is_available() = {torch.backends.mkldnn.is_available()})"
        )
    return usable if requested is None else bool(requested)


def _needs_grad(x: torch.Tensor) -> bool:
    return x.requires_grad and torch.is_grad_enabled()


class ConvReLU(nn.Module):
    """``ReLU(conv2d(x, weight, bias))``: one oneDNN call with a pre-packed weight, or PyTorch ops.

    x: (B, C_in, H, W), any memory format (channels-last avoids a reorder); returns
    (B, C_out, H', W') in oneDNN's choice of format (channels-last for channels-last input).
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor, padding, stride=1, groups: int = 1, onednn: bool = False, channels_last: bool = True
    ):
        super().__init__()
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(weight.detach().clone().contiguous(memory_format=memory_format), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone().contiguous(), requires_grad=False)
        pair = lambda v: [v, v] if isinstance(v, int) else list(v)
        self.padding, self.stride, self.groups = pair(padding), pair(stride), groups
        self.onednn_requested = onednn
        self.onednn = onednn
        self._packed: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn and not _needs_grad(x):
            if self._packed is None:
                self._packed = torch.ops.mkldnn._reorder_convolution_weight(self.weight, self.padding, self.stride, [1, 1], self.groups)
            return torch.ops.mkldnn._convolution_pointwise(x, self._packed, self.bias, self.padding, self.stride, [1, 1], self.groups, "relu", [], "")
        return F.relu(F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding, groups=self.groups))

    def _apply(self, fn, recurse=True):
        # Moving or casting the module invalidates the packed weight, and may rule oneDNN out.
        self._packed = None
        module = super()._apply(fn, recurse)
        self.onednn = bool(self.onednn_requested) and available(self.weight.device, self.weight.dtype)
        return module

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_packed"] = None  # opaque oneDNN tensor: rebuilt on first use after a copy
        return state

    def extra_repr(self) -> str:
        return (
            f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel_size={tuple(self.weight.shape[2:])}, "
            f"stride={tuple(self.stride)}, padding={tuple(self.padding)}, groups={self.groups}, onednn={self.onednn}"
        )


# The unary epilogues used here: oneDNN post-op name -> the PyTorch op it stands for.
_LINEAR_ACTIVATIONS = {"gelu": F.gelu, "tanh": torch.tanh}


def linear_activation(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, activation: str, onednn: bool) -> torch.Tensor:
    """``activation(x @ weight.T + bias)``, activation "gelu" (exact erf GELU) or "tanh";
    x: (..., in) -> (..., out)."""
    if onednn and not _needs_grad(x):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], "none")  # "none": erf GELU
    return _LINEAR_ACTIVATIONS[activation](F.linear(x, weight, bias))


def linear_add(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, other: torch.Tensor, onednn: bool) -> torch.Tensor:
    """``x @ weight.T + bias + other``; x: (..., in), other: (..., out) -> (..., out)."""
    if onednn and not _needs_grad(x):
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, weight, bias, "add")
    return F.linear(x, weight, bias) + other
