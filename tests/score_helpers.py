"""Small checkpoints and audio files for the scoring tests (cheap on 2 CPU cores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from glam_fast import AFCN, GLAM, MSSENet
from glam_fast.checkpoint import save_checkpoint
from glam_fast.recipes import AFCNRecipe, GLAMRecipe, MSSENetRecipe

CLASSES = ["calm", "happy", "sad"]
# A small GLAM recipe: 8 MFCC x 16 frames per 0.5 s segment, a segment every 0.25 s.
TINY_GLAM = GLAMRecipe(n_mfcc=8, segment_samples=8000, segment_hop=4000, n_mels=32)
TINY_MSSENET = MSSENetRecipe(sample_rate=16_000, n_mfcc=13, n_samples=16_000, n_mels=32)


def randomize_batch_norm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (fresh ones are the identity)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(1 + 0.2 * torch.randn(n, generator=generator))
            module.bias.data.copy_(0.2 * torch.randn(n, generator=generator))
    return model.eval()


def make_checkpoint(folder: Path, kind: str = "glam", seed: int = 0, glam_recipe: GLAMRecipe = TINY_GLAM) -> Path:
    torch.manual_seed(seed)
    if kind == "glam":
        model, recipe = GLAM(glam_recipe.input_shape, len(CLASSES)), glam_recipe
    elif kind == "mssenet":
        model, recipe = MSSENet(len(CLASSES), n_mfcc=TINY_MSSENET.n_mfcc, n_blocks=3, n_filters=8), TINY_MSSENET
    elif kind == "afcn":
        model, recipe = AFCN(len(CLASSES), attn_dim=16), AFCNRecipe()
    else:
        raise ValueError(kind)
    randomize_batch_norm(model, seed)
    return save_checkpoint(folder, model, CLASSES, features=recipe.to_dict())


def write_tone(path: Path, seconds: float, sample_rate: int = 16_000, seed: int = 0, channels: int = 1, subtype: str = "PCM_16") -> Path:
    """A voiced-like test signal: a few harmonics with vibrato plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    f0 = 120 + 40 * rng.random() + 10 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    signal = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2 + 0.01 * rng.standard_normal(t.size)
    data = np.stack([signal * (1 - 0.3 * c) for c in range(channels)], axis=1) if channels > 1 else signal
    sf.write(path, data.astype(np.float32), sample_rate, subtype=subtype)
    return path


def make_audio_folder(folder: Path, n: int, seconds: float = 0.8, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_tone(folder / f"clip{i:03d}.wav", seconds * (1 + (i % 3) * 0.5), seed=seed + i) for i in range(n)]
