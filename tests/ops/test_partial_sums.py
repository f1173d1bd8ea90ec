"""Deterministic reductions of per-tile partials: plain column sums and Chan-merged moments."""

import pytest
import torch

from glam_fast.ops.partial_sums import combine_moments, sum_partials
from tests.helpers import rel_err


@pytest.mark.parametrize("rows, cols", [(1, 5), (37, 300), (530, 3)])  # > 512 rows: grouped pass, then the groups
def test_sum_partials(rows, cols):
    partials = torch.randn(rows, cols)
    out = sum_partials(partials)
    assert out.shape == (cols,)
    assert rel_err(out, partials.double().sum(0)) < 1e-6
    assert torch.equal(out, sum_partials(partials))  # bitwise reproducible


@pytest.mark.parametrize("total, tile", [(7, 128), (1000, 128), (600, 1)])  # 600 tiles: two passes
def test_combine_moments_matches_float64(total, tile):
    """Tiles of ``tile`` rows (the last one short), merged in one or two passes; mean 1000 times
    the spread, where E[x^2] - E[x]^2 in fp32 would lose most digits of the variance."""
    n = 5
    data = (1000.0 + torch.randn(total, n, dtype=torch.float64) * torch.linspace(0.5, 2.0, n, dtype=torch.float64))
    tiles = -(-total // tile)
    padded = torch.cat([data, data.new_zeros(tiles * tile - total, n)]).view(tiles, tile, n)
    counts = torch.full((tiles, 1), float(tile), dtype=torch.float64)
    counts[-1] = total - (tiles - 1) * tile
    sums = padded.sum(1)
    centred = torch.where(torch.arange(tile)[None, :, None] < counts[:, :, None], padded - (sums / counts)[:, None, :], 0.0)
    mean, var = combine_moments(sums.float(), (centred**2).sum(1).float(), tile, total)
    assert rel_err(mean, data.mean(0)) < 1e-6
    assert rel_err(var, data.var(0, unbiased=False)) < 1e-4
    assert torch.equal(var, combine_moments(sums.float(), (centred**2).sum(1).float(), tile, total)[1])


def test_combine_moments_rejects_inconsistent_tiles():
    with pytest.raises(ValueError, match="do not cover"):
        combine_moments(torch.zeros(3, 2), torch.zeros(3, 2), 128, 1000)
