"""Scoring the EmoDB copy on the CPU: glam_fast's Scorer vs a naive pipeline, same run.

Run from the repository root (needs ../shared/data/emodb, librosa and pytest-benchmark):

    GLAM_FAST_BENCH_THREADS=2 python -m pytest bench/bench_scoring.py \
        --benchmark-json bench/results/cpu-scoring-emodb-<description>.json

All 535 files (22,050 Hz, 2 s: 2 GLAM segments each) are scored by a GLAM with the default
recipe and 7 classes (random weights: the work is the same as with trained ones).

- ``naive``: what a script written around the authors' code does, one file at a time:
  ``librosa.load(sr=16000)``, ``librosa.feature.mfcc`` per segment, the eager reference model on
  the file's segments, mean of the segment logits, softmax.
- ``scorer-<decoder>-w<workers>``: ``glam_fast.Scorer`` on the CPU (decode workers, batched
  MFCC, the inference form of the model, 256 segments per batch). ``extra_info`` holds files/s
  and the split of the time between decode (summed over workers), waiting for decode, features
  and model, from ``Scorer.stats``.

Each scorer test checks that its probabilities agree with the naive pipeline's within 1e-4 (the
naive test runs first and is the reference). The load average before and after each test is
recorded (the machine may be shared).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from glam_fast import GLAM
from glam_fast.checkpoint import load_checkpoint, save_checkpoint
from glam_fast.recipes import GLAMRecipe
from glam_fast.scoring import Scorer

librosa = pytest.importorskip("librosa")

EMODB_WAV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emodb" / "wav"
RECIPE = GLAMRecipe()
CLASSES = ["anger", "boredom", "disgust", "fear", "happiness", "sadness", "neutral"]
THREADS = int(os.environ.get("GLAM_FAST_BENCH_THREADS", "2"))
ROUNDS = int(os.environ.get("GLAM_FAST_BENCH_ROUNDS", "2"))

pytestmark = pytest.mark.skipif(not EMODB_WAV.is_dir(), reason="EmoDB copy not found at ../shared/data/emodb")


@pytest.fixture(scope="module")
def paths() -> list[str]:
    return [str(p) for p in sorted(EMODB_WAV.glob("*.wav"))]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = GLAM(RECIPE.input_shape, len(CLASSES)).eval()
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return str(save_checkpoint(tmp_path_factory.mktemp("ckpt") / "glam", model, CLASSES, features=RECIPE.to_dict()))


def naive_scores(paths, model) -> np.ndarray:
    out = []
    with torch.no_grad():
        for path in paths:
            y, _ = librosa.load(path, sr=RECIPE.sample_rate)
            starts = range(0, len(y) - RECIPE.segment_samples + 1, RECIPE.segment_hop)
            mfcc = np.stack(
                [
                    librosa.feature.mfcc(y=y[s : s + RECIPE.segment_samples], sr=RECIPE.sample_rate, n_mfcc=RECIPE.n_mfcc, pad_mode="reflect")
                    for s in starts
                ]
            )
            logits = model(torch.from_numpy(mfcc).float()[:, None]).mean(0)
            out.append(torch.softmax(logits.double(), 0).numpy())
    return np.stack(out)


_naive_result: dict = {}  # test_naive's output, the reference for the scorer tests (saves a second naive pass)


@pytest.fixture(scope="module")
def expected(paths, checkpoint) -> np.ndarray:
    if "scores" not in _naive_result:
        torch.set_num_threads(THREADS)
        model, _ = load_checkpoint(checkpoint)
        _naive_result["scores"] = naive_scores(paths, model)
    return _naive_result["scores"]


def _info(benchmark, variant, n_files, **extra):
    benchmark.extra_info.update(variant=variant, files=n_files, torch_threads=THREADS, torch=torch.__version__, cpu_count=os.cpu_count(), **extra)


def test_naive(benchmark, paths, checkpoint):
    torch.set_num_threads(THREADS)
    model, _ = load_checkpoint(checkpoint)
    load_before = os.getloadavg()[0]
    result = benchmark.pedantic(naive_scores, args=(paths, model), rounds=1, iterations=1)
    _naive_result["scores"] = result
    seconds = benchmark.stats.stats.median
    _info(benchmark, "naive", len(paths), files_per_s=len(paths) / seconds, load_average_before=load_before, load_average_after=os.getloadavg()[0])


@pytest.mark.parametrize("decoder, workers", [("threads", 2), ("threads", 1), ("processes", 2)])
def test_scorer(benchmark, paths, checkpoint, expected, decoder, workers):
    torch.set_num_threads(THREADS)
    scorer = Scorer(checkpoint, device="cpu", workers=workers, decoder=decoder)
    list(scorer.score(paths[:8]))  # warm-up: feature modules, oneDNN primitives
    splits = []

    def run():
        scorer.stats = type(scorer.stats)()
        results = list(scorer.score(paths))
        splits.append(scorer.stats.as_dict())
        return results

    load_before = os.getloadavg()[0]
    results = benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    assert all(r.ok for r in results)
    np.testing.assert_allclose([r.probabilities for r in results], expected, atol=1e-4)
    seconds = benchmark.stats.stats.median
    _info(
        benchmark,
        f"scorer-{decoder}-w{workers}",
        len(paths),
        files_per_s=len(paths) / seconds,
        time_split_per_round=splits,
        load_average_before=load_before,
        load_average_after=os.getloadavg()[0],
    )
