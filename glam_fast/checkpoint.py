"""Checkpoints: weights as safetensors plus a JSON config (no pickle anywhere).

A checkpoint is a folder holding ``model.safetensors`` and ``config.json``. The config says which
model to build and with which constructor arguments, the class names in logit order, and whatever
the producer wants to keep with the weights (feature configuration, training arguments, metrics,
the git commit that trained it).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
from pathlib import Path

import torch
from torch import nn

from glam_fast._version import __version__
from glam_fast.models import AFCN, GLAM, MSSENet

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

MODEL_CLASSES: dict[str, type[nn.Module]] = {"glam": GLAM, "mssenet": MSSENet, "afcn": AFCN}


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be read back into a model; the message says what is wrong."""


def model_name(model: nn.Module) -> str:
    for name, cls in MODEL_CLASSES.items():
        if isinstance(model, cls):
            return name
    raise TypeError(f"not a glam_fast model: {type(model).__name__}")


def model_kwargs(model: nn.Module) -> dict:
    """The constructor arguments that rebuild ``model`` with the same architecture."""
    if isinstance(model, GLAM):
        return {"shape": list(model.shape), "num_classes": model.num_classes}
    if isinstance(model, MSSENet):
        return {
            "num_classes": model.num_classes,
            "n_mfcc": model.n_mfcc,
            "n_blocks": model.n_blocks,
            "n_filters": model.n_filters,
            "front_dropout": model.forward_direction.front.dropout,
            "block_dropout": model.forward_direction.blocks[0].dropout,
        }
    if isinstance(model, AFCN):
        return {"num_classes": model.num_classes, "attn_dim": model.attn_dim, "scale": model.scale}
    raise TypeError(f"not a glam_fast model: {type(model).__name__}")


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the git checkout holding ``path`` (default: this package), or None."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def save_checkpoint(folder: str | os.PathLike, model: nn.Module, classes: list[str], **extra) -> Path:
    """Write ``model`` (weights and buffers) and its config to ``folder``; returns the folder.

    ``classes`` are the label names in logit order; ``extra`` keys (e.g. ``features``,
    ``training``, ``metrics``) are stored in config.json as given and must be JSON-serialisable.
    Files are written to temporary names and renamed, so a killed save never leaves a torn file.
    """
    from safetensors.torch import save_file

    name = model_name(model)
    kwargs = model_kwargs(model)
    if len(classes) != kwargs["num_classes"]:
        raise ValueError(f"{len(classes)} class names for a model with {kwargs['num_classes']} outputs")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "format_version": FORMAT_VERSION,
        "model": name,
        "model_kwargs": kwargs,
        "classes": list(classes),
        "glam_fast_version": __version__,
        "git_commit": git_commit(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp_weights, tmp_config = folder / (WEIGHTS_FILE + ".tmp"), folder / (CONFIG_FILE + ".tmp")
    save_file(tensors, str(tmp_weights), metadata={"model": name})
    tmp_config.write_text(json.dumps(config, indent=2, sort_keys=False) + "\n")
    mode = 0o666 & ~_umask()  # safetensors creates its file owner-only; give it the usual mode
    os.chmod(tmp_weights, mode)
    os.replace(tmp_weights, folder / WEIGHTS_FILE)
    os.replace(tmp_config, folder / CONFIG_FILE)
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_config(folder: str | os.PathLike) -> dict:
    """The config.json of a checkpoint folder, validated."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a glam_fast checkpoint: {CONFIG_FILE} is missing")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err
    for key in ("format_version", "model", "model_kwargs", "classes"):
        if key not in config:
            raise CheckpointError(f"{path} lacks the key {key!r}")
    if config["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {config['format_version']}; this glam_fast reads up to {FORMAT_VERSION}")
    if config["model"] not in MODEL_CLASSES:
        raise CheckpointError(f"{path}: unknown model {config['model']!r}; expected one of {sorted(MODEL_CLASSES)}")
    return config


def load_checkpoint(folder: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model saved in ``folder`` (strict load) in eval mode on ``device``; returns (model, config)."""
    from safetensors.torch import load_file

    config = read_config(folder)
    weights = Path(folder) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{folder} is not a glam_fast checkpoint: {WEIGHTS_FILE} is missing")
    kwargs = dict(config["model_kwargs"])
    if "shape" in kwargs:
        kwargs["shape"] = tuple(kwargs["shape"])
    model = MODEL_CLASSES[config["model"]](**kwargs)
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types for torn or foreign files
        raise CheckpointError(f"{weights} could not be read as safetensors: {err}") from err
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{weights} does not match a {config['model']} with {kwargs}: {err}") from err
    return model.to(device).eval(), config
