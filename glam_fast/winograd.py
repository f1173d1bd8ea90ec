"""Winograd F(4x4, 3x3) convolution + bias + ReLU for CPU inference (AFCN's conv3-5).

A 3x3 convolution (stride 1, padding 1) computed on 6x6 input tiles that overlap by 2, each
giving a 4x4 output tile (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
2016): ``Y = A^T [ (G g G^T) * (B^T d B) ] A``. The elementwise product over the 36 positions of
the transformed tile, summed over input channels, is 36 GEMMs of (tiles, C_in) x (C_in, C_out):
2.25 multiplications per output instead of 9. The 4x fewer multiplications cost two memory-bound
transforms and weights 4x larger (36 / 9), which pay off once there are enough tiles per GEMM:

- input transform ``v = B^T d B``: native (``glam_fast._C.winograd_input_transform``);
- the 36 GEMMs: one ``torch.bmm`` up to :data:`BMM_MAX_TILES` tiles, above it 36 oneDNN
  ``_linear_pointwise`` calls with the transformed weights packed once;
- output transform ``relu(A^T m A + bias)``: native (``glam_fast._C.winograd_output_transform``).

Numerics: the transforms' coefficients (up to 8 and 1/24) cost precision; in float32 the
relative error against a float64 convolution is ~2e-6 (direct: ~2e-7), within fp32 tolerance.

Shapes: x (B, C_in, H, W) channels-last -> (B, C_out, H, W) channels-last; C_in and C_out
multiples of 16 (:func:`supported`). :class:`WinogradConvReLU` runs the direct oneDNN
convolution below :data:`MIN_TILES` tiles, where the GEMMs are too small to win.
:func:`winograd_conv3x3_relu_reference` is the same algorithm in PyTorch ops (float64 or float32),
the reference the native transforms are tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glam_fast import _extension
from glam_fast import onednn as onednn_ops
from glam_fast.ops.utils import empty_output

# F(4x4, 3x3) with interpolation points 0, +-1, +-2 and infinity (Lavin & Gray, 2016).
_BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))
POSITIONS = 36  # 6 x 6 transformed tile
CHANNEL_STEP = 16  # the native transforms run 16 channels per vector step

# Fewest tiles (B * ceil(H/4) * ceil(W/4)) per call for the Winograd path; below it the direct
# convolution. Measured on 2 cores (AVX-512) for AFCN's conv3-5 on a 15 x 11 map (12 tiles per
# item): at batch 1 Winograd took 5.9 ms against 3.5 direct (the 4x larger transformed weights
# are streamed for 12-row GEMMs), at batch 2 5.3 against 6.1, at batch 8 14.2 against 23.5.
MIN_TILES = 24

# Most tiles for which the 36 GEMMs run as one batched matmul (torch.bmm); above, 36 oneDNN calls
# with packed weights. Measured for AFCN's conv3-5 (36 positions): at 12 tiles bmm took 0.45-0.68
# ms per layer against 0.93-1.08 for the oneDNN calls, at 96 tiles level, at 384 tiles 11-16 ms
# against 10-14.
BMM_MAX_TILES = 96

# The native transforms run on the calling thread alone: each oneDNN GEMM before a transform
# leaves PyTorch's OpenMP workers spin-waiting on their cores, and a second transform thread
# shared a core with one of them. Measured in AFCN at batch 32 on 2 cores: 11.6 ms of transforms
# per forward on one thread, 15-16 ms on two.


def _matrix(rows, dtype: torch.dtype, device) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype, device=device)


def tiles(batch: int, height: int, width: int) -> int:
    """Number of 4x4 output tiles of a (batch, ., height, width) map."""
    return batch * ((height + 3) // 4) * ((width + 3) // 4)


def supported(weight: torch.Tensor, stride, padding, groups: int = 1) -> bool:
    """Whether a convolution layer has the form this op computes: 3x3, stride 1, padding 1, no
    groups, C_in and C_out multiples of 16."""
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    c_out, c_in, kh, kw = weight.shape
    return (
        (kh, kw) == (3, 3) and pair(stride) == (1, 1) and pair(padding) == (1, 1) and groups == 1
        and c_in % CHANNEL_STEP == 0 and c_out % CHANNEL_STEP == 0
    )


def native_available() -> bool:
    """True when the extension with the Winograd transforms is importable."""
    module, _ = _extension.load()
    return module is not None and hasattr(module, "winograd_input_transform")


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> (36, C_out, C_in): ``G g G^T`` per position (computed in float64)."""
    g = _matrix(_G, torch.float64, weight.device)
    u = torch.einsum("ar,ocrs,bs->aboc", g, weight.detach().double(), g)
    return u.reshape(POSITIONS, *weight.shape[:2]).to(weight.dtype).contiguous()


def winograd_conv3x3_relu_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The same algorithm in PyTorch ops, in x's dtype: x (B, C_in, H, W) -> (B, C_out, H, W).

    Equal to ``relu(conv2d(x, weight, bias, padding=1))`` up to rounding; tests check the native
    transforms against it (same arithmetic) and it against the direct convolution (the algorithm).
    """
    batch, _, height, width = x.shape
    th, tw = (height + 3) // 4, (width + 3) // 4
    dt = x.dtype
    bt, at = _matrix(_BT, dt, x.device), _matrix(_AT, dt, x.device)
    patches = F.pad(x, (1, 4 * tw + 1 - width, 1, 4 * th + 1 - height)).unfold(2, 6, 4).unfold(3, 6, 4)  # (B, C, th, tw, 6, 6)
    v = torch.einsum("ar,nctwrs,bs->abntwc", bt, patches, bt)  # (6, 6, B, th, tw, C_in)
    u = transform_weight(weight.to(dt)).reshape(6, 6, *weight.shape[:2])  # (6, 6, C_out, C_in)
    m = torch.einsum("abntwc,aboc->abntwo", v, u)
    y = torch.einsum("ia,abntwo,jb->ntiwjo", at, m, at).reshape(batch, 4 * th, 4 * tw, -1)[:, :height, :width]
    return F.relu(y + bias.to(dt)).permute(0, 3, 1, 2)


def _native():
    module, reason = _extension.load()
    if module is None or not hasattr(module, "winograd_input_transform"):
        raise RuntimeError(f"the Winograd convolution needs glam_fast's native extension: {reason or 'built without the Winograd transforms'}")
    return module


_descriptor = _extension.tensor_descriptor


def input_transform(x_nhwc: torch.Tensor) -> torch.Tensor:
    """Native ``B^T d B``: x (B, H, W, C) contiguous -> (36, tiles, C)."""
    batch, height, width, channels = x_nhwc.shape
    v = empty_output((POSITIONS, tiles(batch, height, width), channels), dtype=x_nhwc.dtype, device=x_nhwc.device)
    _native().winograd_input_transform(_descriptor(x_nhwc), _descriptor(v))
    return v


def output_transform(m: list[torch.Tensor], bias: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Native ``relu(A^T m A + bias)``: 36 (tiles, C) GEMM outputs -> (B, H, W, C) contiguous."""
    n_tiles, channels = m[0].shape
    batch = n_tiles // tiles(1, height, width)
    y = empty_output((batch, height, width, channels), dtype=m[0].dtype, device=m[0].device)
    _native().winograd_output_transform([_descriptor(t) for t in m], _descriptor(bias), _descriptor(y))
    return y


class WinogradConvReLU(nn.Module):
    """``relu(conv2d(x, weight, bias, padding=1))`` for a 3x3 layer (:func:`supported`): the
    Winograd F(4x4, 3x3) path from :data:`MIN_TILES` tiles up, the direct oneDNN convolution below.

    x: (B, C_in, H, W) float32 on the CPU, any memory format -> (B, C_out, H, W) channels-last.
    Inference only: an input that requires grad (with grad mode on) runs the direct convolution's
    PyTorch ops.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, min_tiles: int = MIN_TILES):
        super().__init__()
        if not supported(weight, 1, 1):
            raise ValueError(f"WinogradConvReLU needs a 3x3 weight with C_in and C_out multiples of {CHANNEL_STEP}, got {tuple(weight.shape)}")
        _native()
        self.direct = onednn_ops.ConvReLU(weight, bias, padding=1, onednn=True, channels_last=True)
        # (36, C_in, C_out): the right-hand side of the batched GEMM
        self.weight_transformed = nn.Parameter(transform_weight(weight).transpose(1, 2).contiguous(), requires_grad=False)
        self.min_tiles = min_tiles
        self._packed: list[torch.Tensor] | None = None

    @property
    def bias(self) -> torch.Tensor:
        return self.direct.bias

    @property
    def onednn(self) -> bool:
        return self.direct.onednn

    def uses_winograd(self, x: torch.Tensor) -> bool:
        return (
            self.onednn and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and not (x.requires_grad and torch.is_grad_enabled()) and tiles(x.shape[0], x.shape[2], x.shape[3]) >= self.min_tiles
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.uses_winograd(x):
            return self.direct(x)
        batch, _, height, width = x.shape
        n_tiles = tiles(batch, height, width)
        v = input_transform(x.permute(0, 2, 3, 1).contiguous())  # (36, tiles, C_in)
        if n_tiles <= BMM_MAX_TILES:
            m = torch.bmm(v, self.weight_transformed).unbind(0)  # 36 x (tiles, C_out)
        else:
            if self._packed is None:  # oneDNN's layout of each position's (C_out, C_in) weight
                self._packed = [torch.ops.mkldnn._reorder_linear_weight(u.t().contiguous(), n_tiles) for u in self.weight_transformed]
            m = [torch.ops.mkldnn._linear_pointwise(v[k], self._packed[k], None, "none", [], "") for k in range(POSITIONS)]
        return output_transform(m, self.bias, height, width).permute(0, 3, 1, 2)

    def _apply(self, fn, recurse=True):
        self._packed = None  # moving or casting invalidates the packed weights
        return super()._apply(fn, recurse)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_packed"] = None  # opaque oneDNN tensors: rebuilt on first use after a copy
        return state

    def extra_repr(self) -> str:
        c_in, c_out = self.weight_transformed.shape[1:]
        return f"{c_in}, {c_out}, kernel_size=(3, 3), padding=(1, 1), min_tiles={self.min_tiles}"
