"""The measured per-op choice of `auto` between triton and cuda: cache, rules, and dispatch.

Runs on the CPU: the device is a torch.device("cuda") object that is never touched, availability
is faked per backend, and a fake timer replaces CUDA events.
"""

import json
import warnings

import pytest
import torch

import glam_fast
from glam_fast import backend_tuning, dispatch

OP = "tuning_test_op"
GPU = torch.device("cuda")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache file, a fake device name, and a clean in-process table."""
    path = tmp_path / "tuning.json"
    monkeypatch.setenv(backend_tuning.CACHE_ENV, str(path))
    monkeypatch.delenv(backend_tuning.TUNING_ENV, raising=False)
    monkeypatch.setattr(backend_tuning, "device_name", lambda device: "Fake GPU 80GB")
    backend_tuning.forget()
    yield path
    backend_tuning.forget()


def fake_timer(times_ms: dict[str, float], calls: list[str]):
    """A timer that reports a fixed time per backend; runners are tagged with their backend."""

    def timer(run):
        calls.append(run.backend)
        return times_ms[run.backend]

    return timer


def runner_for(ran: list[str]):
    def runner(name: str):
        def run():
            ran.append(name)

        run.backend = name
        return run

    return runner


@pytest.fixture
def available(monkeypatch):
    """Pretend exactly the given fused backends implement OP on the (fake) GPU."""
    present: set[str] = set()
    real = dispatch._missing_for_op

    def missing(op, name, device):
        if op != OP:
            return real(op, name, device)
        return "" if name == "torch" or name in present else f"{name} not available (test)"

    monkeypatch.setattr(dispatch, "_missing_for_op", missing)
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    return present


def use_timer(monkeypatch, times_ms):
    calls: list[str] = []
    monkeypatch.setattr(backend_tuning, "cuda_event_timer", fake_timer(times_ms, calls))
    return calls


def test_cache_path_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(backend_tuning.CACHE_ENV, str(tmp_path / "x.json"))
    assert backend_tuning.cache_path() == tmp_path / "x.json"
    monkeypatch.delenv(backend_tuning.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert backend_tuning.cache_path() == tmp_path / "xdg" / "glam_fast" / "backend_tuning.json"


def test_shape_bucket_rounds_the_batch_up_to_a_power_of_two():
    def bucket(b):
        return backend_tuning.shape_bucket(torch.empty(b, 52, 57, 16, dtype=torch.float16), pool=True)

    assert bucket(1) == "float16[1x52x57x16] pool=True"
    assert bucket(3) == bucket(4) == "float16[4x52x57x16] pool=True"
    assert bucket(5) == bucket(8) != bucket(9)
    assert backend_tuning.shape_bucket(torch.empty(3, 5)) != backend_tuning.shape_bucket(torch.empty(3, 5, dtype=torch.bfloat16))


def test_measure_picks_the_fastest_and_persists_it(cache):
    calls = []
    runs = {name: runner_for([])(name) for name in ("cuda", "triton")}
    choice = backend_tuning.measure(OP, "Fake GPU 80GB", "b1", runs, timer=fake_timer({"cuda": 0.5, "triton": 0.7}, calls))
    assert choice == "cuda" and sorted(calls) == ["cuda", "triton"]
    saved = json.loads(cache.read_text())
    (key, entry), = saved["entries"].items()  # fmt: skip
    assert "Fake GPU 80GB" in key and OP in key and "b1" in key and glam_fast.__version__ in key
    assert entry["choice"] == "cuda" and entry["median_ms"] == {"cuda": 0.5, "triton": 0.7}
    backend_tuning.forget()  # as a new process would: read back from the file
    assert backend_tuning.recorded_choice(OP, "Fake GPU 80GB", "b1", ("cuda", "triton")) == "cuda"
    assert backend_tuning.recorded_choice(OP, "Other GPU", "b1", ("cuda", "triton")) is None
    assert backend_tuning.recorded_choice(OP, "Fake GPU 80GB", "b2", ("cuda", "triton")) is None
    # A measurement between other candidates does not answer this question.
    assert backend_tuning.recorded_choice(OP, "Fake GPU 80GB", "b1", ("cuda", "torch")) is None


def test_measurements_of_other_processes_are_merged_not_overwritten(cache):
    timer = fake_timer({"cuda": 1.0, "triton": 2.0}, [])
    runs = {name: runner_for([])(name) for name in ("cuda", "triton")}
    backend_tuning.measure(OP, "Fake GPU 80GB", "b1", runs, timer=timer)
    backend_tuning.forget()
    backend_tuning.measure(OP, "Fake GPU 80GB", "b2", runs, timer=timer)
    assert len(json.loads(cache.read_text())["entries"]) == 2


def test_unreadable_cache_is_ignored_with_a_warning(cache):
    cache.write_text("{not json")
    with pytest.warns(UserWarning, match="ignoring unreadable backend tuning cache"):
        assert backend_tuning.recorded(OP, "Fake GPU 80GB", "b1") is None
    backend_tuning.forget()
    cache.write_text(json.dumps({"format": 999, "entries": {}}))
    with pytest.warns(UserWarning, match="unknown format"):
        assert backend_tuning.recorded(OP, "Fake GPU 80GB", "b1") is None


def test_auto_never_picks_cuda_without_a_measurement(cache, available, monkeypatch):
    available |= {"triton", "cuda"}
    calls = use_timer(monkeypatch, {"cuda": 0.1, "triton": 1.0})
    assert dispatch.resolve(OP, GPU) == "triton"  # no shape bucket: nothing to look up
    assert dispatch.resolve(OP, GPU, bucket="b") == "triton"  # no runner: nothing to measure with
    assert calls == [] and not cache.exists()


def test_auto_measures_on_first_use_then_reuses_the_measurement(cache, available, monkeypatch):
    available |= {"triton", "cuda"}
    calls = use_timer(monkeypatch, {"cuda": 0.1, "triton": 1.0})
    ran: list[str] = []
    assert dispatch.resolve(OP, GPU, bucket="b", runner=runner_for(ran)) == "cuda"
    assert sorted(calls) == ["cuda", "triton"]
    assert dispatch.resolve(OP, GPU, bucket="b") == "cuda"  # recorded: no runner needed
    assert dispatch.resolve(OP, GPU, bucket="b", runner=runner_for(ran)) == "cuda"
    assert len(calls) == 2  # measured once
    assert dispatch.resolve(OP, GPU, bucket="other", runner=runner_for(ran)) == "cuda"
    assert len(calls) == 4  # a new shape bucket is measured on its own


def test_auto_keeps_triton_where_it_was_measured_faster(cache, available, monkeypatch):
    available |= {"triton", "cuda"}
    use_timer(monkeypatch, {"cuda": 2.0, "triton": 1.0})
    assert dispatch.resolve(OP, GPU, bucket="b", runner=runner_for([])) == "triton"


def test_auto_with_tuning_disabled_uses_only_recorded_measurements(cache, available, monkeypatch):
    available |= {"triton", "cuda"}
    calls = use_timer(monkeypatch, {"cuda": 0.1, "triton": 1.0})
    monkeypatch.setenv(backend_tuning.TUNING_ENV, "0")
    assert dispatch.resolve(OP, GPU, bucket="b", runner=runner_for([])) == "triton"
    assert calls == []
    backend_tuning.measure(OP, "Fake GPU 80GB", "b", {n: runner_for([])(n) for n in ("cuda", "triton")},
                           timer=fake_timer({"cuda": 0.1, "triton": 1.0}, []))  # fmt: skip
    assert dispatch.resolve(OP, GPU, bucket="b") == "cuda"


def test_auto_without_triton_measures_cuda_against_the_reference(cache, available, monkeypatch):
    available |= {"cuda"}
    calls = use_timer(monkeypatch, {"cuda": 3.0, "torch": 1.0})
    assert dispatch.resolve(OP, GPU, bucket="b") == "torch"  # not measured: not cuda
    assert dispatch.resolve(OP, GPU, bucket="b", runner=runner_for([])) == "torch"
    assert sorted(calls) == ["cuda", "torch"]


def test_auto_with_only_triton_needs_no_measurement(cache, available, monkeypatch):
    available |= {"triton"}
    calls = use_timer(monkeypatch, {})
    assert dispatch.resolve(OP, GPU, bucket="b", runner=runner_for([])) == "triton"
    assert calls == []


def test_auto_is_measured_per_device_model(cache, available, monkeypatch):
    available |= {"triton", "cuda"}
    backend_tuning.measure(OP, "Fake GPU 80GB", "b", {n: runner_for([])(n) for n in ("cuda", "triton")},
                           timer=fake_timer({"cuda": 0.1, "triton": 1.0}, []))  # fmt: skip
    monkeypatch.setattr(backend_tuning, "device_name", lambda device: "Another GPU")
    assert dispatch.resolve(OP, GPU, bucket="b") == "triton"


def test_explicit_backends_ignore_measurements(cache, available, monkeypatch):
    available |= {"triton", "cuda"}
    backend_tuning.measure(OP, "Fake GPU 80GB", "b", {n: runner_for([])(n) for n in ("cuda", "triton")},
                           timer=fake_timer({"cuda": 0.1, "triton": 1.0}, []))  # fmt: skip
    with glam_fast.backend("triton"):
        assert dispatch.resolve(OP, GPU, bucket="b") == "triton"
    with glam_fast.backend("torch"):
        assert dispatch.resolve(OP, GPU, bucket="b") == "torch"


def test_no_measurement_while_tracing(cache, available, monkeypatch):
    available |= {"triton", "cuda"}
    calls = use_timer(monkeypatch, {"cuda": 0.1, "triton": 1.0})
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.resolve(OP, GPU, bucket="b", runner=runner_for([])) == "triton"
    assert calls == []


def test_op_runner_runs_the_registered_implementations(cache, available, monkeypatch):
    available |= {"triton", "cuda"}
    seen = []
    dispatch.register(OP, "cuda")(lambda x, scale=1: seen.append(("cuda", x, scale)))
    dispatch.register(OP, "triton")(lambda x, scale=1: seen.append(("triton", x, scale)))
    try:
        runner = backend_tuning.op_runner(OP, lambda x, scale=1: seen.append(("torch", x, scale)), 5, scale=2)
        for name in ("cuda", "triton", "torch"):
            runner(name)()
        assert seen == [("cuda", 5, 2), ("triton", 5, 2), ("torch", 5, 2)]
        monkeypatch.setattr(backend_tuning, "cuda_event_timer", lambda run: run() or 1.0)
        dispatch.resolve(OP, GPU, bucket="b", runner=runner)
        assert len(seen) == 5  # measured: each candidate ran once under the (fake) timer
    finally:
        dispatch._implementations.pop((OP, "cuda"))
        dispatch._implementations.pop((OP, "triton"))
