"""GLAM's stem for CPU inference as one native call (``csrc/glam_stem_cpu.cpp``).

The stem's two 3-tap convolutions (1 -> 16 channels, BatchNorm folded into the taps, ReLU), one
down each column and one along each row, stacked along the height and written channels-last for
the first multi-scale block: (B, 1, H, W) -> (B, 2H, W, 16) NHWC. In PyTorch ops (pad, two
unfolds, a stack, a small matmul, bias, ReLU: :func:`glam_stem_reference`) it took ~0.1 ms of a
~3 ms segment at batch 1 on a 2-core CPU; the native pass reads the input once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from glam_fast import _extension
from glam_fast.ops.utils import empty_output


def native_available() -> bool:
    return _extension.has("glam_stem_cpu")


def applies(x: torch.Tensor) -> bool:
    """Whether :func:`glam_stem` takes ``x``: float32 on the CPU, no gradient wanted."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not (x.requires_grad and torch.is_grad_enabled())


def glam_stem_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The stem in PyTorch ops: x (B, 1, H, W), weight (2, 3, 16) taps, bias (2, 1, 16) ->
    (B, 2H, W, 16) contiguous (NHWC of the height-concatenated map)."""
    batch, _, height, width = x.shape
    padded = F.pad(x[:, 0], (1, 1, 1, 1))  # (B, H + 2, W + 2)
    taps_a = padded[:, :, 1 : width + 1].unfold(1, 3, 1)  # (B, H, W, 3): the 3 taps along H
    taps_b = padded[:, 1 : height + 1].unfold(2, 3, 1)  # (B, H, W, 3): the 3 taps along W
    taps = torch.stack((taps_a, taps_b), dim=1).view(batch, 2, height * width, 3)
    stem = torch.matmul(taps, weight).add_(bias).relu_()  # (B, 2, H*W, 16)
    return stem.view(batch, 2 * height, width, -1)


def glam_stem(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The native stem, float32 on the CPU, same arguments and result as :func:`glam_stem_reference`."""
    module = _extension.require("glam_stem_cpu", "the native GLAM stem")
    x = x.contiguous()
    batch, _, height, width = x.shape
    out = empty_output((batch, 2 * height, width, weight.shape[-1]), dtype=torch.float32, device="cpu")
    d = _extension.tensor_descriptor
    module.glam_stem_cpu(d(x), d(weight), d(bias.reshape(2, -1)), d(out), torch.get_num_threads())
    return out
