"""BatchNorm + ReLU (+ 2x2 max-pool) on channels-last activations, forward and backward, and the
running-statistics update, against PyTorch in float64."""

import pytest
import torch
import torch.nn.functional as F

from glam_fast.ops.batch_norm_nhwc import bn_relu_pool, bn_relu_pool_backward, bn_relu_pool_ref, update_running_stats_
from tests.helpers import rel_err


def _stats(y, training):
    if training:
        flat = y.double().reshape(-1, y.shape[-1])
        return flat.mean(0).float(), flat.var(0, unbiased=False).float()
    n = y.shape[-1]
    return torch.randn(n) * 0.1, torch.rand(n) + 0.5


@pytest.mark.parametrize("shape", [(1, 4, 6, 8), (3, 5, 7, 32), (5, 3, 3, 130)])  # odd H/W: the floor pool drops a row/column
@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("training, channels_first_out", [(True, False), (False, True)])
def test_forward_and_backward(shape, pool, training, channels_first_out):
    n = shape[-1]
    y = torch.randn(shape)
    gamma, beta = torch.rand(n) + 0.5, torch.randn(n) * 0.3
    mean, var = _stats(y, training)
    out = bn_relu_pool(y, mean, var, gamma, beta, 1e-5, pool=pool, channels_first_out=channels_first_out)

    yr, gr, br = (t.double().requires_grad_() for t in (y, gamma, beta))
    if training:  # the batch statistics depend on y: BatchNorm's full backward
        ref = F.batch_norm(yr.permute(0, 3, 1, 2), None, None, gr, br, True, 0.0, 1e-5).relu()
        ref = F.max_pool2d(ref, 2) if pool else ref
    else:
        ref = bn_relu_pool_ref(yr, mean.double(), var.double(), gr, br, 1e-5, pool=pool).permute(0, 3, 1, 2)
    if not channels_first_out:
        ref = ref.permute(0, 2, 3, 1)
    assert out.shape == ref.shape
    assert rel_err(out, ref) < 1e-5

    grad = torch.randn(ref.shape)
    ref.backward(grad.double())
    dy, dgamma, dbeta = bn_relu_pool_backward(
        grad, y, mean, var, gamma, beta, 1e-5, pool=pool, batch_stats=training, channels_first_out=channels_first_out
    )
    assert rel_err(dy, yr.grad) < 1e-5
    assert rel_err(dgamma, gr.grad) < 1e-5
    assert rel_err(dbeta, br.grad) < 1e-5


def test_pool_ties_go_to_the_first_maximum():
    """Equal values in a window: the gradient goes where PyTorch's max_pool2d sends it (the first)."""
    y = torch.tensor([[1.0, 1.0], [0.5, 1.0]]).repeat(2, 3)[None, :, :, None].repeat(1, 1, 1, 2)  # (1, 4, 6, 2)
    mean, var = torch.zeros(2), torch.ones(2) - 1e-5
    gamma, beta = torch.ones(2), torch.zeros(2)
    grad = torch.ones(1, 2, 3, 2)
    dy, _, _ = bn_relu_pool_backward(grad, y, mean, var, gamma, beta, 1e-5, pool=True, batch_stats=False)
    yr = y.double().permute(0, 3, 1, 2).requires_grad_()
    F.max_pool2d(yr, 2).backward(grad.double().permute(0, 3, 1, 2))
    assert torch.equal(dy.double(), yr.grad.permute(0, 2, 3, 1))


def test_running_stats_update_matches_batch_norm():
    x = torch.randn(3, 6, 5, 7)
    rm, rv = torch.randn(6), torch.rand(6) + 0.5
    ref_rm, ref_rv = rm.double().clone(), rv.double().clone()
    F.batch_norm(x.double(), ref_rm, ref_rv, None, None, True, 0.1, 1e-5)
    flat = x.double().permute(0, 2, 3, 1).reshape(-1, 6)
    update_running_stats_(rm, rv, flat.mean(0).float(), flat.var(0, unbiased=False).float(), flat.shape[0], 0.1)
    assert rel_err(rm, ref_rm) < 1e-6
    assert rel_err(rv, ref_rv) < 1e-6


def test_running_stats_update_bumps_version_and_passes_opcheck():
    rm, rv = torch.zeros(4), torch.ones(4)
    before = (rm._version, rv._version)
    update_running_stats_(rm, rv, torch.ones(4), torch.full((4,), 2.0), 5, 0.5)
    assert rm._version > before[0] and rv._version > before[1]  # the inference cache relies on it
    assert torch.allclose(rm, torch.full((4,), 0.5)) and torch.allclose(rv, torch.full((4,), 0.5 + 0.5 * 2.0 * 5 / 4))
    torch.library.opcheck(update_running_stats_, (torch.zeros(4), torch.ones(4), torch.ones(4), torch.ones(4), 5, 0.1))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        update_running_stats_(rm, rv, torch.ones(4), torch.ones(4), 1, 0.1)
