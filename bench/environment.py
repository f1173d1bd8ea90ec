"""Where a result came from: device, versions, commit; result file names and writing."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

import glam_fast

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
SCHEMA = "glam_fast.bench/1"
COMMIT_ENV = "GLAM_FAST_BENCH_COMMIT"  # for copied trees (no .git, or a stale one)


def slug(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (letters, digits and '-' only)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def device_slug(device: torch.device) -> str:
    """Names one kind of machine in file names and tables: the GPU's name, or the CPU's with the
    thread count (CPU throughput depends on it)."""
    if device.type == "cuda":
        return slug(device_name(device))
    return f"cpu-{slug(cpu_name())}-{torch.get_num_threads()}t"


def git_commit() -> tuple[str, bool | None]:
    """(short commit, dirty) of the checkout. ``$GLAM_FAST_BENCH_COMMIT``, when set, wins (a copied
    tree's .git may be stale): (its value, None); without either: ('unknown', None)."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV][:10], None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            status = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=10
            )
            return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "unknown", None


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def environment(device: torch.device) -> dict:
    """Everything a reader needs to know where a number comes from."""
    commit, dirty = git_commit()
    env = {
        "device": device.type,
        "device_name": device_name(device),
        "device_slug": device_slug(device),
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda,
        "glam_fast": glam_fast.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "backend_status": glam_fast.dispatch.backend_status(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            {
                "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "cudnn": torch.backends.cudnn.version(),
                "cudnn_benchmark": torch.backends.cudnn.benchmark,
                "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            }
        )
    return env


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def result_filename(prefix: str, env: dict, when: _dt.datetime) -> str:
    """``<prefix><device-slug>-<YYYYmmdd-HHMMSS>-<commit>.json`` (letters, digits, '.', '_', '-')."""
    commit = slug(env["git_commit"]) + ("-dirty" if env.get("git_dirty") else "")
    return f"{prefix}{env['device_slug']}-{when.strftime('%Y%m%d-%H%M%S')}-{commit}.json"


def write_json(path: Path, data: dict) -> None:
    """Write atomically, so a run killed mid-write leaves the previous complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
