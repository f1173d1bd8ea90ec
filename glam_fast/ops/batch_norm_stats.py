"""Training-mode BatchNorm statistics for the MS-SENet kernels, deterministic and without float atomics.

A conv kernel that feeds a BatchNorm runs one program per (sample, direction) over the whole
sequence; each program summarises what it produced as (mean, M2) per channel (M2 = sum of squared
deviations from that mean, merged tile by tile with Chan's formula, so no E[x^2] - E[x]^2
cancellation). :func:`batch_norm_stats` combines those per-program summaries into the batch mean
and biased variance that BatchNorm normalises with. Every program covers the same number of values,
which makes the combination a plain average of means plus a between-program term.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glam_fast.kernels import KernelSpec, register_compile_specs
from glam_fast.ops.utils import empty_output


@triton.jit
def _chan_merge(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    """Merge two (count, mean, M2) summaries (Chan et al.); count_b may be 0."""
    count = count_a + count_b
    frac_b = count_b / tl.maximum(count, 1.0)
    delta = mean_b - mean_a
    return count, mean_a + delta * frac_b, m2_a + m2_b + delta * delta * count_a * frac_b


@triton.jit
def _tile_moments(values, selected):
    """(count, mean, M2) per column of ``values`` [R, C] over the rows where ``selected`` [R] is set."""
    sel = selected[:, None]
    count = tl.sum(selected.to(tl.float32), axis=0)
    mean = tl.sum(tl.where(sel, values, 0.0), axis=0) / tl.maximum(count, 1.0)
    centred = tl.where(sel, values - mean[None, :], 0.0)
    return count, mean, tl.sum(centred * centred, axis=0)


@triton.jit
def _batch_norm_stats_kernel(
    partial_ptr,  # (G, P, 2, BLOCK_C) fp32: per program [mean, M2]
    stats_ptr,  # (2, S, C) fp32: [mean, biased variance] for S >= G stats groups
    n_partials,
    count_per_partial,
    C,
    n_stats_groups,
    group_stride,
    group_offset,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    g = tl.program_id(0)
    rows = tl.arange(0, BLOCK_P)
    cols = tl.arange(0, BLOCK_C)
    base = partial_ptr + g * n_partials * 2 * BLOCK_C
    total_mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    for p0 in range(0, n_partials, BLOCK_P):
        r = p0 + rows
        means = tl.load(base + r[:, None] * 2 * BLOCK_C + cols[None, :], mask=(r < n_partials)[:, None], other=0.0)
        total_mean += tl.sum(means, axis=0)
    total_mean = total_mean / n_partials
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for p0 in range(0, n_partials, BLOCK_P):
        r = p0 + rows
        valid = (r < n_partials)[:, None]
        offs = base + r[:, None] * 2 * BLOCK_C + cols[None, :]
        means = tl.load(offs, mask=valid, other=0.0)
        m2_part = tl.load(offs + BLOCK_C, mask=valid, other=0.0)
        delta = tl.where(valid, means - total_mean[None, :], 0.0)
        m2 += tl.sum(m2_part + count_per_partial * delta * delta, axis=0)
    var = m2 / (n_partials * count_per_partial)
    s = g * group_stride + group_offset
    tl.store(stats_ptr + s * C + cols, total_mean, mask=cols < C)
    tl.store(stats_ptr + (n_stats_groups + s) * C + cols, var, mask=cols < C)


_BLOCK_P = 64


def batch_norm_stats(partial: torch.Tensor, count_per_partial: int, channels: int, stats: torch.Tensor, group_stride: int = 1, group_offset: int = 0) -> None:
    """Combine per-program summaries into batch statistics, written into ``stats``.

    partial: (G, P, 2, BLOCK_C) fp32, each of the P programs of group g holding [mean, M2] over
    ``count_per_partial`` values per channel. stats: (2, S, channels) fp32; group g is written to
    stats[0, g * group_stride + group_offset] (mean) and stats[1, ...] (biased variance).
    """
    groups, n_partials, _, block_c = partial.shape
    _batch_norm_stats_kernel[(groups,)](
        partial, stats, n_partials, count_per_partial, channels, stats.shape[1], group_stride, group_offset,
        BLOCK_P=_BLOCK_P, BLOCK_C=block_c, num_warps=4,
    )  # fmt: skip


def new_partials(groups: int, programs: int, block_c: int, device) -> torch.Tensor:
    """A (groups, programs, 2, block_c) fp32 buffer of per-program [mean, M2] summaries."""
    return empty_output((groups, programs, 2, block_c), dtype=torch.float32, device=device)


@register_compile_specs
def _compile_specs():
    signature = {
        "partial_ptr": "*fp32", "stats_ptr": "*fp32", "n_partials": "i32", "count_per_partial": "i32", "C": "i32",
        "n_stats_groups": "i32", "group_stride": "i32", "group_offset": "i32", "BLOCK_P": "constexpr", "BLOCK_C": "constexpr",
    }  # fmt: skip
    yield KernelSpec("batch_norm_stats", "_batch_norm_stats_kernel", _batch_norm_stats_kernel, signature, {"BLOCK_P": _BLOCK_P, "BLOCK_C": 64}, num_warps=4)
