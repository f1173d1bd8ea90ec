"""AFCN reference model: AlexNet layout and weight loading, variable lengths, attention, bad inputs."""

import pytest
import torch
from safetensors.torch import save_file

from glam_fast import AFCN
from tests.helpers import rel_err

# torchvision.models.alexnet().state_dict() keys and shapes (written out here: torchvision is not a dependency)
TORCHVISION_ALEXNET = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
}  # fmt: skip


def fake_alexnet_state_dict(seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # the classifier is shrunk: it must be ignored, so its shapes do not matter here
    return {k: torch.randn(*(s if k.startswith("features") else (2,)), generator=g) for k, s in TORCHVISION_ALEXNET.items()}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return AFCN(num_classes=5).eval()


def test_trunk_has_torchvision_alexnet_names_and_shapes():
    names = {f"features.{k}": tuple(v.shape) for k, v in AFCN().features.state_dict().items()}
    assert names == {k: s for k, s in TORCHVISION_ALEXNET.items() if k.startswith("features")}


def test_parameter_count():
    trunk = sum(s[0] * (s[1] * s[2] * s[3] if len(s) == 4 else 1) for k, s in TORCHVISION_ALEXNET.items() if k.startswith("features"))
    expected = trunk + (256 * 256 + 256) + 256 + (256 * 4 + 4)
    assert sum(p.numel() for p in AFCN().parameters()) == expected


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_load_alexnet_features_from_local_file(tmp_path, suffix):
    state = fake_alexnet_state_dict()
    path = tmp_path / f"alexnet{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    model = AFCN()
    head_before = model.attention.proj.weight.clone()
    model.load_alexnet_features(path)
    for key, value in model.features.state_dict().items():
        assert torch.equal(value, state[f"features.{key}"])
    assert torch.equal(model.attention.proj.weight, head_before)


def test_load_alexnet_features_errors(tmp_path):
    model = AFCN()
    with pytest.raises(FileNotFoundError, match="not found"):
        model.load_alexnet_features(tmp_path / "missing.pth")
    state = fake_alexnet_state_dict()
    del state["features.8.bias"]
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(KeyError, match="features.8.bias"):
        model.load_alexnet_features(tmp_path / "partial.safetensors")
    state = fake_alexnet_state_dict()
    state["features.3.weight"] = torch.zeros(192, 64, 3, 3)
    save_file(state, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ValueError, match=r"features.3.weight has shape \(192, 64, 3, 3\)"):
        model.load_alexnet_features(tmp_path / "wrong.safetensors")


@pytest.mark.parametrize("freq, time", [(63, 63), (128, 200), (96, 301)])
def test_output_shape(model, freq, time):
    logits, alpha = model(torch.randn(2, 3, freq, time), return_attention=True)
    assert logits.shape == (2, 5)
    assert alpha.shape == (2, model.output_size(freq), model.output_size(time))
    assert torch.allclose(alpha.sum(dim=(1, 2)), torch.ones(2))


def test_padded_batch_equals_each_item_alone(model):
    torch.manual_seed(11)
    freq, lengths = 96, [model.min_size, 150, 97, 211, 64]
    t_max = max(lengths)
    items = [torch.randn(1, 3, freq, n) for n in lengths]
    batch = torch.randn(len(items), 3, freq, t_max) * 10  # junk in the padding must not matter
    for i, item in enumerate(items):
        batch[i, :, :, : lengths[i]] = item[0]
    with torch.no_grad():
        logits, alpha = model(batch, torch.tensor(lengths), return_attention=True)
        for i, item in enumerate(items):
            alone, alpha_alone = model(item, return_attention=True)
            assert rel_err(logits[i : i + 1], alone) < 1e-5, f"item {i} (length {lengths[i]})"
            valid = model.output_size(lengths[i])
            assert torch.count_nonzero(alpha[i, :, valid:]) == 0  # padded positions get zero attention
            assert rel_err(alpha[i, :, :valid], alpha_alone[0]) < 1e-5


def test_full_lengths_equal_no_lengths(model):
    x = torch.randn(3, 3, 64, 90)
    with torch.no_grad():
        assert rel_err(model(x, [90, 90, 90]), model(x)) < 1e-6


def test_backward_with_lengths_reaches_every_parameter():
    torch.manual_seed(0)
    model = AFCN().train()
    model(torch.randn(2, 3, 64, 120), torch.tensor([120, 70])).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize(
    "lengths, error, match",
    [
        ([80, 81], ValueError, r"item 1 has length 81"),
        ([0, 80], ValueError, r"item 0 has length 0"),
        ([-3, 80], ValueError, r"item 0 has length -3"),
        ([30, 80], ValueError, r"at least 63 frames"),
        (torch.tensor([80.0, 70.0]), TypeError, "integers"),
        ([80, 80, 80], ValueError, r"shape \(B,\) = \(2,\)"),
    ],
)
def test_bad_lengths(model, lengths, error, match):
    with pytest.raises(error, match=match):
        model(torch.randn(2, 3, 64, 80), lengths)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(2, 1, 64, 80), r"\(B, 3, F, T\).*dim 1 is 1"),
        (torch.randn(2, 3, 20, 80), r"dim 2 >= 63"),
        (torch.randn(3, 64, 80), r"4-D input"),
    ],
)
def test_bad_input(model, x, match):
    with pytest.raises(ValueError, match=match):
        model(x)
