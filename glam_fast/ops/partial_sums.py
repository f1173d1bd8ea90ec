"""Deterministic reductions of per-tile partial results (no float atomics).

Kernels that reduce over a huge axis (BatchNorm statistics over B*H*W pixels, a weight gradient
over B*H*W pixels) write one partial row per tile; these kernels combine the rows in a fixed
order, so results are bitwise reproducible run to run:

* :func:`sum_partials` sums the rows of a (R, L) fp32 matrix;
* :func:`combine_moments` merges per-tile (sum, centred sum of squares) pairs into a mean and a
  biased variance with Chan's parallel formula, which does not suffer the cancellation of
  E[x^2] - E[x]^2 when |mean| >> std.

Both reduce in at most two launches: groups of rows in parallel, then the group results.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glam_fast.kernels import KernelSpec
from glam_fast.ops.utils import empty_output

_BLOCK_R = 16  # rows combined per step
_BLOCK_L = 256  # columns per program
_SINGLE_PASS_ROWS = 512  # at most this many rows: one pass; above: groups, then the groups
_MAX_GROUPS = 64


@triton.jit
def _sum_partials_kernel(in_ptr, out_ptr, R, L, rows_per_program, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """out[g, l] = sum of in[r, l] over rows r of group g = [g * rows_per_program, ...)."""
    pid_g = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    col_ok = cols < L
    start = pid_g * rows_per_program
    end = tl.minimum(start + rows_per_program, R)
    acc = tl.zeros((BLOCK_R, BLOCK_L), tl.float32)
    for r0 in range(start, end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        mask = (rows < end)[:, None] & col_ok[None, :]
        acc += tl.load(in_ptr + rows[:, None] * L + cols[None, :], mask=mask, other=0.0)
    tl.store(out_ptr + pid_g * L + cols, tl.sum(acc, axis=0), mask=col_ok)


@triton.jit
def _combine_moments_kernel(
    sum_ptr, m2_ptr, out_sum_ptr, out_m2_ptr, mean_ptr, var_ptr,
    R, N, rows_per_partial, total_rows, rows_per_program,
    FINAL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Chan's merge of partial moments. Partial r summarises data rows
    [r * rows_per_partial, min((r + 1) * rows_per_partial, total_rows)): its sum and its sum of
    squared deviations from its own mean (m2). FINAL writes mean and biased variance; otherwise
    the group's (sum, m2), to be merged again."""
    pid_g = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    start = pid_g * rows_per_program
    end = tl.minimum(start + rows_per_program, R)
    count = tl.zeros((BLOCK_N,), tl.float32)
    mean = tl.zeros((BLOCK_N,), tl.float32)
    m2 = tl.zeros((BLOCK_N,), tl.float32)
    for r0 in range(start, end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        row_ok = rows < end
        cnt = tl.where(row_ok, tl.minimum(total_rows - rows * rows_per_partial, rows_per_partial), 0).to(tl.float32)
        mask = row_ok[:, None] & col_ok[None, :]
        s = tl.load(sum_ptr + rows[:, None] * N + cols[None, :], mask=mask, other=0.0)
        q = tl.load(m2_ptr + rows[:, None] * N + cols[None, :], mask=mask, other=0.0)
        # merge the chunk's rows in one step (parallel-axis theorem), then merge the chunk in
        chunk_count = tl.sum(cnt, axis=0)
        chunk_mean = tl.sum(s, axis=0) / chunk_count
        dev = tl.where(mask, s / tl.maximum(cnt, 1.0)[:, None] - chunk_mean[None, :], 0.0)
        chunk_m2 = tl.sum(q, axis=0) + tl.sum(cnt[:, None] * dev * dev, axis=0)
        new_count = count + chunk_count
        delta = chunk_mean - mean
        mean += delta * (chunk_count / new_count)
        m2 += chunk_m2 + delta * delta * (count * chunk_count / new_count)
        count = new_count
    if FINAL:
        tl.store(mean_ptr + cols, mean, mask=col_ok)
        tl.store(var_ptr + cols, m2 / count, mask=col_ok)
    else:
        tl.store(out_sum_ptr + pid_g * N + cols, mean * count, mask=col_ok)
        tl.store(out_m2_ptr + pid_g * N + cols, m2, mask=col_ok)


def _moments_block_n(n: int) -> int:
    return min(128, max(16, triton.next_power_of_2(n)))


def _rows_per_group(rows: int, block: int) -> int:
    """Rows per program so that at most _MAX_GROUPS groups remain; a multiple of ``block``."""
    return triton.cdiv(triton.cdiv(rows, _MAX_GROUPS), block) * block


def sum_partials(partials: torch.Tensor) -> torch.Tensor:
    """(R, L) fp32 contiguous -> (L,) fp32: the column sums, in a fixed order."""
    if partials.dtype != torch.float32 or partials.dim() != 2 or not partials.is_contiguous():
        raise ValueError(f"sum_partials expects a contiguous 2-D float32 tensor, got {partials.dtype} {tuple(partials.shape)}")
    rows, cols = partials.shape
    if rows > _SINGLE_PASS_ROWS:
        per = _rows_per_group(rows, _BLOCK_R)
        groups = triton.cdiv(rows, per)
        grouped = empty_output((groups, cols), dtype=torch.float32, device=partials.device)
        _sum_partials_kernel[(groups, triton.cdiv(cols, _BLOCK_L))](partials, grouped, rows, cols, per, BLOCK_R=_BLOCK_R, BLOCK_L=_BLOCK_L)
        partials, rows = grouped, groups
    out = empty_output((cols,), dtype=torch.float32, device=partials.device)
    _sum_partials_kernel[(1, triton.cdiv(cols, _BLOCK_L))](partials, out, rows, cols, rows, BLOCK_R=_BLOCK_R, BLOCK_L=_BLOCK_L)
    return out


def combine_moments(sums: torch.Tensor, m2s: torch.Tensor, rows_per_partial: int, total_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge per-tile moments of ``total_rows`` data rows into (mean, biased variance), each (N,) fp32.

    ``sums`` / ``m2s``: (R, N) fp32, row r = the sum and the centred sum of squares of data rows
    [r * rows_per_partial, min((r + 1) * rows_per_partial, total_rows)).
    """
    rows, n = sums.shape
    if rows != triton.cdiv(total_rows, rows_per_partial):
        raise ValueError(f"combine_moments: {rows} partial rows do not cover {total_rows} rows in tiles of {rows_per_partial}")
    device = sums.device
    block_n = _moments_block_n(n)
    mean = empty_output((n,), dtype=torch.float32, device=device)
    var = empty_output((n,), dtype=torch.float32, device=device)
    if rows > _SINGLE_PASS_ROWS:
        per = _rows_per_group(rows, _BLOCK_R)
        groups = triton.cdiv(rows, per)
        g_sum = empty_output((groups, n), dtype=torch.float32, device=device)
        g_m2 = empty_output((groups, n), dtype=torch.float32, device=device)
        _combine_moments_kernel[(groups, triton.cdiv(n, block_n))](
            sums, m2s, g_sum, g_m2, mean, var, rows, n, rows_per_partial, total_rows, per,
            FINAL=False, BLOCK_R=_BLOCK_R, BLOCK_N=block_n,
        )  # fmt: skip
        sums, m2s, rows, rows_per_partial = g_sum, g_m2, groups, per * rows_per_partial
    _combine_moments_kernel[(1, triton.cdiv(n, block_n))](
        sums, m2s, sums, m2s, mean, var, rows, n, rows_per_partial, total_rows, rows,
        FINAL=True, BLOCK_R=_BLOCK_R, BLOCK_N=block_n,
    )  # fmt: skip
    return mean, var


def kernel_specs(channel_counts) -> list[KernelSpec]:
    """The reduction kernels as launched for BatchNorm layers of the given channel counts."""
    sum_sig = {"in_ptr": "*fp32", "out_ptr": "*fp32", "R": "i32", "L": "i32", "rows_per_program": "i32", "BLOCK_R": "constexpr", "BLOCK_L": "constexpr"}
    specs = [KernelSpec("partial_sums", "_sum_partials_kernel", _sum_partials_kernel, sum_sig, {"BLOCK_R": _BLOCK_R, "BLOCK_L": _BLOCK_L})]
    moments_sig = {
        "sum_ptr": "*fp32", "m2_ptr": "*fp32", "out_sum_ptr": "*fp32", "out_m2_ptr": "*fp32", "mean_ptr": "*fp32", "var_ptr": "*fp32",
        "R": "i32", "N": "i32", "rows_per_partial": "i32", "total_rows": "i32", "rows_per_program": "i32",
        "FINAL": "constexpr", "BLOCK_R": "constexpr", "BLOCK_N": "constexpr",
    }  # fmt: skip
    for block_n in sorted({_moments_block_n(n) for n in channel_counts}):
        for final in (False, True):
            specs.append(KernelSpec(
                "partial_sums", f"_combine_moments_kernel[FINAL={int(final)},BLOCK_N={block_n}]", _combine_moments_kernel,
                moments_sig, {"FINAL": final, "BLOCK_R": _BLOCK_R, "BLOCK_N": block_n},
            ))  # fmt: skip
    return specs
