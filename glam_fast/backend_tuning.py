"""The measured choice between fused backends that ``auto`` makes per op, device and shape.

``auto`` picks the CUDA C++ kernel of an op only where it was *measured* faster on this device
model and shape bucket than the alternative (Triton, or the PyTorch reference when Triton is not
available). With no measurement, ``auto`` does not pick ``cuda``.

Measurements are made on first use: when an op that has a ``cuda`` implementation is dispatched
under ``auto`` with its arguments at hand, each candidate runs a few times on the real inputs
(CUDA events, median), the fastest wins, and the result is written to a JSON cache keyed by
device name, op, shape bucket and glam_fast version, so later processes reuse it.

Environment:
  GLAM_FAST_TUNING_CACHE  path of the JSON cache file (default: $XDG_CACHE_HOME/glam_fast/
                          backend_tuning.json, i.e. ~/.cache/glam_fast/backend_tuning.json)
  GLAM_FAST_TUNING=0      never measure; ``auto`` then uses recorded measurements only
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from glam_fast._version import __version__

CACHE_ENV = "GLAM_FAST_TUNING_CACHE"
TUNING_ENV = "GLAM_FAST_TUNING"
FORMAT_VERSION = 1

Timer = Callable[[Callable[[], object]], float]

_lock = threading.Lock()
_tables: dict[Path, dict[str, dict]] = {}  # cache file -> its entries, loaded once per process


def cache_path() -> Path:
    """The JSON file that holds the measurements."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "glam_fast" / "backend_tuning.json"


def tuning_enabled() -> bool:
    """False when GLAM_FAST_TUNING=0 (measurements are then only read, never made)."""
    return os.environ.get(TUNING_ENV, "1").strip() != "0"


def device_name(device: torch.device) -> str:
    """The device model the measurements belong to, e.g. 'NVIDIA H100 80GB HBM3'."""
    return torch.cuda.get_device_name(device)


def shape_bucket(*tensors: torch.Tensor, **options: object) -> str:
    """A key for the shapes an op runs on: dtypes and sizes, with the leading (batch) size of
    each tensor rounded up to a power of two so that nearby batch sizes share one measurement.
    ``options`` (e.g. pool=True) are appended as they are."""
    parts = []
    for t in tensors:
        sizes = list(t.shape)
        if sizes:
            sizes[0] = 1 << max(0, int(sizes[0]) - 1).bit_length()
        parts.append(f"{str(t.dtype).removeprefix('torch.')}[{'x'.join(map(str, sizes))}]")
    parts += [f"{k}={v}" for k, v in sorted(options.items())]
    return " ".join(parts)


def entry_key(op: str, device: str, bucket: str) -> str:
    return f"{device} | {op} | {bucket} | glam_fast {__version__}"


def _read(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        warnings.warn(f"glam_fast: ignoring unreadable backend tuning cache {path} ({err})", stacklevel=3)
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION or not isinstance(data.get("entries"), dict):
        warnings.warn(f"glam_fast: ignoring backend tuning cache {path} in an unknown format", stacklevel=3)
        return {}
    return data["entries"]


def _table(path: Path) -> dict[str, dict]:
    if path not in _tables:
        _tables[path] = _read(path)
    return _tables[path]


def _write(path: Path, key: str, entry: dict) -> None:
    """Merge one entry into the file (re-read first: other processes may have added entries)."""
    entries = _read(path)
    entries[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
            json.dump({"format": FORMAT_VERSION, "entries": entries}, f, indent=1, sort_keys=True)
        os.replace(f.name, path)
    except OSError as err:
        warnings.warn(f"glam_fast: could not save the backend tuning cache {path} ({err}); "
                      f"the measurement is kept for this process only", stacklevel=3)  # fmt: skip


def recorded(op: str, device: str, bucket: str) -> dict | None:
    """The measurement recorded for (op, device, bucket), or None."""
    with _lock:
        return _table(cache_path()).get(entry_key(op, device, bucket))


def recorded_choice(op: str, device: str, bucket: str, candidates: tuple[str, ...]) -> str | None:
    """The measured winner among exactly ``candidates`` (a measurement made between other
    backends, e.g. before Triton was installed, does not count)."""
    entry = recorded(op, device, bucket)
    if entry is None or sorted(entry.get("median_ms", {})) != sorted(candidates):
        return None
    return entry["choice"] if entry.get("choice") in candidates else None


def cuda_event_timer(fn: Callable[[], object], warmup: int = 3, repeats: int = 15) -> float:
    """Median milliseconds of ``fn()`` on the current CUDA stream (after warm-up runs)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def can_measure_now() -> bool:
    """Measuring runs the op several times: not while torch.compile traces or a CUDA graph is
    being captured."""
    if torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def measure(op: str, device: str, bucket: str, runners: Mapping[str, Callable[[], object]], timer: Timer | None = None) -> str:
    """Time each candidate's runner, record the result, return the fastest backend's name."""
    timer = timer or cuda_event_timer
    median_ms = {name: float(timer(run)) for name, run in runners.items()}
    choice = min(median_ms, key=median_ms.__getitem__)
    entry = {
        "choice": choice,
        "median_ms": median_ms,
        "torch": torch.__version__,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    key = entry_key(op, device, bucket)
    path = cache_path()
    with _lock:
        _table(path)[key] = entry
        _write(path, key, entry)
    return choice


def op_runner(op: str, reference: Callable, *args, **kwargs) -> Callable[[str], Callable[[], object]]:
    """The ``runner`` for :func:`glam_fast.dispatch.resolve`: runs ``op`` on these arguments with a
    given backend ("torch" runs ``reference``, the plain-PyTorch function of the same signature).

    Usage: ``backend = dispatch.resolve(op, x.device, shape_bucket(x), op_runner(op, op_ref, x, w))``.
    """
    from glam_fast import dispatch

    def runner(name: str) -> Callable[[], object]:
        fn = reference if name == "torch" else dispatch.implementation(op, name)
        return lambda: fn(*args, **kwargs)

    return runner


def forget() -> None:
    """Drop what this process has read from cache files (they are read again when next needed)."""
    with _lock:
        _tables.clear()
