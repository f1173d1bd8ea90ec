"""CPU suite: inference and a training step of every model, per variant, dtype and batch size.

    python -m pytest bench/bench_models.py                 # full: batches 1, 32, 256
    python -m pytest bench/bench_models.py --bench-quick   # quick: batches 1, 8, smaller MS-SENet

Each case runs the same random inputs for every variant (rotating among 3 batches), after a
warm-up call that keeps compilation out of the numbers. Variants that cannot run here (a backend
without an implementation, Triton without a GPU) and sizes this machine cannot hold are skipped
with the reason recorded in the result file.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import pytest
import torch

from bench import registry
from bench.conftest import RUN_INFO, is_quick
from bench.registry import MODELS, MODES, VARIANTS

GiB = 2**30


@dataclass(frozen=True)
class Suite:
    size: str
    batches: tuple[int, ...]
    max_cost: int  # variant cost classes included (1: torch.compile default)
    target_s: float  # time one case for about this long
    min_rounds: int
    max_rounds: int


FULL = Suite(size="full", batches=(1, 32, 256), max_cost=1, target_s=2.0, min_rounds=5, max_rounds=200)
QUICK = Suite(size="quick", batches=(1, 8), max_cost=0, target_s=0.3, min_rounds=3, max_rounds=30)
INPUT_BATCHES = 3
MEMORY_FRACTION = 0.4  # skip a case whose activations would need more of the available memory (shared machines)


@dataclass(frozen=True)
class Case:
    model: str
    mode: str
    variant: str
    dtype: str
    batch: int

    @property
    def id(self) -> str:
        return f"{self.model}-{self.mode}-{self.variant}-{self.dtype}-b{self.batch}"


def _suite(config: pytest.Config) -> Suite:
    return QUICK if is_quick(config) else FULL


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    suite = _suite(config)
    models = registry.parse_list(config.getoption("bench_models"), list(MODELS), "model") or list(MODELS)
    default_variants = [v.name for v in VARIANTS.values() if v.cpu_suite and v.cost <= suite.max_cost]
    variants = registry.parse_list(config.getoption("bench_variants"), list(VARIANTS), "variant") or default_variants
    # Grouped by (model, mode, variant, dtype) so one built (and compiled) model serves all batch sizes.
    cases = [
        Case(model, mode, variant, dtype, batch)
        for model in models
        for mode in MODES
        for variant in variants
        for dtype in VARIANTS[variant].dtypes or registry.DTYPES
        for batch in suite.batches
    ]
    metafunc.parametrize("case", cases, ids=[c.id for c in cases])


def _available_memory() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class SuiteState:
    """Reference models, their FLOPs, and the step of the current (model, mode, variant, dtype)."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.suite = _suite(config)
        self.run_info = config.stash[RUN_INFO]
        self.references: dict[str, torch.nn.Module] = {}
        self.flops: dict[str, dict[str, float]] = {}
        self.memory: dict[tuple[str, str], float] = {}
        self.available_memory = _available_memory()  # read once: the same limit for every case
        self.current: tuple | None = None
        self.step = None

    def reference(self, name: str) -> torch.nn.Module:
        if name not in self.references:
            spec = MODELS[name]
            self.references[name] = spec.build()
            self.flops[name] = registry.count_flops(spec, self.suite.size, self.references[name])
            self.run_info["models"][name] = {
                "title": spec.title,
                "item_shape": list(spec.item_shape(self.suite.size)),
                "input_note": spec.input_note,
                "parameters": sum(p.numel() for p in self.references[name].parameters()),
                "flops_per_item": self.flops[name],
            }
        return self.references[name]

    def memory_needed(self, case: Case) -> float:
        key = (case.model, case.mode)
        if key not in self.memory:
            self.memory[key] = registry.memory_per_item(MODELS[case.model], self.suite.size, case.mode, self.reference(case.model))
        return self.memory[key] * case.batch

    def skip(self, case: Case, reason: str, status: str = "skipped") -> None:
        """Skip with the reason recorded; status 'unavailable' when the variant cannot run here at all."""
        self.run_info["skipped"].append({**asdict(case), "status": status, "reason": reason})
        pytest.skip(reason)

    def step_for(self, case: Case):
        key = (case.model, case.mode, case.variant, case.dtype)
        if key != self.current:
            self.release()
            spec = MODELS[case.model]
            self.step = registry.build_step(spec, VARIANTS[case.variant], case.mode, case.dtype, "cpu", self.reference(case.model))
            self.current = key
        return self.step

    def release(self) -> None:
        if self.current is not None and VARIANTS[self.current[2]].compile_mode is not None:
            torch._dynamo.reset()
        self.step, self.current = None, None


@pytest.fixture(scope="session")
def state(request):
    suite_state = SuiteState(request.config)
    yield suite_state
    suite_state.release()


def test_model_step(case: Case, benchmark, state: SuiteState):
    spec, variant = MODELS[case.model], VARIANTS[case.variant]
    reason = variant.unavailable(spec, "cpu", case.mode)
    if reason:
        state.skip(case, reason, "unavailable")
    if variant.backend == "triton":  # on the CPU only under TRITON_INTERPRET=1
        state.skip(case, "TRITON_INTERPRET=1: interpreted Triton kernels are a correctness check, not something to time", "unavailable")
    needed, available = state.memory_needed(case), state.available_memory
    if available is not None and needed > MEMORY_FRACTION * available:
        state.skip(case, f"needs ~{needed / GiB:.1f} GiB of activations, more than {MEMORY_FRACTION:.0%} of the {available / GiB:.1f} GiB available")

    step = state.step_for(case)
    call = registry.rotating(step, registry.make_batches(spec, state.suite.size, case.batch, "cpu", INPUT_BATCHES))
    start = time.perf_counter()
    call()  # warm-up: first call (and compilation)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    call()
    estimate = time.perf_counter() - start
    suite = state.suite
    min_rounds = 3 if estimate > 0.5 else suite.min_rounds
    rounds = min(suite.max_rounds, max(min_rounds, math.ceil(suite.target_s / max(estimate, 1e-6))))

    benchmark.group = f"{case.model} {case.mode} batch {case.batch}"
    benchmark.extra_info.update(
        {
            **asdict(case),
            "peer": variant.peer,
            "backend": variant.backend,
            "compile_mode": variant.compile_mode,
            "item_shape": list(spec.item_shape(suite.size)),
            "flops_per_item": state.flops[case.model][case.mode],
            "warmup_s": warmup_s,
            "threads": torch.get_num_threads(),
        }
    )
    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)
