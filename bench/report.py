"""Regenerate bench/README.md and the plots in bench/plots/ from every result file.

    python -m bench.report [--results bench/results [MORE ...]] [--out bench/README.md] [--plots bench/plots]

Reads the GPU runner's JSON (``python -m bench.gpu``), pytest-benchmark JSON (the CPU suites) and
the paired CPU inference rounds (``python -m bench.paired_cpu``).
For each device and model it shows the newest run (a full run before a quick one): per mode, a
table of items/s for every variant, dtype and batch size with the ratio to the best peer of the
same dtype at that batch size, and a plot of items/s against batch size. pytest-benchmark results
that are not model benchmarks (e.g. the audio front end) get tables of their own. Plots need
matplotlib (``pip install -e .[bench]``); without it the tables are still written.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench import paired_cpu
from bench.environment import RESULTS_DIR, ROOT, SCHEMA, slug
from bench.timing import quantile

MODE_ORDER = ("inference", "train")
PROFILE_RANK = {"full": 2, "quick": 1, "dry-run": 0}
PROFILE_TEXT = {"full": "full run", "quick": "quick run", "dry-run": "dry run (tiny sizes, not a measurement of speed)"}
MODEL_KEYS = ("model", "variant", "mode", "batch", "dtype")


@dataclass
class Run:
    """One result file, normalised: measurements carry model, variant, peer, dtype, mode, batch,
    status and, when ok, median_ms / p20_ms / p80_ms / items_per_s / tflops / spread_pct."""

    path: Path
    kind: str  # "runner" or "cpu-suite"
    profile: str
    created: str
    environment: dict
    note: str
    command: str
    ceilings: dict | None
    models: dict
    variants: dict
    notes: list[str]
    measurements: list[dict]

    @property
    def device_slug(self) -> str:
        return self.environment.get("device_slug", "unknown")

    @property
    def is_gpu(self) -> bool:
        return self.environment.get("device") == "cuda"

    def rank(self) -> tuple:
        return (PROFILE_RANK.get(self.profile, 0), self.created)


@dataclass
class GenericBenchmarks:
    """pytest-benchmark results that are not model benchmarks: shown as they are."""

    path: Path
    created: str
    device: str
    environment: dict
    note: str
    profile: str
    rows: list[dict] = field(default_factory=list)

    @property
    def key(self) -> tuple:
        return (tuple(sorted({r["file"] for r in self.rows})), self.device)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _from_runner(path: Path, data: dict) -> Run:
    return Run(
        path=path,
        kind="runner",
        profile=data.get("profile", "full"),
        created=data.get("created", ""),
        environment=data.get("environment", {}),
        note=data.get("note", ""),
        command=data.get("command", ""),
        ceilings=data.get("ceilings"),
        models=data.get("models", {}),
        variants=data.get("variants", {}),
        notes=data.get("notes", []),
        measurements=data.get("measurements", []),
    )


def _pytest_benchmark_measurement(bench: dict) -> dict:
    info, stats = bench["extra_info"], bench["stats"]
    data_ms = [t * 1e3 for t in stats.get("data") or []]
    median_ms = stats["median"] * 1e3
    rec = {k: info[k] for k in MODEL_KEYS}
    rec.update({"peer": info.get("peer", True), "status": "ok", "median_ms": median_ms})
    if len(data_ms) >= 2:
        rec["p20_ms"], rec["p80_ms"] = quantile(data_ms, 0.2), quantile(data_ms, 0.8)
    else:
        rec["p20_ms"], rec["p80_ms"] = stats["q1"] * 1e3, stats["q3"] * 1e3
    if len(data_ms) >= 4:  # "timed twice": the medians of the first and second half of the rounds
        half = len(data_ms) // 2
        medians = [statistics.median(data_ms[:half]), statistics.median(data_ms[half:])]
        rec["run_medians_ms"] = medians
        rec["spread_pct"] = (max(medians) - min(medians)) / min(medians) * 100
    rec["samples"] = stats["rounds"]
    rec["items_per_s"] = info["batch"] / (median_ms * 1e-3)
    if info.get("flops_per_item"):
        rec["tflops"] = info["flops_per_item"] * info["batch"] / (median_ms * 1e-3) / 1e12
    return rec


def _from_pytest_benchmark(path: Path, data: dict) -> tuple[Run | None, GenericBenchmarks | None]:
    ours = data.get("glam_fast", {})
    env = ours.get("environment") or {}
    cpu = (data.get("machine_info", {}).get("cpu") or {}).get("brand_raw") or data.get("machine_info", {}).get("processor") or "cpu"
    device = env.get("device_slug") or f"cpu-{slug(cpu)}"
    created = data.get("datetime", "")[:19]
    profile = ours.get("profile", "full")
    model_rows, generic_rows = [], []
    for bench in data.get("benchmarks", []):
        if all(k in bench.get("extra_info", {}) for k in MODEL_KEYS):
            model_rows.append(_pytest_benchmark_measurement(bench))
        else:
            stats = bench["stats"]
            generic_rows.append(
                {
                    "file": bench.get("fullname", bench["name"]).split("::")[0],
                    "group": bench.get("group") or "",
                    "name": bench["name"],
                    "median_ms": stats["median"] * 1e3,
                    "q1_ms": stats["q1"] * 1e3,
                    "q3_ms": stats["q3"] * 1e3,
                    "rounds": stats["rounds"],
                    "round_s": stats.get("data") or [],
                    "extra_info": bench.get("extra_info", {}),
                }
            )
    run = generic = None
    if model_rows or ours.get("skipped"):
        run = Run(
            path=path,
            kind="cpu-suite",
            profile=profile,
            created=created,
            environment={"device": "cpu", "device_name": env.get("device_name", cpu), "device_slug": device, **env},
            note=ours.get("note", ""),
            command=ours.get("command", ""),
            ceilings=None,
            models=ours.get("models", {}),
            variants={},
            notes=[],
            measurements=model_rows + list(ours.get("skipped", [])),
        )
    if generic_rows:
        generic = GenericBenchmarks(path, created, device, env, ours.get("note", ""), profile, generic_rows)
    return run, generic


def load(paths: list[Path]) -> tuple[list[Run], list[GenericBenchmarks], list[tuple[Path, dict]], list[str]]:
    """Every *.json under the given folders / files: (runs, other pytest-benchmark files, paired
    CPU rounds as (path, data), problems); unreadable or foreign files are reported."""
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(p.glob("*.json")) if p.is_dir() else [p])
    runs, generics, paired, problems = [], [], [], []
    for path in files:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            problems.append(f"{path.name}: not readable JSON ({err})")
            continue
        if data.get("schema") == SCHEMA:
            runs.append(_from_runner(path, data))
        elif data.get("schema") == paired_cpu.SCHEMA:
            paired.append((path, data))
        elif "benchmarks" in data and "machine_info" in data:
            run, generic = _from_pytest_benchmark(path, data)
            runs.extend([run] if run else [])
            generics.extend([generic] if generic else [])
        else:
            problems.append(f"{path.name}: neither a bench.gpu / bench.paired_cpu result nor pytest-benchmark JSON")
    return runs, generics, paired, problems


def select(runs: list[Run]) -> dict[tuple[str, str], Run]:
    """(device slug, model) -> the run to show: full before quick before dry run, then newest."""
    chosen: dict[tuple[str, str], Run] = {}
    for run in runs:
        for model in {m["model"] for m in run.measurements}:
            key = (run.device_slug, model)
            if key not in chosen or run.rank() > chosen[key].rank():
                chosen[key] = run
    return chosen


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def _fmt_rate(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


STATUS_TEXT = {"oom": "OOM", "error": "error", "unavailable": "n/a", "skipped": "skipped"}


def _rows(run: Run, model: str, mode: str) -> tuple[list[tuple[str, str]], list[int], dict]:
    ms = [m for m in run.measurements if m["model"] == model and m["mode"] == mode]
    variant_order = list(run.variants) or []
    for m in ms:
        if m["variant"] not in variant_order:
            variant_order.append(m["variant"])
    rows = sorted({(m["variant"], m["dtype"]) for m in ms}, key=lambda r: (variant_order.index(r[0]), r[1] != "fp32"))
    batches = sorted({m["batch"] for m in ms if m.get("batch") is not None})
    cells = {(m["variant"], m["dtype"], m["batch"]): m for m in ms}
    return rows, batches, cells


def _best_peer(cells: dict, dtype: str, batch: int) -> float | None:
    rates = [m["items_per_s"] for (v, d, b), m in cells.items() if d == dtype and b == batch and m["status"] == "ok" and m.get("peer")]
    return max(rates, default=None)


def throughput_table(run: Run, model: str, mode: str) -> list[str]:
    rows, batches, cells = _rows(run, model, mode)
    if not rows:
        return []
    lines = ["| variant | dtype | " + " | ".join(f"batch {b}" for b in batches) + " |", "|---|---|" + "---:|" * len(batches)]
    for variant, dtype in rows:
        texts = []
        for b in batches:
            m = cells.get((variant, dtype, b))
            if m is None:
                texts.append("")
            elif m["status"] != "ok":
                texts.append(STATUS_TEXT.get(m["status"], m["status"]))
            else:
                best = _best_peer(cells, dtype, b)
                ratio = f" ({m['items_per_s'] / best:.2f}×)" if best else ""
                texts.append(_fmt_rate(m["items_per_s"]) + ratio)
        if any(t not in ("", "n/a") for t in texts):
            lines.append(f"| {variant} | {dtype} | " + " | ".join(texts) + " |")
    return lines if len(lines) > 2 else []


def flops_table(run: Run, model: str, mode: str) -> list[str]:
    rows, batches, cells = _rows(run, model, mode)
    lines = ["| variant | dtype | " + " | ".join(f"batch {b}" for b in batches) + " |", "|---|---|" + "---:|" * len(batches)]
    for variant, dtype in rows:
        texts = []
        for b in batches:
            m = cells.get((variant, dtype, b))
            if m is None or m["status"] != "ok" or m.get("tflops") is None:
                texts.append("")
                continue
            pct = f" ({m['pct_of_bf16_peak']:.1f} %)" if m.get("pct_of_bf16_peak") is not None else ""
            texts.append(f"{m['tflops']:.2f}{pct}")
        if any(texts):
            lines.append(f"| {variant} | {dtype} | " + " | ".join(texts) + " |")
    return lines if len(lines) > 2 else []


def _status_notes(run: Run, model: str) -> list[str]:
    """One line per distinct (status, reason) among the measurements that did not produce a number."""
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for m in run.measurements:
        if m["model"] != model or m["status"] == "ok":
            continue
        where = f"{m['variant']} {m['dtype']} {m['mode']}" + (f" b{m['batch']}" if m.get("batch") is not None else "")
        grouped[(m["status"], m.get("reason", ""))].append(where)
    lines = []
    for (status, reason), wheres in sorted(grouped.items()):
        variants = sorted({w.split()[0] for w in wheres})
        scope = ", ".join(wheres) if len(wheres) <= 4 else f"{', '.join(variants)} ({len(wheres)} cases)"
        lines.append(f"- {STATUS_TEXT.get(status, status)}: {scope}: {reason or 'no reason recorded'}")
    return lines


def _spread_note(run: Run, model: str) -> str:
    spreads = [(m["spread_pct"], m) for m in run.measurements if m["model"] == model and m["status"] == "ok" and m.get("spread_pct") is not None]
    if not spreads:
        return ""
    values = [s for s, _ in spreads]
    worst, m = max(spreads, key=lambda s: s[0])
    how = "two timing runs" if run.kind == "runner" else "first and second half of the rounds"
    return (
        f"Repeatability ({how}): medians differ by {statistics.median(values):.1f} % (median over cases), "
        f"at most {worst:.1f} % ({m['variant']} {m['dtype']} {m['mode']} b{m['batch']}); "
        "differences smaller than that are noise."
    )


def _link(path: Path, readme_dir: Path) -> str:
    """Markdown link to a result file, relative to the README when it lies below it."""
    try:
        target = path.resolve().relative_to(readme_dir.resolve()).as_posix()
    except ValueError:
        return f"`{path.name}`"
    return f"[`{path.name}`]({target})"


def _env_line(run: Run, readme_dir: Path) -> str:
    env = run.environment
    parts = [f"torch {env.get('torch', '?')}", f"triton {env.get('triton') or '-'}"]
    if env.get("cuda") and run.is_gpu:
        parts.append(f"CUDA {env['cuda']}")
    if not run.is_gpu and env.get("cpu_threads"):
        parts.append(f"{env['cpu_threads']} thread{'s' if env['cpu_threads'] != 1 else ''}")
    commit = env.get("git_commit", "?") + (" (uncommitted changes)" if env.get("git_dirty") else "")
    parts.append(f"commit {commit}")
    return f"{PROFILE_TEXT.get(run.profile, run.profile)} of {run.created[:10]}: " + ", ".join(parts) + f" — {_link(run.path, readme_dir)}"


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def plot(run: Run, model: str, mode: str, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows, batches, cells = _rows(run, model, mode)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    drawn = False
    for variant, dtype in rows:
        points = sorted((b, m["items_per_s"]) for (v, d, b), m in cells.items() if (v, d) == (variant, dtype) and m["status"] == "ok")
        if not points:
            continue
        peer = next(iter(m.get("peer", True) for (v, d, _), m in cells.items() if (v, d) == (variant, dtype)))
        ax.plot(*zip(*points), marker="o", linestyle="-" if not peer else "--", linewidth=2.2 if not peer else 1.2, label=f"{variant} {dtype}")
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    title = run.models.get(model, {}).get("title", model)
    where = run.environment.get("device_name", run.device_slug)
    if not run.is_gpu and run.environment.get("cpu_threads"):
        where += f", {run.environment['cpu_threads']} thread{'s' if run.environment['cpu_threads'] != 1 else ''}"
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="items / s", title=f"{title} {mode} — {where}")
    ax.set_xticks(batches)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    low, high = ax.get_ylim()
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if high / low < 100 else (1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:,.10g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------
# README
# ---------------------------------------------------------------------------------------------

HEADER = """# Benchmarks

<!-- Generated by `python -m bench.report` from bench/results/*.json. Do not edit by hand. -->

Every number here comes from a result file in [`results/`](results/). A measurement is a model
run by a **variant** in a **dtype**, in a **mode**, at a batch size:

- variants: the **peers** (what a user can run without glam_fast: `eager` PyTorch reference,
  `compile` = `torch.compile` default, `compile-max-autotune`, `compile-cudagraphs` =
  `mode="reduce-overhead"`) and each **glam_fast backend** (`triton`, `cuda`) that can run;
- dtype: `fp32`, or `bf16` = `torch.autocast(bfloat16)` around the forward (fp32 weights);
- mode: `inference` (`torch.inference_mode()`, eval mode) or `train` (one full step: forward,
  cross-entropy, backward, Adam step);
- items: GLAM, one 26 × 57 MFCC segment (1.8 s); MS-SENet, one utterance of T = 606 frames of
  39 MFCCs (T = 150 in the quick CPU suite); AFCN, one 3 × 257 × 300 spectrogram (3 s at 16 kHz,
  n_fft 512, hop 160; the AlexNet trunk needs at least 63 bins and frames), batched with per-item
  lengths drawn in [150, 300] (the padded path the model exists for).

Tables give items/s (median) and, in brackets, the ratio to the best peer in the same dtype at
the same batch size (1.00× is that best peer). `n/a`: the variant cannot run on that device
(reason below the table); `OOM`: out of memory; `skipped`: time budget or memory guard. TFLOP/s
count matmul and convolution FLOPs (forward; forward + backward for a training step) with
`torch.utils.flop_counter` on the reference model, over the median time; GPU runs also give
them as % of the bf16 matmul rate measured in the same run.

Inputs are random (standard normal), rotated among several batches; the same inputs for every
variant. GPU runner: warm-up calls (compilation, autotuning, cuDNN algorithm search with
`cudnn.benchmark`) outside the numbers, every call timed with CUDA events, every case timed
twice. CPU suite: pytest-benchmark rounds after a warm-up call; its repeatability compares the
first and second half of the rounds.

## How to run

```bash
# CPU suite, full: batches 1, 32, 256; eager, autocast and torch.compile
# (77 min with 1 thread on a busy 2-core machine)
python -m pytest bench/bench_models.py --bench-note "quiet machine"
# CPU suite, quick (under 2 min): batches 1 and 8, eager only
python -m pytest bench/bench_models.py --bench-quick
# GPU runner: batches 1 to 4096, all variants, one JSON file into the folder; ~11 min on an H100
# within a time budget (eager and glam_fast first, then compiled peers: bf16 before fp32;
# max-autotune at batch 1024 only); --quick: batches 1 and 1024, ~3 min
python -m bench.gpu --out bench/results
python -m bench.gpu --out bench/results --variants compile-max-autotune --dtypes bf16 --budget-s 0
# Check that every path runs, on the CPU, in a minute
python -m bench.gpu --out /tmp/dry --dry-run
# Scoring on a GPU (Scorer end to end: files/s and the decode / features / model split),
# on synthetic audio or GLAM_FAST_BENCH_AUDIO=folder
python -m pytest bench/bench_scoring_gpu.py --benchmark-json bench/results/gpu-scoring-<gpu>.json
# A GPU machine end to end: build, tests, compile report, GPU runner, scoring, report -> OUTDIR
bench/gpu_check.sh OUTDIR
# This page and the plots, from every file in bench/results
python -m bench.report
```
"""


def model_section(run: Run, model: str, plots_dir: Path, readme_dir: Path, made: set[Path], draw: bool) -> list[str]:
    info = run.models.get(model, {})
    title = info.get("title", model)
    lines = [f"### {title}", ""]
    details = []
    if info.get("input_note"):
        details.append(f"input: {info['input_note']}")
    flops = info.get("flops_per_item") or {}
    if flops:
        details.append(f"{flops['inference'] / 1e6:,.1f} MFLOP per item forward, {flops['train'] / 1e6:,.1f} forward + backward")
    if info.get("item_shape"):
        details.append(f"item shape in this run {tuple(info['item_shape'])}")
    if details:
        lines += ["; ".join(details) + ".", ""]
    for mode in MODE_ORDER:
        table = throughput_table(run, model, mode)
        if not table:
            continue
        lines += [f"**{mode}**, items/s (× best peer, same dtype):", "", *table, ""]
        if run.is_gpu:
            ft = flops_table(run, model, mode)
            if ft:
                lines += ["achieved TFLOP/s (% of the measured bf16 peak):", "", *ft, ""]
        png = plots_dir / f"{run.device_slug}-{model}-{mode}.png"
        if draw and plot(run, model, mode, png):
            made.add(png.resolve())
        if png.exists():
            try:
                rel = png.resolve().relative_to(readme_dir.resolve()).as_posix()
            except ValueError:
                rel = png.resolve().as_posix()
            lines += [f"![{title} {mode}]({rel})", ""]
    spread = _spread_note(run, model)
    if spread:
        lines += [spread, ""]
    notes = _status_notes(run, model)
    if notes:
        lines += ["Not measured:", "", *notes, ""]
    return lines


def generic_section(group: GenericBenchmarks) -> list[str]:
    env = group.environment
    head = f"`{group.path.name}` ({PROFILE_TEXT.get(group.profile, group.profile)} of {group.created[:10]}"
    if env:
        head += f", torch {env.get('torch', '?')}, {env.get('cpu_threads', '?')} threads, commit {env.get('git_commit', '?')}"
    lines = [f"### {', '.join(sorted({r['file'] for r in group.rows}))} on {group.device}", "", head + ")", ""]
    if group.note:
        lines += [f"> {group.note}", ""]
    lines += ["| group | benchmark | median ms | IQR ms | rounds |", "|---|---|---:|---:|---:|"]
    for r in sorted(group.rows, key=lambda r: (r["group"], r["name"])):
        lines.append(f"| {r['group']} | `{r['name']}` | {r['median_ms']:.3f} | {r['q1_ms']:.3f}–{r['q3_ms']:.3f} | {r['rounds']} |")
    return lines + [""] + _scoring_split(group.rows)


def _scoring_split(rows: list[dict]) -> list[str]:
    """Scoring benchmarks that record their throughput and time split (bench_scoring_gpu.py):
    files/s and the last round's seconds in decoding (worker time), waiting for decoded audio,
    features and the model (the first round includes warm-up)."""
    scored = [r for r in rows if "files_per_s" in r["extra_info"] and r["extra_info"].get("time_split_per_round")]
    if not scored:
        return []
    lines = [
        "| variant | device | files | files/s (median round) | seconds per round | audio s/s | decode s | decode wait s | features s | model s |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(scored, key=lambda r: r["extra_info"].get("variant", r["name"])):
        info = r["extra_info"]
        last = info["time_split_per_round"][-1]
        lines.append(
            f"| {info.get('variant', r['name'])} | {info.get('device', '?')} | {info.get('files', '?')} | {info['files_per_s']:,.1f} | "
            f"{', '.join(f'{t:.2f}' for t in r.get('round_s', []))} | "
            f"{info.get('audio_seconds_per_s', float('nan')):,.0f} | {last.get('decode', 0):.1f} | {last.get('decode_wait', 0):.1f} | "
            f"{last.get('features', 0):.1f} | {last.get('model', 0):.1f} |"
        )
    return lines + [""]


def paired_section(path: Path, data: dict, readme_dir: Path) -> list[str]:
    env = data.get("environment", {})
    head = (
        f"{_link(path, readme_dir)} (created {data.get('created', '?')[:19]}, torch {env.get('torch', '?')}, "
        f"{env.get('cpu_threads', '?')} threads, commit {env.get('git_commit', '?')}{' (dirty)' if env.get('git_dirty') else ''})"
    )
    lines = [head, ""]
    if data.get("note"):
        lines += [f"> {data['note']}", ""]
    return lines + [paired_cpu.table(data), ""]


def render(
    runs: list[Run],
    generics: list[GenericBenchmarks],
    problems: list[str],
    readme: Path,
    plots_dir: Path,
    draw: bool = True,
    paired: list[tuple[Path, dict]] = (),
) -> tuple[str, set[Path]]:
    chosen = select(runs)
    made: set[Path] = set()
    lines = [HEADER]
    devices = sorted({d for d, _ in chosen}, key=lambda d: (not any(r.is_gpu for (dd, _), r in chosen.items() if dd == d), d))
    if not any(r.is_gpu for r in chosen.values()):
        lines += ["## GPU", "", "**GPU results: pending.** No GPU run has been committed yet; `bench/gpu_check.sh` produces one.", ""]
    model_order = ["glam", "mssenet", "afcn"]
    for device in devices:
        device_runs = {m: r for (d, m), r in chosen.items() if d == device}
        first = next(iter(device_runs.values()))
        kind = "GPU" if first.is_gpu else "CPU"
        lines += [f"## {kind}: {first.environment.get('device_name', device)} (`{device}`)", ""]
        distinct = {id(r): r for r in device_runs.values()}.values()
        for run in sorted(distinct, key=lambda r: r.created):
            lines.append(f"- {_env_line(run, readme.parent)}")
            if run.note:
                lines.append(f"  - **Note:** {run.note}")
            if run.ceilings and "bf16_matmul_tflops" in run.ceilings:
                c = run.ceilings
                lines.append(
                    f"  - ceilings measured in this run: bf16 matmul {c['bf16_matmul_n']}³ {c['bf16_matmul_tflops']:.3g} TFLOP/s, "
                    f"device-to-device copy {c['copy_gb_per_s']:,.0f} GB/s (read + write)"
                )
            for note in run.notes:
                lines.append(f"  - {note}")
        lines.append("")
        for model in sorted(device_runs, key=lambda m: (model_order.index(m) if m in model_order else 99, m)):
            lines += model_section(device_runs[model], model, plots_dir, readme.parent, made, draw)
    if generics:
        lines += ["## Other benchmarks (pytest-benchmark)", ""]
        newest: dict[tuple, GenericBenchmarks] = {}
        for g in generics:
            if g.key not in newest or (PROFILE_RANK.get(g.profile, 0), g.created) > (PROFILE_RANK.get(newest[g.key].profile, 0), newest[g.key].created):
                newest[g.key] = g
        for g in sorted(newest.values(), key=lambda g: g.key):
            lines += generic_section(g)
    if paired:
        lines += [
            "## CPU inference in paired rounds (`bench/paired_cpu.py`)",
            "",
            "Every round runs every variant once, in rotating order; ratios are taken within the round.",
            "",
        ]
        for path, data in sorted(paired, key=lambda p: p[1].get("created", ""), reverse=True):
            lines += paired_section(path, data, readme.parent)
    lines += ["## All result files", "", "| file | kind | device | profile | created | commit | note |", "|---|---|---|---|---|---|---|"]
    entries = [(r.path, r.kind, r.device_slug, r.profile, r.created, r.environment.get("git_commit", "?"), r.note) for r in runs]
    entries += [
        (path, "cpu-paired", data.get("environment", {}).get("device_slug", "cpu"), "full", data.get("created", ""), data.get("environment", {}).get("git_commit", "?"), data.get("note", ""))
        for path, data in paired
    ]
    entries += [(g.path, "pytest-benchmark", g.device, g.profile, g.created, g.environment.get("git_commit", "?"), g.note) for g in generics if g.path not in {r.path for r in runs}]
    for path, kind, device, profile, created, commit, note in sorted(entries, key=lambda e: e[4], reverse=True):
        lines.append(f"| {_link(path, readme.parent)} | {kind} | {device} | {profile} | {created[:19]} | {commit} | {note} |")
    lines.append("")
    if problems:
        lines += ["Files not read:", "", *[f"- {p}" for p in problems], ""]
    return "\n".join(lines), made


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", nargs="+", type=Path, default=[RESULTS_DIR], help="result folders or files (default bench/results)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "README.md", help="markdown file to write")
    p.add_argument("--plots", type=Path, default=None, help="folder for the PNG plots (default: plots/ beside --out)")
    p.add_argument("--no-plots", action="store_true", help="tables only (existing plots are left alone)")
    args = p.parse_args(argv)
    plots_dir = args.plots or args.out.parent / "plots"
    runs, generics, paired, problems = load(args.results)
    text, made = render(runs, generics, problems, args.out, plots_dir, draw=not args.no_plots, paired=paired)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if made:  # plots of runs no longer shown are removed
        for old in plots_dir.glob("*.png"):
            if old.resolve() not in made:
                old.unlink()
    print(f"wrote {args.out} ({len(runs)} runs, {len(generics)} other benchmark files, {len(paired)} paired CPU runs, {len(made)} plots)")
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
