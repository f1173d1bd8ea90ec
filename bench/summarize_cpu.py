"""Markdown tables from the CPU benchmark results (bench_inference_cpu.py, bench_scoring.py).

    python bench/summarize_cpu.py bench/results/cpu-inference-run1.json bench/results/cpu-scoring-emodb-run1.json

Inference: items/s per model, batch size and variant (median round; the interleaved repeats
r0, r1, ... side by side) and the speed-up of each variant over the eager reference of the same
repeat. Scoring: files/s per variant, speed-up over the naive pipeline, and the time split.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def inference_table(benchmarks: list[dict]) -> str:
    rate = defaultdict(dict)  # (model, batch, variant) -> {repeat: items/s}
    loads = []
    for b in benchmarks:
        e = b["extra_info"]
        rate[(e["model"], e["batch"], e["variant"])][e["repeat"]] = e["items_per_round"] / b["stats"]["median"]
        loads += [e["load_average_before"], e["load_average_after"]]
    lines = ["| model | batch | variant | items/s per repeat | × eager reference (per repeat) |", "|---|---|---|---|---|"]
    for (model, batch, variant), per_repeat in rate.items():
        reference = rate[(model, batch, "reference")]
        speeds = " / ".join(f"{per_repeat[r]:.0f}" for r in sorted(per_repeat))
        ratios = " / ".join(f"{per_repeat[r] / reference[r]:.2f}" for r in sorted(per_repeat) if r in reference)
        lines.append(f"| {model} | {batch} | {variant} | {speeds} | {ratios} |")
    lines.append(f"\nload average during the run: {min(loads):.1f} to {max(loads):.1f}")
    return "\n".join(lines)


def scoring_table(benchmarks: list[dict]) -> str:
    naive = next(b["stats"]["median"] for b in benchmarks if b["extra_info"]["variant"] == "naive")
    lines = ["| variant | seconds (median) | files/s | × naive | decode (summed over workers) / wait / features / model, s |", "|---|---|---|---|---|"]
    for b in benchmarks:
        e, seconds = b["extra_info"], b["stats"]["median"]
        split = ""
        if e.get("time_split_per_round"):
            s = e["time_split_per_round"][-1]
            split = f"{s['decode']:.1f} / {s['decode_wait']:.1f} / {s['features']:.1f} / {s['model']:.1f}"
        lines.append(f"| {e['variant']} | {seconds:.1f} | {e['files'] / seconds:.1f} | {naive / seconds:.1f} | {split} |")
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    for path in paths:
        with open(path) as handle:
            benchmarks = json.load(handle)["benchmarks"]
        kind = "model" in benchmarks[0]["extra_info"]
        print(f"### {path}\n")
        print(inference_table(benchmarks) if kind else scoring_table(benchmarks))
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
