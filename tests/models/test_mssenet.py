"""MS-SENet reference model: parameter count, Keras defaults, shapes, both directions, modes, bad inputs."""

import math

import pytest
import torch
from torch import nn

from glam_fast import MSSENet
from glam_fast.models import mssenet as mssenet_module
from tests.helpers import rel_err


def test_parameter_count():
    model = MSSENet(num_classes=4, n_mfcc=39, n_blocks=10)
    assert sum(p.numel() for p in model.parameters()) == 148_060
    per_direction = sum(p.numel() for p in model.forward_direction.parameters())
    assert per_direction == 73_945
    assert sum(p.numel() for p in model.forward_direction.front.parameters()) - 6_123 == 4_642


def test_keras_batch_norm_defaults():
    norms = [m for m in MSSENet().modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 2 * (3 + 2 * 10)
    assert all(m.eps == 1e-3 and m.momentum == 0.01 for m in norms)


def test_glorot_uniform_init_with_zero_bias(seeded):
    model = MSSENet()
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    for layer in layers:
        w = layer.weight
        receptive = w[0, 0].numel() if w.dim() > 2 else 1
        fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert w.abs().max() <= bound
        assert w.abs().max() > 0.5 * bound  # uniform over the whole range, not a smaller init
        assert torch.count_nonzero(layer.bias) == 0
    assert model.fusion_weight.abs().max() <= 0.05


@pytest.mark.parametrize("t", [1, 2, 37, 188])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shape_any_length(t, batch):
    model = MSSENet(num_classes=7).eval()
    out = model(torch.randn(batch, t, 39))
    assert out.shape == (batch, 7)
    assert torch.isfinite(out).all()


def test_time_reversal_symmetry(seeded):
    """Swapping the two directions' weights and reversing time gives the same logits: checks that the
    second direction really sees the time-reversed input and that fusion adds both directions."""
    model = MSSENet().eval()
    swapped = MSSENet().eval()
    swapped.load_state_dict(model.state_dict())
    swapped.forward_direction.load_state_dict(model.backward_direction.state_dict())
    swapped.backward_direction.load_state_dict(model.forward_direction.state_dict())
    x = torch.randn(2, 37, 39)
    with torch.no_grad():
        assert rel_err(swapped(x.flip(1)), model(x)) < 1e-5
        assert rel_err(model(x.flip(1)), model(x)) > 1e-3


def test_causal_blocks_do_not_see_the_future(seeded):
    block = mssenet_module.TemporalAwareBlock(39, dilation=4).eval()
    x = torch.randn(2, 39, 30)
    y = x.clone()
    y[:, :, 20:] = torch.randn(2, 39, 10)
    with torch.no_grad():
        assert torch.equal(block(x)[:, :, :20], block(y)[:, :, :20])


def test_train_mode_uses_dropout_masks_from_the_global_rng(seeded):
    model = MSSENet().train()
    x = torch.randn(4, 20, 39)
    torch.manual_seed(5)
    a = model(x)
    torch.manual_seed(5)
    b = model(x)
    torch.manual_seed(6)
    c = model(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_dropout_masks_are_whole_channels(monkeypatch, seeded):
    masks = []
    real = mssenet_module.channel_dropout_mask

    def recording(x, p):
        m = real(x, p)
        masks.append((tuple(x.shape), p, m))
        return m

    monkeypatch.setattr(mssenet_module, "channel_dropout_mask", recording)
    MSSENet(n_blocks=2).train()(torch.randn(3, 11, 39))
    # per direction: 3 front-end branches (p 0.2) then 2 per block (p 0.1); forward direction first
    assert [p for _, p, _ in masks] == ([0.2] * 3 + [0.1] * 4) * 2
    for shape, p, m in masks:
        assert m.shape == shape[:2]
        assert torch.isin(m, m.new_tensor([0.0, 1.0 / (1.0 - p)])).all()


def test_injected_unit_masks_equal_a_model_without_dropout(monkeypatch, seeded):
    model = MSSENet().train()
    plain = MSSENet(front_dropout=0.0, block_dropout=0.0).train()
    plain.load_state_dict(model.state_dict())
    monkeypatch.setattr(mssenet_module, "channel_dropout_mask", lambda x, p: torch.ones(x.shape[:2], dtype=x.dtype))
    x = torch.randn(3, 25, 39)
    assert rel_err(model(x), plain(x)) < 1e-6


def test_train_updates_running_stats_eval_does_not(seeded):
    model = MSSENet()
    x = torch.randn(4, 16, 39)
    bn = model.forward_direction.blocks[3].bn2
    before = bn.running_mean.clone()
    model.train()(x)
    assert not torch.equal(bn.running_mean, before)
    after = bn.running_mean.clone()
    model.eval()(x)
    assert torch.equal(bn.running_mean, after)


def test_backward_reaches_every_parameter(seeded):
    model = MSSENet().train()
    model(torch.randn(3, 40, 39)).square().sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize(
    "x, error, match",
    [
        (torch.randn(2, 50, 40), ValueError, r"\(B, T, 39\).*dim 2 is 40"),
        (torch.randn(50, 39), ValueError, r"3-D input of shape \(B, T, 39\)"),
        (torch.randn(2, 0, 39), ValueError, r"dim 1 >= 1"),
        (torch.randn(2, 50, 39, dtype=torch.float64), TypeError, "float64"),
    ],
)
def test_bad_input(x, error, match):
    with pytest.raises(error, match=match):
        MSSENet()(x)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="n_blocks"):
        MSSENet(n_blocks=0)
    with pytest.raises(ValueError, match="front_dropout"):
        MSSENet(front_dropout=1.0)
