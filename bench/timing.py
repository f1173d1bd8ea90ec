"""Timing: per-call samples (CUDA events on a GPU, a host clock on the CPU), quantiles, and the
device's own ceilings (a large bf16 matmul, a large device-to-device copy)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quantile(samples: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of a non-empty list."""
    ordered = sorted(samples)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(samples_ms: list[float]) -> dict:
    return {
        "median_ms": quantile(samples_ms, 0.5),
        "p20_ms": quantile(samples_ms, 0.2),
        "p80_ms": quantile(samples_ms, 0.8),
        "samples": len(samples_ms),
    }


@dataclass(frozen=True)
class TimerSettings:
    """How long to time one variant at one size.

    After ``warmup_calls`` untimed calls (the first compiles / autotunes), the calls are timed one
    by one until ``target_ms`` of samples, with at least ``min_samples`` and at most ``max_samples``.
    """

    warmup_calls: int = 3
    target_ms: float = 200.0
    min_samples: int = 5
    max_samples: int = 500


def time_calls(fn: Callable[[], object], device: torch.device, settings: TimerSettings) -> tuple[list[float], float]:
    """(per-call times in ms, seconds spent in the warm-up calls).

    On CUDA every call is bracketed by its own pair of events, recorded back to back on the
    stream, so a sample is the call's device time including any launch gaps inside it.
    """
    start = time.perf_counter()
    for _ in range(settings.warmup_calls):
        fn()
    synchronize(device)
    warmup_s = time.perf_counter() - start

    # One more call on the host clock sizes the sample count.
    start = time.perf_counter()
    fn()
    synchronize(device)
    estimate_ms = max((time.perf_counter() - start) * 1e3, 1e-3)
    count = min(settings.max_samples, max(settings.min_samples, math.ceil(settings.target_ms / estimate_ms)))

    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(count)]
        for begin, end in events:
            begin.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return [begin.elapsed_time(end) for begin, end in events], warmup_s

    samples = []
    for _ in range(count):
        begin = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - begin) * 1e3)
    return samples, warmup_s


def measure_ceilings(device: torch.device, matmul_n: int, copy_bytes: int, settings: TimerSettings) -> dict:
    """The device's own rates, measured in this run on random data (never zeros).

    bf16 matmul: an n x n x n product, 2 n^3 FLOP. Copy: ``copy_bytes`` device to device, counted
    as bytes read + bytes written.
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(0)
    # The operands live only inside these calls (partial holds them), so their memory is free
    # again before the copy buffers are allocated.
    operands = [torch.randn(matmul_n, matmul_n, device=device, dtype=torch.bfloat16, generator=generator) for _ in range(2)]
    mm_samples, _ = time_calls(functools.partial(torch.mm, *operands), device, settings)
    operands.clear()
    mm_ms = quantile(mm_samples, 0.5)

    src = torch.randint(0, 256, (copy_bytes,), dtype=torch.uint8, device=device, generator=generator)
    buffers = [torch.empty_like(src), src]
    copy_samples, _ = time_calls(functools.partial(torch.Tensor.copy_, *buffers), device, settings)
    buffers.clear()
    del src
    copy_ms = quantile(copy_samples, 0.5)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "bf16_matmul_tflops": 2 * matmul_n**3 / (mm_ms * 1e-3) / 1e12,
        "bf16_matmul_n": matmul_n,
        "bf16_matmul_median_ms": mm_ms,
        "copy_gb_per_s": 2 * copy_bytes / (copy_ms * 1e-3) / 1e9,
        "copy_bytes": copy_bytes,
        "copy_median_ms": copy_ms,
    }
