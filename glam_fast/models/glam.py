"""GLAM: GLobal-Aware Multi-scale network (Zhu & Li, ICASSP 2022), plain-PyTorch reference.

Every fused GLAM kernel is defined by what it must equal: this module. Parameter names follow the
authors' code (including the nesting of the gMLP block from g-mlp-pytorch 0.1.5) so that their
checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glam_fast import dispatch
from glam_fast.models._checks import check_input

N_CHANNELS = 128  # channels after conv5 = tokens of the global-aware fusion
# The multi-scale blocks in order, each with whether a 2x2 max-pool follows it (forward_reference).
MULTISCALE_BLOCKS = (("conv2", True), ("conv3", True), ("conv4", False))


class ResMultiConv(nn.Module):
    """Multi-scale block: ``ReLU(BN_2C(cat[conv3(x) + x, conv5(x) + x]))``, (B, C, H, W) -> (B, 2C, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv3 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv5 = nn.Conv2d(channels, channels, kernel_size=5, padding=2)
        self.bn = nn.BatchNorm2d(2 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x3 = self.conv3(x) + x
        x5 = self.conv5(x) + x
        return F.relu(self.bn(torch.cat((x3, x5), dim=1)))


class SpatialGatingUnit(nn.Module):
    """gMLP gate: (B, n, 2e) -> (B, n, e); ``tanh(Ws @ LN(G) + bs) * R`` with R, G the two halves."""

    def __init__(self, dim: int, n_tokens: int, init_eps: float = 1e-3):
        super().__init__()
        self.norm = nn.LayerNorm(dim // 2)
        # One head, as GLAM uses it: weight (1, n, n) mixes tokens, bias (1, n) per token.
        self.weight = nn.Parameter(torch.empty(1, n_tokens, n_tokens).uniform_(-init_eps / n_tokens, init_eps / n_tokens))
        self.bias = nn.Parameter(torch.ones(1, n_tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res, gate = x.chunk(2, dim=-1)
        gate = self.norm(gate)
        gate = torch.matmul(self.weight[0], gate) + self.bias[0, :, None]
        return torch.tanh(gate) * res


class GatedMLPBlock(nn.Module):
    """proj_in (Linear d->4d, GELU) -> spatial gating unit -> proj_out (Linear 2d->d)."""

    def __init__(self, dim: int, n_tokens: int, expansion: int = 4):
        super().__init__()
        hidden = dim * expansion
        self.proj_in = nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
        self.sgu = SpatialGatingUnit(hidden, n_tokens)
        self.proj_out = nn.Linear(hidden // 2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.sgu(self.proj_in(x)))


class _TokenShift(nn.Module):
    """The authors' gMLP wraps the block in a token shift that is the identity at GLAM's settings;
    kept only so that parameter names match theirs (``...fn.fn.fn.proj_in``)."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class _PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class _Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


class GlobalAwareFusion(nn.Module):
    """One gMLP block over the 128 channel tokens: (B, 128, d) -> (B, 128, d), ``X + gMLP(LN(X))``."""

    def __init__(self, dim: int, n_tokens: int = N_CHANNELS):
        super().__init__()
        self.layers = nn.ModuleList([_Residual(_PreNorm(dim, _TokenShift(GatedMLPBlock(dim, n_tokens))))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class GLAM(nn.Module):
    """GLAM for MFCC segments.

    Args:
        shape: (H, W) of the input MFCC segment: 26 coefficients x 57 frames for 1.8 s at 16 kHz.
        num_classes: number of emotion classes (raw logits are returned).

    Input (B, 1, H, W) float; output (B, num_classes) logits. ``fusion_dim`` = (H//2)*(W//4) is
    the token size of the global-aware fusion (182 at 26x57).
    """

    def __init__(self, shape: tuple[int, int] = (26, 57), num_classes: int = 4):
        super().__init__()
        height, width = int(shape[0]), int(shape[1])
        if height < 2 or width < 4:
            raise ValueError(f"GLAM needs shape (H, W) with H >= 2 and W >= 4 (two 2x2 pools), got {shape}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.shape = (height, width)
        self.num_classes = int(num_classes)
        self.fusion_dim = (height // 2) * (width // 4)

        self.conv1a = nn.Conv2d(1, 16, kernel_size=(3, 1), padding=(1, 0))
        self.conv1b = nn.Conv2d(1, 16, kernel_size=(1, 3), padding=(0, 1))
        self.bn1a = nn.BatchNorm2d(16)
        self.bn1b = nn.BatchNorm2d(16)
        self.conv2 = ResMultiConv(16)
        self.conv3 = ResMultiConv(32)
        self.conv4 = ResMultiConv(64)
        self.conv5 = nn.Conv2d(N_CHANNELS, N_CHANNELS, kernel_size=5, padding=2)
        self.bn5 = nn.BatchNorm2d(N_CHANNELS)
        self.gmlp = GlobalAwareFusion(self.fusion_dim)
        self.fc = nn.Linear(N_CHANNELS * self.fusion_dim, self.num_classes)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, num_classes={self.num_classes}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) MFCC segments -> (B, num_classes) logits."""
        x = check_input(x, self, f"(B, 1, {self.shape[0]}, {self.shape[1]})", (None, 1, *self.shape))
        backend = dispatch.resolve("glam", x.device)
        if backend == "torch":
            return self.forward_reference(x)
        return dispatch.implementation("glam", backend)(self, x)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain-PyTorch forward (no input checks): the numerics every kernel must match."""
        xa = F.relu(self.bn1a(self.conv1a(x)))
        xb = F.relu(self.bn1b(self.conv1b(x)))
        x = torch.cat((xa, xb), dim=2)  # along height: (B, 16, 2H, W)
        x = F.max_pool2d(self.conv2(x), 2)
        x = F.max_pool2d(self.conv3(x), 2)
        x = self.conv4(x)
        x = F.relu(self.bn5(self.conv5(x)))
        x = self.gmlp(x.flatten(2))  # 128 tokens of size (H//2)*(W//4)
        return self.fc(F.relu(x).flatten(1))
