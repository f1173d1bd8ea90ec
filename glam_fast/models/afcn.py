"""AFCN: attention-based fully convolutional network (Zhang, Du, Wang, Zhang; 2018), plain PyTorch.

AlexNet's convolutional trunk (laid out as torchvision's ``alexnet().features`` so ImageNet weights
load by name) followed by attention pooling over the time-frequency positions of the last map.

Variable length is the point of this model: a padded batch carries per-item valid lengths along
time; every intermediate map is zeroed beyond each item's valid length (so a padded convolution
sees the same zeros as when the item runs alone) and padded positions get zero attention weight.
A padded batch therefore gives every item the logits it gets alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from glam_fast import dispatch
from glam_fast.models._checks import check_input

TRUNK_CHANNELS = 256


def _alexnet_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def _out_size(size, layer: nn.Module):
    """Output size along one axis of a conv / max-pool layer (works on ints and int tensors)."""
    if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
        k, s, p = (v if isinstance(v, int) else v[0] for v in (layer.kernel_size, layer.stride, layer.padding))
        return (size + 2 * p - k) // s + 1
    return size


class AttentionPool(nn.Module):
    """``e = uᵀ tanh(W a + b)``, ``α = softmax(λ e)`` over valid positions, ``c = Σ α a``.

    Input a (B, L, D) with an optional boolean ``valid`` (B, L); output c (B, D) and α (B, L).
    """

    def __init__(self, dim: int = TRUNK_CHANNELS, attn_dim: int = 256, scale: float = 0.3):
        super().__init__()
        self.scale = scale
        self.proj = nn.Linear(dim, attn_dim)
        self.context = nn.Linear(attn_dim, 1, bias=False)

    def forward(self, a: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        energy = self.context(torch.tanh(self.proj(a))).squeeze(-1) * self.scale  # (B, L)
        if valid is not None:
            energy = energy.masked_fill(~valid, float("-inf"))
        alpha = torch.softmax(energy, dim=-1)
        return torch.bmm(alpha.unsqueeze(1), a).squeeze(1), alpha


class AFCN(nn.Module):
    """AFCN for 3-channel spectrogram images.

    Args:
        num_classes: number of emotion classes.
        attn_dim: size of the attention projection W (attn_dim x 256).
        scale: λ, the softmax sharpness of the attention.

    ``forward(x, lengths=None)``: x (B, 3, F, T) float, lengths (B,) integer valid frames along T
    (None: all T valid). Returns (B, num_classes) logits, and with ``return_attention=True`` also
    the attention weights (B, F', T') of the trunk's output map (zero at padded positions).
    """

    def __init__(self, num_classes: int = 4, attn_dim: int = 256, scale: float = 0.3):
        super().__init__()
        if num_classes < 1 or attn_dim < 1:
            raise ValueError(f"num_classes and attn_dim must be >= 1, got {num_classes}, {attn_dim}")
        self.num_classes, self.attn_dim, self.scale = num_classes, attn_dim, scale
        self.features = _alexnet_features()
        self.attention = AttentionPool(TRUNK_CHANNELS, attn_dim, scale)
        self.classifier = nn.Linear(TRUNK_CHANNELS, num_classes)
        self.min_size = self._min_input_size()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, attn_dim={self.attn_dim}, scale={self.scale}"

    def _min_input_size(self) -> int:
        size = 1
        while self.output_size(size) < 1:
            size += 1
        return size

    def output_size(self, size):
        """Trunk output size along F or T for input size ``size`` (int or integer tensor)."""
        for layer in self.features:
            size = _out_size(size, layer)
        return size

    def load_alexnet_features(self, path: str | os.PathLike) -> None:
        """Load ImageNet AlexNet conv weights from a local file (nothing is downloaded).

        Accepts a torchvision AlexNet state_dict (``features.N.weight`` / ``.bias``; classifier
        keys are ignored) saved as ``.safetensors`` or as a torch file (read with
        ``weights_only=True``, no pickled code runs).
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"AlexNet weights file not found: {path}")
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ValueError(f"{path} does not hold a state_dict (got {type(state).__name__})")
        wanted = {f"features.{k}": v for k, v in self.features.state_dict().items()}
        missing = sorted(k for k in wanted if k not in state)
        if missing:
            raise KeyError(f"{path} lacks AlexNet feature weights {missing} (expected torchvision's alexnet layout)")
        for key, ours in wanted.items():
            if tuple(state[key].shape) != tuple(ours.shape):
                raise ValueError(f"{path}: {key} has shape {tuple(state[key].shape)}, expected {tuple(ours.shape)}")
        self.features.load_state_dict({k[len("features."):]: state[k] for k in wanted})

    def _check_lengths(self, lengths, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(lengths, torch.Tensor):
            lengths = torch.as_tensor(lengths)
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
            raise TypeError(f"AFCN lengths must be integers (valid frames per item), got dtype {lengths.dtype}")
        if lengths.shape != (x.shape[0],):
            raise ValueError(f"AFCN lengths must have shape (B,) = ({x.shape[0]},), got {tuple(lengths.shape)}")
        lengths = lengths.to(device=x.device, dtype=torch.long)
        t = x.shape[3]
        bad = (lengths < self.min_size) | (lengths > t)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"AFCN lengths must lie in [{self.min_size}, T={t}] (the trunk needs at least {self.min_size} frames); "
                f"item {i} has length {int(lengths[i])}"
            )
        return lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None = None, return_attention: bool = False):
        """(B, 3, F, T) spectrogram [+ (B,) lengths] -> (B, num_classes) logits [, (B, F', T') attention]."""
        m = self.min_size
        x = check_input(x, self, "(B, 3, F, T)", (None, 3, None, None), min_sizes=(1, 3, m, m))
        if lengths is not None:
            lengths = self._check_lengths(lengths, x)
        backend = dispatch.resolve("afcn", x.device)
        if backend == "torch":
            return self.forward_reference(x, lengths, return_attention)
        return dispatch.implementation("afcn", backend)(self, x, lengths, return_attention)

    def forward_reference(self, x: torch.Tensor, lengths: torch.Tensor | None = None, return_attention: bool = False):
        """The plain-PyTorch forward (no input checks)."""
        h = x
        valid_t = None
        if lengths is not None:
            h = self._zero_beyond(h, lengths)
        for layer in self.features:
            h = layer(h)
            if lengths is not None and isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
                lengths = _out_size(lengths, layer)
                h = self._zero_beyond(h, lengths)
        batch, channels, freq, time = h.shape
        a = h.flatten(2).transpose(1, 2)  # (B, F'T', 256), position index = f * T' + t
        if lengths is not None:
            valid_t = torch.arange(time, device=h.device)[None, :] < lengths[:, None]  # (B, T')
            valid_t = valid_t[:, None, :].expand(batch, freq, time).reshape(batch, -1)
        context, alpha = self.attention(a, valid_t)
        logits = self.classifier(context)
        if return_attention:
            return logits, alpha.view(batch, freq, time)
        return logits

    @staticmethod
    def _zero_beyond(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        keep = torch.arange(h.shape[-1], device=h.device)[None, :] < lengths[:, None]  # (B, T)
        return h * keep[:, None, None, :].to(h.dtype)
