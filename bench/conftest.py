"""pytest configuration of the CPU benchmark suites in bench/ (outside the project's test path).

    python -m pytest bench/bench_models.py [--bench-quick] [--bench-note TEXT] [--bench-threads N]

Collects ``bench_*.py`` files in this folder, and writes pytest-benchmark's JSON (all timings)
to ``bench/results/cpu-<suite>-<cpu>-<threads>t-<date>-<commit>.json`` unless
``--benchmark-json`` names a file, with a ``glam_fast`` section added: versions, commit, thread
count, quick or full, the note, the models' FLOPs per item, and every skipped case with its reason
(pytest-benchmark's own JSON leaves skipped tests out).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bench.environment import RESULTS_DIR, SCHEMA, environment, result_filename, utc_now

BENCH_DIR = Path(__file__).resolve().parent
QUICK_ENV = "GLAM_FAST_BENCH_QUICK"
# {"environment": ..., "models": {name: FLOPs per item, item shape, ...}, "skipped": [case + reason]},
# filled by the suites and written into the result file.
RUN_INFO = pytest.StashKey[dict]()


def pytest_addoption(parser):
    group = parser.getgroup("glam_fast bench")
    group.addoption("--bench-quick", action="store_true", help=f"small sizes and few rounds (also {QUICK_ENV}=1)")
    group.addoption("--bench-results", default=str(RESULTS_DIR), help="folder for the result JSON (default bench/results)")
    group.addoption("--bench-note", default="", help="free text stored with the results (e.g. 'shared machine')")
    group.addoption("--bench-threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    group.addoption("--bench-models", default=None, help="comma-separated model names (default: all)")
    group.addoption("--bench-variants", default=None, help="comma-separated variant names (default: the CPU suite's)")


def is_quick(config: pytest.Config) -> bool:
    return bool(config.getoption("bench_quick")) or os.environ.get(QUICK_ENV) == "1"


def pytest_collect_file(file_path: Path, parent):
    """Benchmark files are named bench_*.py so that no test run collects them by accident."""
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and file_path.parent == BENCH_DIR
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


class _JsonOnWrite:
    """A --benchmark-json target that creates its file only when pytest-benchmark writes it.
    pytest-benchmark < 5.3 enters it as an open file; 5.3+ opens it as a path."""

    def __init__(self, path: Path):
        self.path = path
        self._file = None

    def __fspath__(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return str(self.path)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")
        return self._file

    def __exit__(self, *exc_info):
        self._file.close()

    def __str__(self) -> str:
        return str(self.path)


def _suite_label(config: pytest.Config) -> str:
    """'models' for bench_models.py, 'features-models' for both, ... from the command's paths."""
    stems = set()
    for arg in config.args:
        path = Path(str(arg).split("::")[0])
        path = path if path.is_absolute() else Path(config.invocation_params.dir) / path
        files = sorted(path.glob("bench_*.py")) if path.is_dir() else [path]
        stems.update(f.stem[len("bench_"):] for f in files if f.name.startswith("bench_"))
    return "-".join(sorted(stems)) or "bench"


def pytest_configure(config: pytest.Config) -> None:
    threads = config.getoption("bench_threads")
    if threads:
        torch.set_num_threads(threads)
    # Read once, at the start: the commit (and its clean state) the numbers were measured at.
    env = environment(torch.device("cpu"))
    config.stash[RUN_INFO] = {"environment": env, "models": {}, "skipped": []}
    if getattr(config.option, "benchmark_json", None) is None and not getattr(config.option, "benchmark_disable", False):
        cpu = env["device_slug"].removeprefix("cpu-")
        name = result_filename(f"cpu-{_suite_label(config)}-{'quick-' if is_quick(config) else ''}", {**env, "device_slug": cpu}, utc_now())
        config.option.benchmark_json = _JsonOnWrite(Path(config.getoption("bench_results")) / name)


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    output_json["glam_fast"] = {
        "schema": SCHEMA,
        "kind": "cpu-suite",
        "profile": "quick" if is_quick(config) else "full",
        "note": config.getoption("bench_note"),
        "command": "python -m pytest " + " ".join(config.invocation_params.args),
        **config.stash[RUN_INFO],
    }
