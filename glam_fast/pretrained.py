"""Models bundled with the package (safetensors + JSON config, nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from glam_fast import checkpoint as ckpt

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
DEFAULT_MODEL = "glam-emodb"


def available_pretrained() -> list[str]:
    """Names of the bundled models."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / ckpt.CONFIG_FILE).is_file())


def pretrained_path(name: str = DEFAULT_MODEL) -> Path:
    """The checkpoint folder of bundled model ``name``."""
    path = PRETRAINED_DIR / name
    if not (path / ckpt.CONFIG_FILE).is_file():
        known = available_pretrained()
        raise ValueError(f"no bundled model named {name!r}; bundled: {known or 'none'}")
    return path


def load_pretrained(name: str = DEFAULT_MODEL, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Load a bundled model in eval mode: returns (model, config). ``config`` holds the class
    names (``classes``), the feature recipe (``features``) and how it was trained."""
    return ckpt.load_checkpoint(pretrained_path(name), device)
