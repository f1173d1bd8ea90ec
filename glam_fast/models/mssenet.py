"""MS-SENet (Li et al., ICASSP 2024), plain-PyTorch reference.

TIM-Net (temporal-aware blocks over both time directions, dynamic fusion) with a multi-scale
squeeze-and-excitation front end in front of each direction. The authors' code is Keras; this
module reproduces its numerics with Keras defaults: BatchNorm eps 1e-3 / momentum 0.99 (PyTorch
momentum 0.01), glorot-uniform weights and zero biases.

Spatial dropout draws its channel masks with :func:`channel_dropout_mask` from torch's global RNG,
in a fixed order, so a fused implementation drawing the same masks in the same order reproduces a
seeded reference run exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glam_fast import dispatch
from glam_fast.models._checks import check_input

KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.01  # Keras momentum 0.99


def channel_dropout_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """Spatial-dropout mask for x of shape (B, C, ...): (B, C) of 0 or 1/(1-p), from torch's RNG."""
    keep = 1.0 - p
    return torch.empty(x.shape[:2], device=x.device, dtype=x.dtype).bernoulli_(keep).div_(keep)


def _apply_channel_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    mask = channel_dropout_mask(x, p)
    return x * mask.view(*mask.shape, *([1] * (x.dim() - 2)))


def _keras_batch_norm(num_features: int, dims: int) -> nn.Module:
    cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return cls(num_features, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


class SqueezeExciteFrontEnd(nn.Module):
    """Multi-scale convolutions + squeeze-and-excitation + skip projection, one time direction.

    (B, T, M) MFCC -> (B, F, T) with M = n_mfcc and F = n_filters.
    """

    def __init__(self, n_mfcc: int = 39, n_filters: int = 39, dropout: float = 0.2):
        super().__init__()
        self.dropout = dropout
        self.conv_time = nn.Conv2d(1, n_filters, kernel_size=(11, 1), padding=(5, 0))
        self.conv_freq = nn.Conv2d(1, n_filters, kernel_size=(1, 9), padding=(0, 4))
        self.conv_square = nn.Conv2d(1, n_filters, kernel_size=(3, 3), padding=(1, 1))
        self.bn_time = _keras_batch_norm(n_filters, 2)
        self.bn_freq = _keras_batch_norm(n_filters, 2)
        self.bn_square = _keras_batch_norm(n_filters, 2)
        self.squeeze = nn.Linear(n_filters, n_filters)
        self.excite = nn.Linear(n_filters, n_filters)
        self.collapse = nn.Conv2d(n_filters, 1, kernel_size=1)
        self.project = nn.Conv1d(4 * n_mfcc, n_filters, kernel_size=1)

    def forward(self, mfcc: torch.Tensor) -> torch.Tensor:
        image = mfcc.unsqueeze(1)  # (B, 1, T, M)
        branches = []
        for conv, bn in ((self.conv_time, self.bn_time), (self.conv_freq, self.bn_freq), (self.conv_square, self.bn_square)):
            h = F.relu(bn(conv(image)))
            branches.append(_apply_channel_dropout(h, self.dropout, self.training))
        h = torch.cat(branches, dim=3)  # along the MFCC axis: (B, F, T, 3M)
        scale = torch.sigmoid(self.excite(F.relu(self.squeeze(h.mean(dim=(2, 3))))))
        h = h * scale[:, :, None, None]
        h = F.relu(self.collapse(h)).squeeze(1)  # (B, T, 3M)
        h = torch.cat((h, mfcc), dim=2)  # skip: the raw MFCC appended -> (B, T, 4M)
        return self.project(h.transpose(1, 2))


class TemporalAwareBlock(nn.Module):
    """Two dilated causal k=2 convs (BN, ReLU, spatial dropout) and a sigmoid gate: (B, F, T) -> (B, F, T)."""

    def __init__(self, channels: int, dilation: int, dropout: float = 0.1):
        super().__init__()
        self.dilation = dilation
        self.dropout = dropout
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=2, dilation=dilation)
        self.bn1 = _keras_batch_norm(channels, 1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=2, dilation=dilation)
        self.bn2 = _keras_batch_norm(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2)):
            h = F.relu(bn(conv(F.pad(h, (self.dilation, 0)))))  # causal: left pad (k-1)*dilation
            h = _apply_channel_dropout(h, self.dropout, self.training)
        return x * torch.sigmoid(h)


class MSSENetDirection(nn.Module):
    """Front end + TAB stack for one time direction; returns every block's output (B, F, T)."""

    def __init__(self, n_mfcc: int, n_filters: int, n_blocks: int, front_dropout: float, block_dropout: float):
        super().__init__()
        self.front = SqueezeExciteFrontEnd(n_mfcc, n_filters, front_dropout)
        self.blocks = nn.ModuleList(TemporalAwareBlock(n_filters, 2**j, block_dropout) for j in range(n_blocks))

    def forward(self, mfcc: torch.Tensor) -> list[torch.Tensor]:
        return self.run_blocks(self.front(mfcc))

    def run_blocks(self, h: torch.Tensor) -> list[torch.Tensor]:
        """The TAB stack on the front end's output h (B, F, T): every block's output (B, F, T)."""
        outputs = []
        for block in self.blocks:
            h = block(h)
            outputs.append(h)
        return outputs


class MSSENet(nn.Module):
    """MS-SENet: (B, T, n_mfcc) MFCC, any T >= 1 -> (B, num_classes) logits.

    Args:
        num_classes: number of emotion classes.
        n_mfcc: MFCC coefficients per frame (39 in the paper).
        n_blocks: temporal-aware blocks per direction, dilations 1, 2, ..., 2**(n_blocks-1).
        n_filters: channels of the front end and the blocks (39 in the paper).
        front_dropout, block_dropout: spatial dropout rates (0.2 and 0.1 in the paper).
    """

    def __init__(
        self,
        num_classes: int = 4,
        n_mfcc: int = 39,
        n_blocks: int = 10,
        n_filters: int = 39,
        front_dropout: float = 0.2,
        block_dropout: float = 0.1,
    ):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("n_mfcc", n_mfcc), ("n_blocks", n_blocks), ("n_filters", n_filters)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, value in (("front_dropout", front_dropout), ("block_dropout", block_dropout)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        self.num_classes, self.n_mfcc, self.n_blocks, self.n_filters = num_classes, n_mfcc, n_blocks, n_filters
        args = (n_mfcc, n_filters, n_blocks, front_dropout, block_dropout)
        self.forward_direction = MSSENetDirection(*args)
        self.backward_direction = MSSENetDirection(*args)
        self.fusion_weight = nn.Parameter(torch.empty(n_blocks).uniform_(-0.05, 0.05))
        self.classifier = nn.Linear(n_filters, num_classes)
        self._keras_init()

    def _keras_init(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, n_mfcc={self.n_mfcc}, n_blocks={self.n_blocks}, n_filters={self.n_filters}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, n_mfcc) -> (B, num_classes) logits."""
        x = check_input(x, self, f"(B, T, {self.n_mfcc})", (None, None, self.n_mfcc), min_sizes=(1, 1, 1))
        backend = dispatch.resolve("mssenet", x.device)
        if backend == "torch":
            return self.forward_reference(x)
        return dispatch.implementation("mssenet", backend)(self, x)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain-PyTorch forward (no input checks). Dropout masks: forward direction first."""
        return self.fuse(self.forward_direction(x), self.backward_direction(x.flip(1)))

    def fuse(self, forward_outputs: list[torch.Tensor], backward_outputs: list[torch.Tensor]) -> torch.Tensor:
        """Dynamic fusion + classifier: both directions' block outputs (B, F, T) each -> logits."""
        pooled = torch.stack([(f + b).mean(dim=2) for f, b in zip(forward_outputs, backward_outputs)], dim=1)  # (B, n, F)
        fused = torch.einsum("bnf,n->bf", pooled, self.fusion_weight)
        return self.classifier(fused)
