"""Bundled models: listing and loading, clear errors for unknown names."""

import pytest
import torch

import glam_fast
from glam_fast import pretrained


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="no bundled model named 'nope'"):
        glam_fast.load_pretrained("nope")


@pytest.mark.skipif(pretrained.DEFAULT_MODEL not in pretrained.available_pretrained(), reason="the default model is not bundled in this checkout")
def test_default_model_loads_and_runs():
    model, config = glam_fast.load_pretrained()
    assert isinstance(model, glam_fast.GLAM) and not model.training
    assert len(config["classes"]) == model.num_classes
    assert config["features"]["recipe"] == "glam"
    with torch.no_grad():
        assert model(torch.randn(2, 1, *model.shape)).shape == (2, model.num_classes)
