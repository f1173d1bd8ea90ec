"""Winograd F(4x4, 3x3) and F(4x4, 5x5) convolution + bias + ReLU for CPU inference (AFCN's
conv2-5, GLAM's conv5 and wider multi-scale branches).

A k x k convolution (k = 3 or 5, stride 1, padding (k - 1) / 2) computed on (k + 3)-square input
tiles that overlap by k - 1, each giving a 4x4 output tile (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", 2016): ``Y = A^T [ (G g G^T) * (B^T d B) ] A``. The elementwise
product over the P = (k + 3)^2 positions of the transformed tile, summed over input channels, is P
GEMMs of (tiles, C_in) x (C_in, C_out): 36 / 16 = 2.25 multiplications per output instead of 9
for 3x3 kernels, 64 / 16 = 4 instead of 25 for 5x5. The fewer multiplications cost two
memory-bound transforms and weights P / k^2 times larger (4x, 2.6x), which pay off once there are
enough tiles per GEMM:

- input transform ``v = B^T d B``: native (``glam_fast._C.winograd_input_transform``), its tiles
  split over PyTorch's OpenMP threads;
- the P GEMMs: native (``glam_fast._C.winograd_gemm``: register tiles over weights packed once
  in column panels, work items (position, block of tiles) split over the same threads) while
  their output stays within :data:`NATIVE_GEMM_MAX_BYTES`, above it P oneDNN
  ``_linear_pointwise`` calls with the weights packed in oneDNN's layout;
- output transform ``relu(A^T m A + bias)``: native (``glam_fast._C.winograd_output_transform``).

Numerics: the transforms' coefficients cost precision; in float32 the relative error against a
float64 convolution is ~2e-6 for 3x3 and ~3e-6 for 5x5 kernels (direct: ~3e-7), within fp32
tolerance.

Shapes: x (B, C_in, H, W) channels-last -> (B, C_out, H, W) channels-last; C_in and C_out
multiples of 16 (:func:`supported`). :class:`WinogradConvReLU` runs the direct oneDNN
convolution below :data:`MIN_TILES` tiles, where the GEMMs are too small to win.
:func:`winograd_conv_relu_reference` is the same algorithm in PyTorch ops (float64 or float32),
the reference the native transforms are tested against.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from glam_fast import _extension
from glam_fast import onednn as onednn_ops
from glam_fast.ops.utils import empty_output

# Interpolation points besides infinity, per kernel size: Lavin & Gray's for F(4x4, 3x3), the same
# plus +-1/2 for F(4x4, 5x5). Measured in float32 against float64 for AFCN's conv2 (5x5, 64 ->
# 192): 3.1e-6 relative error with these points, 2.6e-5 with -3 in place of -1/2.
POINTS = {3: (0, 1, -1, 2, -2), 5: (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2))}
KERNEL_SIZES = tuple(POINTS)
OUTPUT_TILE = 4  # every form computes 4x4 output tiles
CHANNEL_STEP = 16  # the native transforms run 16 channels per vector step

# Fewest tiles (B * ceil(H/4) * ceil(W/4)) per call for the Winograd path, per kernel size; below
# it the direct convolution. Measured on 2 cores (AVX-512) with the native GEMM, layer alone: for
# AFCN's conv4 (3x3, 384 -> 256) 1 tile 0.30 ms against 0.19 direct, 2 tiles 0.32 against 0.29,
# 4 tiles 0.43 against 0.57, 12 tiles (its 15 x 11 map at batch 1) 0.90 against 1.5; conv3 and
# conv5 at 12 tiles 0.61 / 0.64 against 1.1 / 0.98. For a 5x5 layer every size measured was
# faster than the direct convolution (AFCN's conv2, 64 -> 192: 1.2 against 2.3 ms at batch 1,
# 48 tiles; GLAM's conv5, 128 -> 128: 0.37-0.60 against 0.77-0.86 ms at 16 tiles). Layers with few
# channels are another matter (the GEMMs are thin, the transforms the same): the callers choose
# per layer (glam_fast.inference).
MIN_TILES = {3: 4, 5: 1}

# Largest output (P x tiles x C_out floats) of the native GEMM, in bytes. Above it the P GEMMs
# run as oneDNN calls with one output each: glibc's malloc maps a buffer larger than 32 MB and
# page-faults it on every call (AFCN's conv2 at 768 tiles: 23 ms native, 14 ms as 64 oneDNN calls;
# at 384 tiles 6.1 against 8.3).
NATIVE_GEMM_MAX_BYTES = 32 << 20

# The native transforms split their tiles over PyTorch's own OpenMP threads (a parallel region of
# the team of the runtime libtorch_cpu uses: _C.cpu_openmp_runtime()). Each PyTorch
# op before a transform leaves those workers spin-waiting on their cores: threads of our own
# shared a core with them (in AFCN at batch 32 on 2 cores, 15-16 ms of transforms per forward on
# two std::threads against 11.6 on one), while the OpenMP team's own workers take their share.
# Measured against one thread in the model (2 cores, in-process, alternating): batch 8 36.2 vs
# 38.5 ms, batch 32 135 vs 148 ms, batch 1 level.


@functools.cache
def toom_cook(kernel_size: int) -> tuple[tuple, tuple, tuple]:
    """Exact (A^T, G, B^T) of F(4x4, k x k) from :data:`POINTS` (Toom-Cook, one point at infinity):
    A^T (4, a), G (a, k), B^T (a, a) as nested tuples of Fractions, a = k + 3."""
    points = [Fraction(p) for p in POINTS[kernel_size]]
    tile = OUTPUT_TILE + kernel_size - 1
    at = tuple(tuple(p**i for p in points) + (Fraction(int(i == OUTPUT_TILE - 1)),) for i in range(OUTPUT_TILE))
    scale = [math.prod(p - q for q in points if q != p) for p in points]
    g = tuple(tuple(p**k / f for k in range(kernel_size)) for p, f in zip(points, scale))
    g += (tuple(Fraction(int(k == kernel_size - 1)) for k in range(kernel_size)),)

    def product_except(skip) -> list[Fraction]:  # coefficients (low to high) of prod (x - q), q != skip
        poly = [Fraction(1)]
        for q in points:
            if q != skip:
                poly = [a - q * b for a, b in zip([Fraction(0), *poly], [*poly, Fraction(0)])]
        return poly

    bt = tuple(tuple(product_except(p) + [Fraction(0)]) for p in points) + (tuple(product_except(None)),)
    assert len(bt) == len(bt[0]) == tile
    return at, g, bt


def positions(kernel_size: int) -> int:
    """GEMMs per call: the positions of the (k + 3)-square transformed tile."""
    return (kernel_size + OUTPUT_TILE - 1) ** 2


def _matrix(rows, dtype: torch.dtype, device) -> torch.Tensor:
    return torch.tensor([[float(v) for v in row] for row in rows], dtype=dtype, device=device)


def tiles(batch: int, height: int, width: int) -> int:
    """Number of 4x4 output tiles of a (batch, ., height, width) map."""
    return batch * ((height + 3) // 4) * ((width + 3) // 4)


def supported(weight: torch.Tensor, stride, padding, groups: int = 1) -> bool:
    """Whether a convolution layer has a form this op computes: 3x3 with padding 1 or 5x5 with
    padding 2, stride 1, no groups, C_in and C_out multiples of 16."""
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if weight.dim() != 4:
        return False
    c_out, c_in, kh, kw = weight.shape
    return (
        kh == kw and kh in KERNEL_SIZES and pair(stride) == (1, 1) and pair(padding) == (kh // 2, kh // 2) and groups == 1
        and c_in % CHANNEL_STEP == 0 and c_out % CHANNEL_STEP == 0
    )


def native_available() -> bool:
    """True when the extension with the Winograd transforms is importable."""
    return _extension.has("winograd_input_transform")


def openmp_runtime() -> str:
    """The OpenMP runtime (PyTorch's) whose threads the native transforms share; '' when they run
    on the calling thread only (no extension, not Linux, or no runtime found through libtorch_cpu)."""
    return _native().cpu_openmp_runtime() if native_available() else ""


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, k, k) -> (P, C_out, C_in): ``G g G^T`` per position (computed in float64)."""
    g = _matrix(toom_cook(weight.shape[-1])[1], torch.float64, weight.device)
    u = torch.einsum("ar,ocrs,bs->aboc", g, weight.detach().double(), g)
    return u.reshape(-1, *weight.shape[:2]).to(weight.dtype).contiguous()


def pack_panels(u: torch.Tensor) -> torch.Tensor:
    """(P, C_in, C_out) -> (P, C_in * C_out): each position's matrix in the column panels the
    native GEMM streams (32 columns, C_in x 32 contiguous, then a last panel of 16 when C_out % 32
    is 16); C_out a multiple of :data:`CHANNEL_STEP`."""
    positions, c_in, c_out = u.shape
    full = c_out // 32 * 32
    panels = [u[:, :, :full].reshape(positions, c_in, full // 32, 32).permute(0, 2, 1, 3).reshape(positions, -1)]
    if full < c_out:
        panels.append(u[:, :, full:].reshape(positions, -1))
    return torch.cat(panels, dim=1).contiguous()


def unpack_panels(panels: torch.Tensor, c_in: int, c_out: int) -> torch.Tensor:
    """The inverse of :func:`pack_panels`: (P, C_in * C_out) -> (P, C_in, C_out)."""
    positions, full = panels.shape[0], c_out // 32 * 32
    u = panels[:, : c_in * full].reshape(positions, full // 32, c_in, 32).permute(0, 2, 1, 3).reshape(positions, c_in, full)
    if full < c_out:
        u = torch.cat([u, panels[:, c_in * full :].reshape(positions, c_in, c_out - full)], dim=2)
    return u.contiguous()


def winograd_conv_relu_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The same algorithm in PyTorch ops, in x's dtype: x (B, C_in, H, W) -> (B, C_out, H, W).

    Equal to ``relu(conv2d(x, weight, bias, padding=k // 2))`` up to rounding; tests check the
    native transforms against it (same arithmetic) and it against the direct convolution (the
    algorithm).
    """
    batch, _, height, width = x.shape
    kernel_size = weight.shape[-1]
    tile, pad = kernel_size + OUTPUT_TILE - 1, kernel_size // 2
    th, tw = (height + 3) // 4, (width + 3) // 4
    dt = x.dtype
    at_rows, _, bt_rows = toom_cook(kernel_size)
    bt, at = _matrix(bt_rows, dt, x.device), _matrix(at_rows, dt, x.device)
    padded = F.pad(x, (pad, 4 * tw + tile - 4 - pad - width, pad, 4 * th + tile - 4 - pad - height))
    patches = padded.unfold(2, tile, 4).unfold(3, tile, 4)  # (B, C, th, tw, tile, tile)
    v = torch.einsum("ar,nctwrs,bs->abntwc", bt, patches, bt)  # (tile, tile, B, th, tw, C_in)
    u = transform_weight(weight.to(dt)).reshape(tile, tile, *weight.shape[:2])  # (tile, tile, C_out, C_in)
    m = torch.einsum("abntwc,aboc->abntwo", v, u)
    y = torch.einsum("ia,abntwo,jb->ntiwjo", at, m, at).reshape(batch, 4 * th, 4 * tw, -1)[:, :height, :width]
    return F.relu(y + bias.to(dt)).permute(0, 3, 1, 2)


def _native():
    return _extension.require("winograd_input_transform", "the Winograd convolution")


_descriptor = _extension.tensor_descriptor


def input_transform(x_nhwc: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Native ``B^T d B`` for a k x k kernel: x (B, H, W, C) contiguous -> (P, tiles, C), on
    ``torch.get_num_threads()`` of PyTorch's OpenMP threads."""
    batch, height, width, channels = x_nhwc.shape
    v = empty_output((positions(kernel_size), tiles(batch, height, width), channels), dtype=x_nhwc.dtype, device=x_nhwc.device)
    _native().winograd_input_transform(_descriptor(x_nhwc), _descriptor(v), kernel_size, torch.get_num_threads())
    return v


def gemm(v: torch.Tensor, weight_panels: torch.Tensor, c_out: int) -> torch.Tensor:
    """Native ``m[k] = v[k] @ u[k]``: v (P, tiles, C_in), u packed by :func:`pack_panels` ->
    m (P, tiles, C_out), on ``torch.get_num_threads()`` of PyTorch's OpenMP threads."""
    m = empty_output((v.shape[0], v.shape[1], c_out), dtype=v.dtype, device=v.device)
    _native().winograd_gemm(_descriptor(v), _descriptor(weight_panels), _descriptor(m), torch.get_num_threads())
    return m


def output_transform(m: torch.Tensor | list[torch.Tensor], bias: torch.Tensor, height: int, width: int, kernel_size: int) -> torch.Tensor:
    """Native ``relu(A^T m A + bias)``: the GEMM outputs, one (P, tiles, C) tensor or P (tiles, C)
    ones -> (B, H, W, C) contiguous, on ``torch.get_num_threads()`` of PyTorch's OpenMP threads."""
    n_tiles, channels = m.shape[1:] if isinstance(m, torch.Tensor) else m[0].shape
    batch = n_tiles // tiles(1, height, width)
    y = empty_output((batch, height, width, channels), dtype=bias.dtype, device=bias.device)
    m_arg = _descriptor(m) if isinstance(m, torch.Tensor) else [_descriptor(t) for t in m]
    _native().winograd_output_transform(m_arg, _descriptor(bias), _descriptor(y), kernel_size, torch.get_num_threads())
    return y


class WinogradConvReLU(nn.Module):
    """``relu(conv2d(x, weight, bias, padding=k // 2))`` for a 3x3 or 5x5 layer (:func:`supported`):
    the Winograd F(4x4, k x k) path from ``min_tiles`` tiles per call up (default
    :data:`MIN_TILES`; None: never), the direct oneDNN convolution below.

    x: (B, C_in, H, W) float32 on the CPU, any memory format -> (B, C_out, H, W) channels-last.
    Inference only: an input that requires grad (with grad mode on) runs the direct convolution's
    PyTorch ops.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, min_tiles: int | None | str = "auto"):
        super().__init__()
        kernel_size = weight.shape[-1] if weight.dim() == 4 else 0
        if not supported(weight, 1, kernel_size // 2):
            raise ValueError(
                f"WinogradConvReLU needs a 3x3 or 5x5 weight with C_in and C_out multiples of {CHANNEL_STEP}, got {tuple(weight.shape)}"
            )
        _native()
        self.kernel_size = kernel_size
        self.out_channels, self.in_channels = weight.shape[:2]
        self.direct = onednn_ops.ConvReLU(weight, bias, padding=kernel_size // 2, onednn=True, channels_last=True)
        # (P, C_in * C_out): each position's (C_in, C_out) right-hand side in the native GEMM's panels
        self.weight_panels = nn.Parameter(pack_panels(transform_weight(weight).transpose(1, 2)), requires_grad=False)
        self.min_tiles = MIN_TILES[kernel_size] if min_tiles == "auto" else min_tiles
        self._onednn_weights: list[torch.Tensor] | None = None

    @property
    def bias(self) -> torch.Tensor:
        return self.direct.bias

    @property
    def onednn(self) -> bool:
        return self.direct.onednn

    def uses_winograd(self, x: torch.Tensor) -> bool:
        return (
            self.min_tiles is not None and self.onednn and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and not (x.requires_grad and torch.is_grad_enabled()) and tiles(x.shape[0], x.shape[2], x.shape[3]) >= self.min_tiles
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.uses_winograd(x):
            return self.direct(x)
        batch, _, height, width = x.shape
        n_tiles = tiles(batch, height, width)
        v = input_transform(x.permute(0, 2, 3, 1).contiguous(), self.kernel_size)  # (P, tiles, C_in)
        if v.shape[0] * n_tiles * self.out_channels * 4 <= NATIVE_GEMM_MAX_BYTES:
            m = gemm(v, self.weight_panels, self.out_channels)  # (P, tiles, C_out)
        else:
            if self._onednn_weights is None:  # oneDNN's layout of each position's (C_out, C_in) weight
                u = unpack_panels(self.weight_panels, self.in_channels, self.out_channels)
                self._onednn_weights = [torch.ops.mkldnn._reorder_linear_weight(u_k.t().contiguous(), n_tiles) for u_k in u]
            m = [torch.ops.mkldnn._linear_pointwise(v_k, w_k, None, "none", [], "") for v_k, w_k in zip(v, self._onednn_weights)]
        return output_transform(m, self.bias, height, width, self.kernel_size).permute(0, 3, 1, 2)

    def _apply(self, fn, recurse=True):
        self._onednn_weights = None  # moving or casting invalidates the packed weights
        return super()._apply(fn, recurse)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_onednn_weights"] = None  # opaque oneDNN tensors: rebuilt on first use after a copy
        return state

    def extra_repr(self) -> str:
        k = self.kernel_size
        return f"{self.in_channels}, {self.out_channels}, kernel_size=({k}, {k}), padding=({k // 2}, {k // 2}), min_tiles={self.min_tiles}"
