"""The GPU runner: every variant of every model, side by side, into one JSON file per run.

    python -m bench.gpu --out DIR [--quick] [--models glam,afcn] [--variants eager,triton] ...
    python -m bench.gpu --out DIR --dry-run          # tiny sizes on the CPU: checks every code path

For each model, mode (inference / train step), variant and dtype it times batch sizes 1, 32, 256,
1024 and 4096 (full run) on the same random inputs, rotating among several input batches, after a
warm-up that keeps compilation and autotuning out of the numbers. Each measurement is timed twice
(the two medians' spread is recorded). The device's ceilings (bf16 matmul, device-to-device copy)
are measured in the same run. Out-of-memory and errors are recorded and the run goes on. A time
budget keeps the run bounded: cheap variants run first; whatever the budget cannot fit is recorded
as skipped. The JSON is rewritten after every variant, so a killed run keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import shlex
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from bench import registry
from bench.environment import SCHEMA, environment, result_filename, utc_now, write_json
from bench.registry import MODELS, MODES, VARIANTS, BuildOptions, ModelSpec, Variant
from bench.timing import TimerSettings, measure_ceilings, summarize, time_calls

GiB = 2**30


@dataclass(frozen=True)
class Profile:
    """Sizes, batch lists and time limits of one kind of run."""

    name: str
    size: str  # ModelSpec size profile
    batches: tuple[int, ...]
    max_cost: int  # variants of a higher cost class are left out
    budget_s: float | None
    timer: TimerSettings
    matmul_n: int
    copy_bytes: int
    input_bytes_cap: int  # rotating inputs: as many batches as fit (2 to 4)
    compile_backend: str = "inductor"
    variant_batches: dict[str, tuple[int, ...]] = field(default_factory=dict)
    variant_dtypes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Do not start a variant of this cost class with less budget left (compilation takes time).
    min_budget_s: dict[int, float] = field(default_factory=dict)


PROFILES = {
    "full": Profile(
        name="full",
        size="full",
        batches=(1, 32, 256, 1024, 4096),
        max_cost=3,
        budget_s=660.0,
        timer=TimerSettings(warmup_calls=3, target_ms=200.0, min_samples=5, max_samples=500),
        matmul_n=8192,
        copy_bytes=2 * GiB,
        input_bytes_cap=2 * GiB,
        variant_batches={"compile-max-autotune": (1024,)},
        min_budget_s={1: 40.0, 2: 120.0, 3: 60.0},
    ),
    "quick": Profile(
        name="quick",
        size="full",
        batches=(1, 1024),
        max_cost=1,
        budget_s=170.0,
        timer=TimerSettings(warmup_calls=3, target_ms=100.0, min_samples=5, max_samples=200),
        matmul_n=8192,
        copy_bytes=1 * GiB,
        input_bytes_cap=1 * GiB,
        variant_batches={"compile": (1024,)},
        variant_dtypes={"compile": ("bf16",)},
        min_budget_s={1: 40.0},
    ),
    "dry-run": Profile(
        name="dry-run",
        size="tiny",
        batches=(1, 2),
        max_cost=3,
        budget_s=None,
        timer=TimerSettings(warmup_calls=1, target_ms=1.0, min_samples=2, max_samples=2),
        matmul_n=128,
        copy_bytes=2**20,
        input_bytes_cap=64 * 2**20,
        compile_backend="eager",
        variant_batches={},
    ),
}


@dataclass(frozen=True)
class Config:
    """One variant of one model in one mode and dtype, over its batch sizes."""

    spec: ModelSpec
    mode: str
    variant: Variant
    dtype: str
    batches: tuple[int, ...]


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA OOM, also when wrapped (e.g. by inductor while autotuning) or raised by a library."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = str(err).lower()
        if isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "alloc_failed" in text:
            return True
        err = err.__cause__ or err.__context__
    return False


def describe_error(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:600]}"


class Runner:
    def __init__(self, args: argparse.Namespace, profile: Profile, device: torch.device):
        self.args = args
        self.profile = profile
        self.device = device
        self.options = BuildOptions(compile_backend=args.compile_backend or profile.compile_backend)
        self.start = time.perf_counter()
        self.context_lost = ""  # set when a CUDA error leaves the device unusable
        self.deadline = None if args.budget_s is None else self.start + args.budget_s
        self.env = environment(device)
        created = utc_now()
        prefix = "dryrun-" if profile.name == "dry-run" else ""
        self.path = Path(args.out) / result_filename(prefix, self.env, created)
        self.result: dict = {
            "schema": SCHEMA,
            "kind": "runner",
            "created": created.isoformat(timespec="seconds"),
            "command": "python -m bench.gpu " + " ".join(shlex.quote(a) for a in args.argv),
            "profile": profile.name,
            "note": args.note,
            "environment": self.env,
            "settings": {
                "size_profile": profile.size,
                "batches": list(args.batches),
                "budget_s": args.budget_s,
                "timer": asdict(profile.timer),
                "compile_backend": self.options.compile_backend,
                "inputs": "standard normal features, random labels; 2 to 4 different batches per size, rotated call by call",
                "timing": "CUDA events per call" if device.type == "cuda" else "host clock per call",
                "repeats": 2,
            },
            "ceilings": None,
            "models": {},
            "variants": {},
            "notes": [],
            "measurements": [],
        }

    # -- bookkeeping -------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def budget_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.perf_counter()

    def save(self) -> None:
        self.result["elapsed_s"] = round(self.elapsed(), 1)
        write_json(self.path, self.result)

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():7.1f} s] {text}", flush=True)

    def note(self, text: str) -> None:
        self.result["notes"].append(text)
        self.say(f"note: {text}")

    # -- setup -------------------------------------------------------------------------------

    def measure_ceilings(self) -> None:
        try:
            ceilings = measure_ceilings(self.device, self.profile.matmul_n, self.profile.copy_bytes, self.profile.timer)
        except Exception as err:  # noqa: BLE001 - a failed ceiling must not stop the run
            traceback.print_exc()
            self.result["ceilings"] = {"error": describe_error(err)}
            return
        self.result["ceilings"] = ceilings
        self.say(
            f"ceilings: bf16 matmul {ceilings['bf16_matmul_n']}^3 {ceilings['bf16_matmul_tflops']:.1f} TFLOP/s, "
            f"copy {ceilings['copy_bytes'] / GiB:.2f} GiB {ceilings['copy_gb_per_s']:.0f} GB/s (read + write)"
        )

    def describe_model(self, spec: ModelSpec, reference: torch.nn.Module) -> None:
        flops = registry.count_flops(spec, self.profile.size, reference)
        self.result["models"][spec.name] = {
            "title": spec.title,
            "item_shape": list(spec.item_shape(self.profile.size)),
            "input_note": spec.input_note,
            "variable_length": spec.variable_length,
            "parameters": sum(p.numel() for p in reference.parameters()),
            "flops_per_item": flops,
        }
        self.say(f"{spec.title}: item {spec.item_shape(self.profile.size)}, forward {flops['inference'] / 1e6:.1f} MFLOP/item, train fwd+bwd {flops['train'] / 1e6:.1f} MFLOP/item")

    def plan(self, models: list[str], variants: list[str], modes: list[str], dtypes: list[str]) -> list[Config]:
        """Configs in run order: eager peers, then glam_fast backends (so that a fused kernel that
        breaks the CUDA context cannot take the peers' numbers with it); then the compiled peers,
        all of them in bf16 (the stronger peers) before any in fp32, cheaper compile modes first;
        then model, mode, variant. A time budget thus drops the least informative measurements."""
        configs = []
        for model in models:
            for mode in modes:
                for name in variants:
                    variant = VARIANTS[name]
                    batches = self.args.variant_batches.get(name) or variant.batches or self.args.batches
                    batches = tuple(b for b in self.args.batches if b in batches)
                    for dtype in dtypes:
                        allowed = self.profile.variant_dtypes.get(name) or variant.dtypes or dtypes
                        if dtype in allowed and batches:
                            configs.append(Config(MODELS[model], mode, variant, dtype, batches))

        def order(c: Config) -> tuple:
            compiled = c.variant.cost > 0
            return (compiled, compiled and c.dtype != "bf16", c.variant.cost, not c.variant.peer, models.index(c.spec.name), modes.index(c.mode), variants.index(c.variant.name), dtypes.index(c.dtype))

        return sorted(configs, key=order)

    # -- measuring ---------------------------------------------------------------------------

    def base_record(self, config: Config) -> dict:
        v = config.variant
        return {
            "model": config.spec.name,
            "variant": v.name,
            "peer": v.peer,
            "backend": v.backend,
            "compile_mode": v.compile_mode,
            "dtype": config.dtype,
            "mode": config.mode,
        }

    def add(self, config: Config, batch: int, status: str, reason: str = "", runs: list[dict] | None = None) -> dict:
        rec = {**self.base_record(config), "batch": batch, "status": status}
        if reason:
            rec["reason"] = reason
        if runs:
            samples = [s for run in runs for s in run["samples_ms"]]
            stats = summarize(samples)
            medians = [summarize(run["samples_ms"])["median_ms"] for run in runs]
            seconds = stats["median_ms"] * 1e-3
            flops = self.result["models"][config.spec.name]["flops_per_item"][config.mode]
            tflops = flops * batch / seconds / 1e12
            peak = (self.result.get("ceilings") or {}).get("bf16_matmul_tflops")
            rec.update(
                {
                    "median_ms": stats["median_ms"],
                    "p20_ms": stats["p20_ms"],
                    "p80_ms": stats["p80_ms"],
                    "samples": stats["samples"],
                    "run_medians_ms": medians,
                    "spread_pct": (max(medians) - min(medians)) / min(medians) * 100 if len(medians) > 1 else None,
                    "items_per_s": batch / seconds,
                    "tflops": tflops,
                    "pct_of_bf16_peak": tflops / peak * 100 if peak else None,
                    "warmup_s": runs[0]["warmup_s"],
                    "peak_memory_gib": max((r["peak_memory_gib"] for r in runs if r["peak_memory_gib"] is not None), default=None),
                }
            )
        self.result["measurements"].append(rec)
        return rec

    def input_count(self, spec: ModelSpec, batch: int) -> int:
        item_bytes = 4 * torch.Size(spec.item_shape(self.profile.size)).numel()
        return max(2, min(4, self.profile.input_bytes_cap // max(item_bytes * batch, 1)))

    def device_usable(self) -> bool:
        """False after a sticky CUDA error (illegal address, device-side assert): every later call fails."""
        if self.device.type != "cuda":
            return True
        try:
            torch.cuda.synchronize(self.device)
            torch.zeros(1, device=self.device).add_(1).item()
        except Exception:  # noqa: BLE001
            return False
        return True

    def free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def run_config(self, config: Config, reference: torch.nn.Module) -> None:
        spec, variant = config.spec, config.variant
        label = f"{spec.name} {config.mode} {variant.name} {config.dtype}"
        reason = variant.unavailable(spec, self.device, config.mode)
        if reason:
            for batch in config.batches:
                self.add(config, batch, "unavailable", reason)
            self.say(f"{label}: unavailable: {reason}")
            return
        if self.context_lost:
            for batch in config.batches:
                self.add(config, batch, "skipped", f"not run: the CUDA context was lost earlier ({self.context_lost[:200]})")
            return
        needed = self.profile.min_budget_s.get(variant.cost, 0.0) if self.deadline is not None else 0.0
        if self.budget_left() < needed:
            for batch in config.batches:
                self.add(config, batch, "skipped", f"time budget of {self.args.budget_s:.0f} s used up")
            self.say(f"{label}: skipped (time budget)")
            return
        try:
            step = registry.build_step(spec, variant, config.mode, config.dtype, self.device, reference, self.options)
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            for batch in config.batches:
                self.add(config, batch, "error", describe_error(err))
            return

        runs: dict[int, list[dict]] = {b: [] for b in config.batches}
        failed: dict[int, tuple[str, str]] = {}
        for repeat in range(2):
            timer = self.profile.timer if repeat == 0 else replace(self.profile.timer, warmup_calls=1)
            for batch in config.batches:
                if batch in failed:
                    continue
                oom_below = [b for b, (status, _) in failed.items() if status == "oom" and b < batch]
                if oom_below:
                    failed[batch] = ("oom", f"not run: out of memory at batch {min(oom_below)}")
                    continue
                if self.budget_left() <= 0:
                    if not runs[batch]:
                        failed[batch] = ("skipped", f"time budget of {self.args.budget_s:.0f} s used up")
                    continue
                self.free_memory()
                try:
                    inputs = registry.make_batches(spec, self.profile.size, batch, self.device, self.input_count(spec, batch))
                    if self.device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(self.device)
                    samples, warmup_s = time_calls(registry.rotating(step, inputs), self.device, timer)
                    peak = torch.cuda.max_memory_allocated(self.device) / GiB if self.device.type == "cuda" else None
                    runs[batch].append({"samples_ms": samples, "warmup_s": warmup_s, "peak_memory_gib": peak})
                    stats = summarize(samples)
                    self.say(
                        f"{label} b{batch} run {repeat + 1}: {stats['median_ms']:.3f} ms "
                        f"(p20 {stats['p20_ms']:.3f}, p80 {stats['p80_ms']:.3f}, n={stats['samples']}), "
                        f"{batch / stats['median_ms'] * 1e3:,.0f} items/s, warm-up {warmup_s:.1f} s"
                    )
                except Exception as err:  # noqa: BLE001 - record and go on
                    oom = is_out_of_memory(err)
                    if not oom:
                        traceback.print_exc()
                    failed[batch] = ("oom" if oom else "error", describe_error(err))
                    self.say(f"{label} b{batch}: {'out of memory' if oom else 'error'}: {describe_error(err)[:200]}")
                    if not oom and not self.device_usable():
                        self.context_lost = f"{label} b{batch}: {describe_error(err)}"
                        self.note(f"CUDA context lost after {self.context_lost[:300]}; the remaining variants are not run")
                finally:
                    inputs = None  # free before the next size is allocated
                if self.context_lost:
                    break
            if self.context_lost:
                break
        for batch in config.batches:
            if runs[batch]:
                self.add(config, batch, "ok", "" if len(runs[batch]) == 2 else "timed once (budget)", runs[batch])
            else:
                status, why = failed.get(batch, ("skipped", "not run"))
                self.add(config, batch, status, why)
        del step
        self.free_memory()
        if variant.compile_mode is not None:
            torch._dynamo.reset()

    # -- the whole run -----------------------------------------------------------------------

    def run(self) -> Path:
        args = self.args
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # the eager peers at their best: per-shape cuDNN algorithms
            self.env["cudnn_benchmark"] = True
        self.say(f"{self.env['device_name']}: torch {self.env['torch']}, triton {self.env['triton']}, CUDA {self.env['cuda']}, commit {self.env['git_commit']}")
        self.say(f"writing {self.path}")
        for name in args.variants:
            self.result["variants"][name] = VARIANTS[name].describe()
        for name in args.variants:
            batches = args.variant_batches.get(name) or VARIANTS[name].batches
            if VARIANTS[name].cost <= self.profile.max_cost and batches and set(args.batches) - set(batches):
                kept = [b for b in args.batches if b in batches]
                self.note(f"{name} measured at batch {', '.join(map(str, kept)) or 'none of those requested'} only, to keep the run within its time")
        for name, dtypes in sorted(self.profile.variant_dtypes.items()):
            if name in args.variants:
                self.note(f"{name} measured in {', '.join(dtypes)} only")
        left_out = [v for v in args.variants if VARIANTS[v].cost > self.profile.max_cost]
        if left_out:
            self.note(f"not measured in a {self.profile.name} run: {', '.join(left_out)}")
        if self.options.compile_backend != "inductor":
            self.note(f"torch.compile ran with backend={self.options.compile_backend!r} (modes ignored): a code-path check, not inductor's speed")
        self.save()
        if not args.no_ceilings:
            self.measure_ceilings()
        references = {}
        for name in args.models:
            references[name] = MODELS[name].build()
            self.describe_model(MODELS[name], references[name])
        self.save()
        variants = [v for v in args.variants if VARIANTS[v].cost <= self.profile.max_cost]
        for config in self.plan(args.models, variants, args.modes, args.dtypes):
            self.run_config(config, references[config.spec.name])
            self.save()
        self.say(f"done: {len(self.result['measurements'])} measurements in {self.path}")
        print(summary_table(self.result), flush=True)
        return self.path


def summary_table(result: dict) -> str:
    """Per model and mode: the best peer and the best glam_fast variant at each batch size."""
    lines = ["", f"{'model':<9} {'mode':<10} {'batch':>6} {'best peer':<30} {'items/s':>12} {'best glam_fast':<22} {'items/s':>12} {'ratio':>6}"]
    ok = [m for m in result["measurements"] if m["status"] == "ok"]
    keys = sorted({(m["model"], m["mode"], m["batch"]) for m in result["measurements"]}, key=lambda k: (k[0], MODES.index(k[1]), k[2]))
    for model, mode, batch in keys:
        cell = [m for m in ok if (m["model"], m["mode"], m["batch"]) == (model, mode, batch)]
        peers = [m for m in cell if m["peer"]]
        fused = [m for m in cell if not m["peer"]]
        peer = max(peers, key=lambda m: m["items_per_s"], default=None)
        best = max(fused, key=lambda m: m["items_per_s"], default=None)
        peer_txt = (f"{peer['variant']} {peer['dtype']}", f"{peer['items_per_s']:,.0f}") if peer else ("-", "-")
        best_txt = (f"{best['variant']} {best['dtype']}", f"{best['items_per_s']:,.0f}") if best else ("none available", "-")
        ratio = f"{best['items_per_s'] / peer['items_per_s']:.2f}x" if peer and best else "-"
        lines.append(f"{model:<9} {mode:<10} {batch:>6} {peer_txt[0]:<30} {peer_txt[1]:>12} {best_txt[0]:<22} {best_txt[1]:>12} {ratio:>6}")
    return "\n".join(lines)


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(int(s) for s in text.split(",") if s.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,32,256; got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the result JSON (created if missing)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--quick", action="store_true", help="batches 1 and 1024, no max-autotune / CUDA-graph peers, ~3 min budget")
    kind.add_argument("--dry-run", action="store_true", help="tiny sizes, batches 1 and 2, compile backend 'eager': checks that every path runs (CPU by default)")
    p.add_argument("--device", help="cuda (default) or cpu")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--variants", default=None, help=f"comma-separated, from {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--modes", default=",".join(MODES), help="inference,train")
    p.add_argument("--dtypes", default=",".join(registry.DTYPES), help="fp32,bf16 (bf16 = torch.autocast)")
    p.add_argument("--batches", type=_ints, help="batch sizes (default: the profile's)")
    p.add_argument("--max-autotune-batches", type=_ints, help="batch sizes for compile-max-autotune (full run default: 1024)")
    p.add_argument("--budget-s", type=float, help="time budget for the measurements in seconds (default: full 660, quick 170, dry run none; 0 = none)")
    p.add_argument("--compile-backend", choices=("inductor", "eager", "aot_eager"), help="torch.compile backend (default: inductor; dry run: eager)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's; dry run: 1)")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. what else ran on the machine)")
    p.add_argument("--no-ceilings", action="store_true", help="skip the matmul / copy ceilings")
    return p


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Profile]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    profile = PROFILES["dry-run" if args.dry_run else "quick" if args.quick else "full"]
    args.models = registry.parse_list(args.models, list(MODELS), "model")
    args.variants = registry.parse_list(args.variants, list(VARIANTS), "variant") or list(VARIANTS)
    args.modes = registry.parse_list(args.modes, MODES, "mode")
    args.dtypes = registry.parse_list(args.dtypes, list(registry.DTYPES), "dtype")
    args.batches = args.batches or profile.batches
    args.variant_batches = dict(profile.variant_batches)
    if args.max_autotune_batches:
        args.variant_batches["compile-max-autotune"] = args.max_autotune_batches
    if args.budget_s is None:
        args.budget_s = profile.budget_s
    elif args.budget_s <= 0:
        args.budget_s = None
    return args, profile


def main(argv: list[str] | None = None) -> int:
    try:
        args, profile = parse_args(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device (torch.cuda.is_available() is False); use --dry-run or --device cpu", file=sys.stderr)
        return 2
    threads = args.threads or (1 if args.dry_run else None)
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        Runner(args, profile, device).run()
    finally:
        torch.set_num_threads(previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
