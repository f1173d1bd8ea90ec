"""Checkpoints: safetensors + JSON round trip for every model, and clear errors for bad folders."""

import json

import pytest
import torch

from glam_fast import AFCN, GLAM, MSSENet
from glam_fast.checkpoint import CheckpointError, load_checkpoint, read_config, save_checkpoint


@pytest.mark.parametrize(
    "model, x",
    [
        (GLAM(shape=(26, 63), num_classes=3), torch.randn(2, 1, 26, 63)),
        (MSSENet(num_classes=3, n_blocks=4, front_dropout=0.1), torch.randn(2, 20, 39)),
        (AFCN(num_classes=3, attn_dim=64, scale=0.5), torch.randn(1, 3, 70, 80)),
    ],
)
def test_round_trip(tmp_path, model, x):
    model.train()(x)  # move BatchNorm statistics away from their initial values
    model.eval()
    folder = save_checkpoint(tmp_path / "ckpt", model, ["a", "b", "c"], features={"sample_rate": 16000}, training={"epochs": 1})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded, config = load_checkpoint(folder)
    assert config["classes"] == ["a", "b", "c"] and config["features"] == {"sample_rate": 16000}
    assert not loaded.training
    assert type(loaded) is type(model)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_class_count_must_match(tmp_path):
    with pytest.raises(ValueError, match="2 class names for a model with 4 outputs"):
        save_checkpoint(tmp_path, GLAM(), ["a", "b"])


def test_bad_folders(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_config(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="config.json is missing"):
        read_config(tmp_path)
    folder = save_checkpoint(tmp_path / "ok", GLAM(num_classes=2), ["a", "b"])
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model": "resnet"}))
    with pytest.raises(CheckpointError, match="unknown model 'resnet'"):
        load_checkpoint(folder)
    (folder / "config.json").write_text(json.dumps({**config, "model_kwargs": {"shape": [26, 63], "num_classes": 2}}))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(folder)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(folder)
