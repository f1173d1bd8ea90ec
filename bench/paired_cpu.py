"""CPU inference, paired rounds: each variant's speed relative to the eager reference, measured
so that the drift of a shared machine's speed cancels.

    GLAM_FAST_BENCH_THREADS=2 python -m bench.paired_cpu --out bench/results/cpu-inference-paired-<description>.json
    python -m bench.paired_cpu --summarize bench/results/cpu-inference-paired-<description>.json

The variants are some of ``bench/bench_inference_cpu.py``'s: the eager reference,
``torch.compile(reference)``, ``prepare(model)``, for GLAM and AFCN the prepared module's
convolution calls alone, for GLAM ``prepare(model, native=False)``, and for GLAM and AFCN
``prepare(model, use_winograd=False)``; the same models,
inputs and items per round. There, each variant runs all its rounds before the next one starts,
so a machine that slows down between two variants changes their ratio. Here every round runs
every variant once, back to back, in an order that rotates from round to round, and a variant's
ratio to the eager reference is taken within the round. Reported per model and batch size: each
variant's median items/s, the median and quartiles of its per-round ratio to eager, and the
fraction of rounds in which it ran at least ``--target`` times eager (default 1.5) and faster
than ``torch.compile(reference)``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.environment import environment, utc_now, write_json
from bench.timing import quantile

# The measuring code imports the benchmark suite (and with it pytest) when it runs, so that
# bench.report can read these result files with this module's table().
SCHEMA = "glam_fast.cpu-paired/1"
MODELS = ("glam", "mssenet", "afcn")
REFERENCE, COMPILED, PREPARED, CONVOLUTIONS = "reference", "compiled-reference", "prepared", "prepared-convolutions-only"
PYTORCH_OPS = "prepared-pytorch-ops"
DIRECT = "prepared-direct"


# What is timed per model; bench_inference_cpu builds each variant (_runner), as for its own cases.
PAIRED_VARIANTS = {
    "glam": (REFERENCE, COMPILED, PREPARED, PYTORCH_OPS, DIRECT, CONVOLUTIONS),
    "mssenet": (REFERENCE, COMPILED, PREPARED),
    "afcn": (REFERENCE, COMPILED, PREPARED, DIRECT, CONVOLUTIONS),
}


def _variants(name: str, batch: int) -> dict:
    """variant -> callable(x) for one model and batch size (compiled on first call)."""
    from bench.bench_inference_cpu import _runner

    return {variant: _runner(name, variant, batch) for variant in PAIRED_VARIANTS[name]}


def measure(name: str, batch: int, rounds: int, target: float) -> dict:
    """One model and batch size: ``rounds`` paired rounds after an untimed warm-up round."""
    from bench.bench_inference_cpu import ITEMS_PER_ROUND, _models

    model, make_input = _models(name)
    torch.manual_seed(1000 + batch)
    x = make_input(batch)
    variants = _variants(name, batch)
    calls = max(1, ITEMS_PER_ROUND[name] // batch)
    order = list(variants)
    seconds: dict[str, list[float]] = {v: [] for v in order}
    with torch.inference_mode():
        reference = model.forward_reference(x)
        for variant, module in variants.items():
            out = module(x)  # warm-up and compilation
            if variant != CONVOLUTIONS:  # (the replay returns nothing)
                error = float((out - reference).norm() / reference.norm())
                if not error < 1e-4:
                    raise AssertionError(f"{name} batch {batch} {variant}: relative error {error:.2e} against the reference")
            for _ in range(calls):  # and one untimed round (caches, allocator, lazy weight packing)
                module(x)
        loads = [os.getloadavg()[0]]
        for r in range(rounds):
            shift = r % len(order)
            for variant in order[shift:] + order[:shift]:  # rotated: no variant always runs first
                module = variants[variant]
                start = time.perf_counter()
                for _ in range(calls):
                    module(x)
                seconds[variant].append(time.perf_counter() - start)
        loads.append(os.getloadavg()[0])
    items = calls * batch
    summary = {}
    for variant in order:
        ratios = [ref / t for ref, t in zip(seconds[REFERENCE], seconds[variant])]
        beats_compile = [t < c for t, c in zip(seconds[variant], seconds[COMPILED])]
        summary[variant] = {
            "items_per_s": items / statistics.median(seconds[variant]),
            "ratio_to_eager_median": statistics.median(ratios),
            "ratio_to_eager_q1": quantile(ratios, 0.25),
            "ratio_to_eager_q3": quantile(ratios, 0.75),
            "rounds_meeting_target": sum(r >= target and b for r, b in zip(ratios, beats_compile)) / rounds,
        }
    return {
        "model": name,
        "batch": batch,
        "items_per_round": items,
        "rounds": rounds,
        "load_average_before_after": loads,
        "seconds_per_round": seconds,
        "summary": summary,
    }


def table(result: dict) -> str:
    """Markdown: one row per model, batch size and variant."""
    target = result["target"]
    lines = [
        f"| model | batch | variant | items/s (median round) | × eager: median (quartiles) | rounds ≥ {target}× eager and ahead of compile |",
        "|---|---:|---|---:|---|---:|",
    ]
    for case in result["cases"]:
        for variant, s in case["summary"].items():
            share = "" if variant in (REFERENCE, CONVOLUTIONS) else f"{s['rounds_meeting_target'] * case['rounds']:.0f} / {case['rounds']}"
            ratio = "1" if variant == REFERENCE else f"{s['ratio_to_eager_median']:.2f} ({s['ratio_to_eager_q1']:.2f}–{s['ratio_to_eager_q3']:.2f})"
            lines.append(f"| {case['model']} | {case['batch']} | {variant} | {s['items_per_s']:.0f} | {ratio} | {share} |")
    loads = [load for case in result["cases"] for load in case["load_average_before_after"]]
    lines.append(f"\nload average during the run: {min(loads):.1f} to {max(loads):.1f}; {result['environment']['cpu_threads']} torch threads")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.paired_cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="result JSON to write")
    p.add_argument("--summarize", type=Path, help="print the table of an existing result file and exit")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: all three)")
    p.add_argument("--batches", default="1,32,256", help="comma-separated batch sizes (default 1,32,256)")
    p.add_argument("--rounds", type=int, default=15, help="paired rounds per model and batch size (default 15)")
    p.add_argument("--target", type=float, default=1.5, help="ratio to eager counted in the last column (default 1.5)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("GLAM_FAST_BENCH_THREADS", "2")), help="torch threads (default 2)")
    p.add_argument("--note", default="", help="free text stored with the results")
    args = p.parse_args(argv)
    if args.summarize:
        print(table(json.loads(args.summarize.read_text())))
        return 0
    if args.out is None:
        p.error("--out is required (or --summarize FILE)")
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown or args.rounds < 2:
        p.error(f"unknown models {unknown} (choose from {', '.join(MODELS)})" if unknown else "--rounds must be at least 2")
    batches = [int(b) for b in args.batches.split(",") if b]
    torch.set_num_threads(args.threads)
    result = {
        "schema": SCHEMA,
        "created": utc_now().isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.paired_cpu", *(argv if argv is not None else sys.argv[1:])]),
        "note": args.note,
        "target": args.target,
        "environment": environment(torch.device("cpu")),
        "cases": [],
    }
    for name in models:
        for batch in batches:
            result["cases"].append(measure(name, batch, args.rounds, args.target))
            write_json(args.out, result)  # after every case: a stopped run keeps what it measured
            print(f"{name} batch {batch}: done", file=sys.stderr, flush=True)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
