"""CPU inference: the inference-only forms (glam_fast.inference.prepare) vs the eager reference
and torch.compile(reference), same run, same inputs, fp32.

Run from the repository root (a C++ compiler is needed for torch.compile on the CPU):

    GLAM_FAST_BENCH_THREADS=2 python -m pytest bench/bench_inference_cpu.py \
        --benchmark-json bench/results/cpu-inference-<description>.json

Variants per model and batch size (GLAM: (B, 1, 26, 57) segments, 7 classes; MS-SENet: (B, 188, 39),
the EmoDB length; AFCN: (B, 3, 257, 201), 2 s at 16 kHz):
- ``reference``: the model's eager forward (what ``model(x)`` runs on the CPU);
- ``compiled-reference``: ``torch.compile(model)`` (inductor defaults);
- ``prepared``: ``prepare(model)`` with its defaults (what the Scorer runs on the CPU);
- GLAM and AFCN: ``prepared-plain``: ``prepare(model, onednn=False)`` (the same folding and
  layout with PyTorch's ops: what the oneDNN calls add);
- MS-SENet and AFCN: ``prepared-whole-batch`` (no micro-batches: the whole batch at once);
- GLAM and AFCN: ``prepared-convolutions-only``: only the prepared module's convolution calls
  (fused oneDNN convolution + ReLU, and AFCN's Winograd convolutions, as the ``prepared`` forward
  makes them, micro-batches included), replayed on inputs recorded in a warm-up forward. No
  implementation that runs these convolutions can take less time, so eager / this is the highest
  ratio to eager within reach of these convolution algorithms on the machine (the rest of the
  forward, e.g. pooling, counts against it);
- GLAM and AFCN: ``prepared-direct``: ``prepare(model, use_winograd=False)`` (direct oneDNN
  convolutions only, no Winograd layers);
- GLAM: ``prepared-pytorch-ops``: ``prepare(model, native=False)`` (the stem, the pooled
  concatenations and the gMLP head as PyTorch and oneDNN ops instead of native calls);
- GLAM: ``prepared-head-whole`` (the gMLP head on the whole micro-batch instead of chunks of 8);
- GLAM: ``prepared-merged`` (each multi-scale block as one 5x5 convolution C -> 2C); with
  ``GLAM_FAST_BENCH_VARIANTS=all`` also ``prepared-whole-batch`` (no micro-batches),
  ``prepared-nchw`` (no channels-last) and ``compiled-prepared`` (torch.compile of the
  plain prepared module).

Timings on a machine shared with other jobs are noisy: every variant is measured in
``REPEATS`` (default 2) interleaved passes (``r0``, ``r1``: reference, prepared, ... then again), and each test records the
load average before and after it in ``extra_info``. Compare variants within one pass and one
batch size; the spread between passes is the noise.
"""

from __future__ import annotations

import os

import pytest
import torch

from glam_fast import AFCN, GLAM, MSSENet
from glam_fast.inference import prepare
from glam_fast.onednn import ConvReLU
from glam_fast.winograd import WinogradConvReLU

THREADS = int(os.environ.get("GLAM_FAST_BENCH_THREADS", "2"))
REPEATS = int(os.environ.get("GLAM_FAST_BENCH_REPEATS", "2"))
ROUNDS = int(os.environ.get("GLAM_FAST_BENCH_ROUNDS", "5"))  # timed rounds per case (median reported)
BATCHES = {"glam": (1, 32, 256), "mssenet": (1, 32, 256), "afcn": (1, 32, 256)}
ITEMS_PER_ROUND = {"glam": 64, "mssenet": 32, "afcn": 16}  # at least this many items per round

# what every model is measured with: the two peers and prepare()'s defaults
PEERS_AND_PREPARED = {"reference": None, "compiled-reference": None, "prepared": {}}
CONVOLUTIONS_ONLY = {"prepared-convolutions-only": {}}  # prepare()'s defaults, convolution calls alone
GLAM_VARIANTS = {
    **PEERS_AND_PREPARED,
    "prepared-plain": {"onednn": False},
    "prepared-merged": {"merge_multiscale": True},
    "prepared-pytorch-ops": {"native": False},
    "prepared-direct": {"use_winograd": False},
    "prepared-head-whole": {"head_micro_batch": None},
    **CONVOLUTIONS_ONLY,
}
if os.environ.get("GLAM_FAST_BENCH_VARIANTS") == "all":  # the other choices behind prepare()'s defaults
    GLAM_VARIANTS.update(
        {
            "prepared-whole-batch": {"micro_batch": None},
            "prepared-nchw": {"channels_last": False},
            "compiled-prepared": {"onednn": False},
        }
    )
AFCN_VARIANTS = {
    **PEERS_AND_PREPARED,
    "prepared-plain": {"onednn": False},
    "prepared-whole-batch": {"micro_batch": None},
    "prepared-direct": {"use_winograd": False},
    **CONVOLUTIONS_ONLY,
}
MSSENET_VARIANTS = {**PEERS_AND_PREPARED, "prepared-whole-batch": {"micro_batch": None}}
VARIANTS = {"glam": GLAM_VARIANTS, "mssenet": MSSENET_VARIANTS, "afcn": AFCN_VARIANTS}


def _randomize_batch_norm(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return model.eval()


def _build(name):
    torch.manual_seed(0)
    if name == "glam":
        return _randomize_batch_norm(GLAM((26, 57), 7)), lambda b: torch.randn(b, 1, 26, 57)
    if name == "mssenet":
        return _randomize_batch_norm(MSSENet(7)), lambda b: torch.randn(b, 188, 39)
    return AFCN(7).eval(), lambda b: torch.randn(b, 3, 257, 201)


_cache: dict = {}


class ConvolutionReplay:
    """The convolution calls of one ``prepared(x)`` forward, recorded with their inputs (clones,
    same memory format) and replayed in the same order; calling it ignores its argument."""

    def __init__(self, prepared: torch.nn.Module, x: torch.Tensor):
        self.calls: list[tuple[ConvReLU | WinogradConvReLU, torch.Tensor]] = []

        def record(conv, args, _out):
            self.calls.append((conv, args[0].clone()))

        # A Winograd layer's own direct convolution (what it runs for small batches) is part of it.
        nested = {id(m.direct) for m in prepared.modules() if isinstance(m, WinogradConvReLU)}
        convolutions = [m for m in prepared.modules() if isinstance(m, (ConvReLU, WinogradConvReLU)) and id(m) not in nested]
        hooks = [m.register_forward_hook(record) for m in convolutions]
        try:
            with torch.inference_mode():
                prepared(x)
        finally:
            for hook in hooks:
                hook.remove()
        if not self.calls or not all(conv.onednn for conv, _ in self.calls):
            raise RuntimeError("the prepared module made no fused oneDNN or Winograd convolution calls to replay")

    def __call__(self, _x=None) -> None:
        for conv, recorded_input in self.calls:
            conv(recorded_input)


def _runner(name, variant, batch):
    """The module to time (built once per model/variant/batch: compilation stays out of the timings)."""
    key = (name, variant, batch)
    if key not in _cache:
        model, make_input = _models(name)
        variants = VARIANTS[name]
        if variant == "prepared-convolutions-only":
            torch.manual_seed(batch)
            module = ConvolutionReplay(prepare(model, **variants[variant]), make_input(batch))
        elif variant == "reference":
            module = model
        elif variant == "compiled-reference":
            module = torch.compile(model, dynamic=False)
        elif variant == "compiled-prepared":
            module = torch.compile(prepare(model, **variants[variant]), dynamic=False)
        else:
            module = prepare(model, **variants[variant])
        _cache[key] = module
    return _cache[key]


_models_cache: dict = {}


def _models(name):
    if name not in _models_cache:
        _models_cache[name] = _build(name)
    return _models_cache[name]


def _load() -> float:
    return os.getloadavg()[0]


CASES = [
    (name, batch, repeat, variant)
    for name in ("glam", "mssenet", "afcn")
    for batch in BATCHES[name]
    for repeat in range(REPEATS)
    for variant in VARIANTS[name]
]


@pytest.mark.parametrize("name, batch, repeat, variant", CASES, ids=[f"{n}-b{b}-r{r}-{v}" for n, b, r, v in CASES])
def test_inference(benchmark, name, batch, repeat, variant):
    torch.set_num_threads(THREADS)
    model, make_input = _models(name)
    x = make_input(batch)
    module = _runner(name, variant, batch)
    calls = max(1, ITEMS_PER_ROUND[name] // batch)
    with torch.inference_mode():
        reference = model.forward_reference(x)
        out = module(x)  # warm-up (and compilation, on first use)
        if not isinstance(module, ConvolutionReplay):  # (which returns nothing)
            assert (out - reference).norm() / reference.norm() < 1e-4

        def run():
            for _ in range(calls):
                module(x)

        load_before = _load()
        benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(
        model=name,
        batch=batch,
        variant=variant,
        repeat=repeat,
        items_per_round=calls * batch,
        torch_threads=THREADS,
        torch=torch.__version__,
        load_average_before=load_before,
        load_average_after=_load(),
        cpu_count=os.cpu_count(),
    )
