"""The benchmark harness (bench/): the GPU runner end to end in dry-run mode on the CPU, its JSON
schema, out-of-memory and error handling, pickup of a newly registered fused backend, the CPU
suite's collection and result file, and the report. Timings themselves are never asserted."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu, registry, report, summary
from bench.registry import Variant
from glam_fast import dispatch
from tests.helpers import child_env

ROOT = Path(__file__).resolve().parents[1]

RUN_KEYS = {"schema", "kind", "created", "command", "profile", "note", "environment", "settings", "ceilings", "models", "variants", "notes", "measurements"}
ENV_KEYS = {"device", "device_name", "device_slug", "torch", "triton", "cuda", "git_commit", "git_dirty", "python", "cpu_threads"}
OK_KEYS = {"median_ms", "p20_ms", "p80_ms", "run_medians_ms", "spread_pct", "items_per_s", "tflops", "pct_of_bf16_peak", "samples", "warmup_s"}


def _env_without_interpreter() -> dict:
    return child_env("TRITON_INTERPRET")


def _load_single_json(folder: Path) -> dict:
    files = list(folder.glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[dict, str]:
    """`python -m bench.gpu --dry-run` on the CPU, all three models, both modes (a few seconds)."""
    out = tmp_path_factory.mktemp("dry_run")
    cmd = [sys.executable, "-m", "bench.gpu", "--dry-run", "--out", str(out), "--dtypes", "bf16", "--batches", "2", "--variants", "eager,triton,cuda"]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=_env_without_interpreter(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _load_single_json(out), proc.stdout


def test_dry_run_writes_every_measurement_with_the_schema(dry_run):
    result, stdout = dry_run
    assert RUN_KEYS <= set(result)
    assert result["schema"] == "glam_fast.bench/1" and result["profile"] == "dry-run"
    assert ENV_KEYS <= set(result["environment"])
    assert result["environment"]["device"] == "cpu"
    assert result["ceilings"]["bf16_matmul_tflops"] > 0 and result["ceilings"]["copy_gb_per_s"] > 0
    assert set(result["models"]) == {"glam", "mssenet", "afcn"}
    # GLAM's forward FLOPs per item as PERFORMANCE.md gives them (365.4 MFLOP), training ~3x.
    glam_flops = result["models"]["glam"]["flops_per_item"]
    assert glam_flops["inference"] == pytest.approx(365.35e6, rel=1e-3)
    assert 2.5 < glam_flops["train"] / glam_flops["inference"] < 3.5

    ms = result["measurements"]
    assert {(m["model"], m["mode"], m["variant"], m["batch"]) for m in ms} == {
        (model, mode, variant, batch)
        for model in ("glam", "mssenet", "afcn")
        for mode in ("inference", "train")
        for variant in ("eager", "triton", "cuda")
        for batch in (2,)
    }
    for m in ms:
        assert m["dtype"] == "bf16"
        if m["variant"] == "eager":
            assert m["status"] == "ok" and m["peer"] is True, m
            assert OK_KEYS <= set(m)
            assert 0 < m["p20_ms"] <= m["median_ms"] <= m["p80_ms"]
            assert len(m["run_medians_ms"]) == 2  # timed twice
            assert m["items_per_s"] == pytest.approx(m["batch"] / (m["median_ms"] * 1e-3))
            flops = result["models"][m["model"]]["flops_per_item"][m["mode"]]
            assert m["tflops"] == pytest.approx(flops * m["batch"] / (m["median_ms"] * 1e-3) / 1e12)
        else:  # no fused backend can run on the CPU without the interpreter: recorded, not run
            assert m["status"] == "unavailable" and m["peer"] is False
            if m["variant"] == "cuda" and m["mode"] == "train":
                assert "inference only" in m["reason"], m
            else:
                assert f"backend '{m['variant']}' cannot run '{m['model']}'" in m["reason"]
    lines = stdout.splitlines()
    header = max(i for i, line in enumerate(lines) if "best glam_fast" in line)
    assert len(lines[header + 1 :]) == 3 * 2  # the closing table: one row per model and mode


def _fail_at(batch_from: int, error: Exception):
    def build(model, options):
        def forward(x, *rest):
            if x.shape[0] >= batch_from:
                raise error
            return model.forward_reference(x, *rest)

        return forward

    return build


def test_out_of_memory_and_errors_are_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
    monkeypatch.setitem(registry.VARIANTS, "test-oom", Variant("test-oom", "raises OOM from batch 2", peer=False, build=_fail_at(2, oom)))
    broken = ValueError("a kernel that cannot handle this shape")
    monkeypatch.setitem(registry.VARIANTS, "test-error", Variant("test-error", "always raises", peer=False, build=_fail_at(1, broken)))
    argv = ["--dry-run", "--out", str(tmp_path), "--models", "mssenet", "--modes", "inference", "--dtypes", "fp32"]
    argv += ["--batches", "1,2,4", "--variants", "test-oom,test-error,eager", "--no-ceilings"]
    assert gpu.main(argv) == 0
    got = {(m["variant"], m["batch"]): m for m in _load_single_json(tmp_path)["measurements"]}
    assert got[("test-oom", 1)]["status"] == "ok"
    assert got[("test-oom", 2)]["status"] == "oom" and "out of memory" in got[("test-oom", 2)]["reason"]
    assert got[("test-oom", 4)] == {**got[("test-oom", 4)], "status": "oom", "reason": "not run: out of memory at batch 2"}
    for batch in (1, 2, 4):
        assert got[("test-error", batch)]["status"] == "error"
        assert "ValueError: a kernel that cannot handle this shape" in got[("test-error", batch)]["reason"]
        assert got[("eager", batch)]["status"] == "ok"


def test_after_a_sticky_cuda_error_the_remaining_variants_are_skipped(tmp_path, monkeypatch):
    """An illegal address in a fused kernel poisons the CUDA context: later variants are recorded
    as not run (with the cause) instead of each failing with a misleading error."""
    broken = RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setitem(registry.VARIANTS, "test-crash", Variant("test-crash", "crashes", peer=False, build=_fail_at(1, broken)))
    monkeypatch.setitem(registry.VARIANTS, "test-after", Variant("test-after", "never reached", peer=False))
    monkeypatch.setattr(gpu.Runner, "device_usable", lambda self: False)
    argv = ["--dry-run", "--out", str(tmp_path), "--models", "mssenet", "--modes", "inference", "--dtypes", "fp32"]
    argv += ["--batches", "1", "--variants", "eager,test-crash,test-after", "--no-ceilings"]
    assert gpu.main(argv) == 0
    result = _load_single_json(tmp_path)
    got = {m["variant"]: m for m in result["measurements"]}
    assert got["eager"]["status"] == "ok"  # peers run before fused variants
    assert got["test-crash"]["status"] == "error"
    assert got["test-after"]["status"] == "skipped" and "CUDA context was lost" in got["test-after"]["reason"]
    assert any("CUDA context lost" in note for note in result["notes"])


def test_out_of_memory_is_recognised_when_wrapped():
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        except torch.OutOfMemoryError as inner:
            raise RuntimeError("autotuning failed") from inner
    except RuntimeError as outer:
        assert gpu.is_out_of_memory(outer)
    assert not gpu.is_out_of_memory(RuntimeError("shape mismatch"))


def test_a_registered_fused_backend_is_measured_without_harness_changes(tmp_path, monkeypatch):
    """What happens when a Triton model lands: dispatch resolves it, the runner measures it as a
    non-peer variant, and it is really the registered implementation that runs."""
    calls = []

    def fake_triton_mssenet(model, x):
        calls.append(tuple(x.shape))
        return model.forward_reference(x)

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    dispatch._load_fused_ops()
    monkeypatch.setitem(dispatch._implementations, ("mssenet", "triton"), fake_triton_mssenet)
    argv = ["--dry-run", "--out", str(tmp_path), "--models", "mssenet", "--dtypes", "fp32", "--batches", "1", "--variants", "eager,triton", "--no-ceilings"]
    assert gpu.main(argv) == 0
    result = _load_single_json(tmp_path)
    triton = [m for m in result["measurements"] if m["variant"] == "triton"]
    assert {m["mode"] for m in triton} == {"inference", "train"}
    assert all(m["status"] == "ok" and m["peer"] is False and m["backend"] == "triton" for m in triton)
    assert calls and set(calls) == {(1, 24, 39)}
    rows = summary.comparison_lines([result])
    assert any("triton fp32" in row and "eager fp32" in row for row in rows[1:])


def test_peers_never_run_a_fused_backend(monkeypatch):
    """Even when the environment asks for a fused backend that can run, peers run the reference."""

    def fused_must_not_run(model, x):
        raise AssertionError("a peer ran the fused implementation")

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("GLAM_FAST_BACKEND", "triton")
    dispatch._load_fused_ops()
    monkeypatch.setitem(dispatch._implementations, ("mssenet", "triton"), fused_must_not_run)
    spec = registry.MODELS["mssenet"]
    batch = registry.make_batches(spec, "tiny", 1, "cpu", 1)[0]
    for mode in ("inference", "train"):
        registry.build_step(spec, registry.VARIANTS["eager"], mode, "fp32", "cpu")(batch)
    with pytest.raises(AssertionError, match="fused implementation"):  # the fake is reachable
        registry.build_step(spec, registry.VARIANTS["triton"], "inference", "fp32", "cpu")(batch)


def test_inputs_are_random_identical_across_calls_and_afcn_lengths_are_valid():
    spec = registry.MODELS["afcn"]
    first = registry.make_batches(spec, "tiny", 3, "cpu", 2)
    again = registry.make_batches(spec, "tiny", 3, "cpu", 2)
    x, lengths = first[0].args
    assert x.shape == (3, 3, 64, 80) and x.std() > 0.5
    assert not torch.equal(first[0].args[0], first[1].args[0])
    assert torch.equal(x, again[0].args[0]) and torch.equal(lengths, again[0].args[1])
    assert lengths[0] == 80 and bool(((lengths >= 40) & (lengths <= 80)).all())


def test_cpu_suite_writes_pytest_benchmark_json_with_run_info(tmp_path):
    pytest.importorskip("pytest_benchmark")
    cmd = [sys.executable, "-m", "pytest", "bench/bench_models.py", "-q", "-p", "no:cacheprovider", "--bench-quick"]
    cmd += ["--bench-results", str(tmp_path), "--bench-threads", "1", "-k", "mssenet-inference and b1 and fp32"]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=_env_without_interpreter(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "1 passed, 2 skipped" in proc.stdout  # eager ran; triton and cuda cannot run here
    files = list(tmp_path.glob("cpu-models-quick-*-1t-*.json"))
    assert len(files) == 1, list(tmp_path.iterdir())
    data = json.loads(files[0].read_text())
    (bench,) = data["benchmarks"]
    assert bench["extra_info"]["model"] == "mssenet" and bench["extra_info"]["variant"] == "eager"
    assert bench["stats"]["rounds"] >= 3 and len(bench["stats"]["data"]) == bench["stats"]["rounds"]
    info = data["glam_fast"]
    assert info["profile"] == "quick" and info["environment"]["cpu_threads"] == 1
    assert {s["variant"] for s in info["skipped"]} == {"triton", "cuda"}
    assert all(s["status"] == "unavailable" and s["reason"] for s in info["skipped"])


def _gpu_like(result: dict) -> dict:
    """The dry-run result as if it came from a GPU with a fused backend that beat the peers."""
    fake = copy.deepcopy(result)
    fake["environment"].update(device="cuda", device_name="Test GPU", device_slug="test-gpu")
    fake["ceilings"] = {"bf16_matmul_tflops": 1.0, "bf16_matmul_n": 8192, "copy_gb_per_s": 1000.0, "copy_bytes": 2**30}
    for m in fake["measurements"]:
        if m["variant"] == "triton":
            eager = next(e for e in fake["measurements"] if e["variant"] == "eager" and all(e[k] == m[k] for k in ("model", "mode", "batch")))
            m.update({k: v for k, v in eager.items() if k not in ("variant", "peer", "backend")}, status="ok")
            m["items_per_s"] = 3 * eager["items_per_s"]
            m["pct_of_bf16_peak"] = 12.5
            m.pop("reason", None)
    return fake


def _features_benchmark() -> dict:
    """A pytest-benchmark file of another suite (no model fields): shown in a table of its own."""
    stats = {"min": 0.001, "max": 0.003, "mean": 0.002, "stddev": 0.0005, "rounds": 5, "median": 0.002, "iqr": 0.001, "q1": 0.0015, "q3": 0.0025, "ops": 500.0, "data": [0.001, 0.002, 0.002, 0.0025, 0.003]}
    return {
        "machine_info": {"cpu": {"brand_raw": "Test CPU"}},
        "commit_info": {},
        "benchmarks": [{"group": "mfcc", "name": "test_mfcc[b32]", "fullname": "bench/bench_features.py::test_mfcc[b32]", "params": {}, "extra_info": {"batch": 32}, "stats": stats}],
        "datetime": "2026-01-01T00:00:00+00:00",
        "version": "5.2.3",
    }


def test_report_shows_peers_side_by_side_and_other_benchmarks(tmp_path, dry_run):
    result, _ = dry_run
    results = tmp_path / "results"
    results.mkdir()
    (results / "dryrun-cpu.json").write_text(json.dumps(result))
    (results / "gpu.json").write_text(json.dumps(_gpu_like(result)))
    (results / "cpu-features-test.json").write_text(json.dumps(_features_benchmark()))
    (results / "broken.json").write_text("{")
    readme = tmp_path / "README.md"
    assert report.main(["--results", str(results), "--out", str(readme)]) == 0
    text = readme.read_text()

    assert "GPU results: pending" not in text  # there is a (fake) GPU run
    gpu_part = text[text.index("## GPU: Test GPU") : text.index("## CPU:")]
    assert "ceilings measured in this run: bf16 matmul 8192³ 1 TFLOP/s" in gpu_part
    assert "| triton | bf16 |" in gpu_part and "(3.00×)" in gpu_part and "(1.00×)" in gpu_part
    assert "achieved TFLOP/s (% of the measured bf16 peak)" in gpu_part and "(12.5 %)" in gpu_part
    cpu_part = text[text.index("## CPU:") :]
    assert "| eager | bf16 |" in cpu_part and "| triton |" not in cpu_part.split("## Other benchmarks")[0]
    assert "- n/a: triton bf16 inference b2, " in cpu_part and "backend 'triton' cannot run 'glam' on cpu" in cpu_part
    assert "`test_mfcc[b32]` | 2.000 | 1.500–2.500 | 5 |" in text
    assert "broken.json: not readable JSON" in text
    if _has_matplotlib():
        assert (tmp_path / "plots" / "test-gpu-glam-train.png").stat().st_size > 1000
        assert "![GLAM train](plots/test-gpu-glam-train.png)" in text


def test_report_shows_scoring_throughput_and_time_split(tmp_path):
    data = _features_benchmark()
    split = [{"decode": 9.0, "decode_wait": 0.5, "features": 3.0, "model": 2.0}, {"decode": 8.25, "decode_wait": 0.25, "features": 1.75, "model": 0.5}]
    info = {"variant": "scorer-cuda-w8-b256", "device": "Test GPU", "files": 2000, "files_per_s": 307.25, "audio_seconds_per_s": 1221.5, "time_split_per_round": split}
    bench = data["benchmarks"][0]
    bench.update(name="test_scorer[8-256]", fullname="bench/bench_scoring_gpu.py::test_scorer[8-256]", extra_info=info)
    bench["stats"] = dict(bench["stats"], data=[9.5, 6.5], rounds=2)
    (tmp_path / "gpu-scoring.json").write_text(json.dumps(data))
    readme = tmp_path / "README.md"
    assert report.main(["--results", str(tmp_path), "--out", str(readme), "--no-plots"]) == 0
    # the last round's split (the first includes warm-up)
    assert "| scorer-cuda-w8-b256 | Test GPU | 2000 | 307.2 | 9.50, 6.50 | 1,222 | 8.2 | 0.2 | 1.8 | 0.5 |" in readme.read_text()


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_report_without_gpu_results_says_they_are_pending(tmp_path, dry_run):
    result, _ = dry_run
    (tmp_path / "r.json").write_text(json.dumps(result))
    readme = tmp_path / "README.md"
    report.main(["--results", str(tmp_path / "r.json"), "--out", str(readme), "--no-plots"])
    assert "GPU results: pending" in readme.read_text()


def test_paired_cpu_rounds_time_every_variant_per_round_and_reach_the_report(monkeypatch, tmp_path):
    """bench/paired_cpu.py with a small model and uncompiled peers: every variant gets one time per
    round, the reference's ratio to itself is 1, a variant whose output differs from the
    reference is refused before any timing, and bench.report shows the table."""
    from bench import bench_inference_cpu, paired_cpu
    from bench.environment import environment
    from glam_fast import GLAM, onednn
    from glam_fast.inference import prepare

    torch.manual_seed(0)
    model = GLAM((26, 57), 4).eval()

    def make_input(batch):
        return torch.randn(batch, 1, 26, 57)

    monkeypatch.setattr(bench_inference_cpu, "_models", lambda name: (model, make_input))
    monkeypatch.setitem(bench_inference_cpu.ITEMS_PER_ROUND, "glam", 2)

    def variants(name, batch):
        prepared = prepare(model)
        chosen = {"reference": model, "compiled-reference": model, "prepared": prepared}
        if onednn.available(torch.device("cpu"), torch.float32):
            chosen["prepared-convolutions-only"] = bench_inference_cpu.ConvolutionReplay(prepared, make_input(batch))
        return chosen

    monkeypatch.setattr(paired_cpu, "_variants", variants)
    case = paired_cpu.measure("glam", 1, rounds=3, target=1.5)
    assert case["items_per_round"] == 2 and case["rounds"] == 3
    assert set(case["seconds_per_round"]) == set(case["summary"]) >= {"reference", "compiled-reference", "prepared"}
    assert all(len(times) == 3 and min(times) > 0 for times in case["seconds_per_round"].values())
    assert case["summary"]["reference"]["ratio_to_eager_median"] == 1.0
    assert all(0 <= s["rounds_meeting_target"] <= 1 for s in case["summary"].values())

    result = {"schema": paired_cpu.SCHEMA, "created": "2026-01-01T00:00:00", "target": 1.5, "note": "test run", "environment": environment(torch.device("cpu")), "cases": [case]}
    (tmp_path / "cpu-inference-paired-test.json").write_text(json.dumps(result))
    readme = tmp_path / "README.md"
    assert report.main(["--results", str(tmp_path), "--out", str(readme), "--no-plots"]) == 0
    text = readme.read_text()
    assert "## CPU inference in paired rounds" in text and "| glam | 1 | prepared |" in text and "> test run" in text
    assert "cpu-inference-paired-test.json" in text.split("## All result files")[1]

    wrong = {"reference": model, "compiled-reference": model, "prepared": lambda x: torch.zeros(x.shape[0], 4)}
    monkeypatch.setattr(paired_cpu, "_variants", lambda *args: wrong)
    with pytest.raises(AssertionError, match="glam batch 1 prepared: relative error"):
        paired_cpu.measure("glam", 1, rounds=2, target=1.5)
