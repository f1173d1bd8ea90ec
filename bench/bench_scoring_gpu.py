"""Batch scoring on a GPU: ``glam_fast.Scorer`` end to end (decode, features, model), files/s and
where the time goes.

Run from the repository root on a machine with a GPU (``bench/gpu_check.sh`` runs it as its
``scoring`` stage):

    python -m pytest bench/bench_scoring_gpu.py --benchmark-json OUT/gpu-scoring-<description>.json

Audio: the WAV files of ``GLAM_FAST_BENCH_AUDIO`` (a folder, e.g. the EmoDB copy's ``wav/``), or,
without it, a synthetic corpus written once per run: ``GLAM_FAST_BENCH_FILES`` files (default
2000) of 2 to 6 s at 16, 22.05, 44.1 and 48 kHz (PCM 16-bit; voiced harmonics with vibrato plus
noise: decoding, resampling and features cost what real speech costs). The model is the bundled
GLAM (``glam_fast.load_pretrained()``). ``GLAM_FAST_BENCH_DEVICE=cpu`` runs the same code on the
CPU with few files (a check of this file, not a measurement).

Each case scores every file ``GLAM_FAST_BENCH_ROUNDS`` times (default 2) after a warm-up;
``extra_info`` holds files/s, segments/s and the split of each round's time from
``Scorer.stats``: decode (summed over workers, overlapping the rest), waiting for decode, features
and model (synchronised). Every file must score ``ok``, and a sample must agree with the CPU
scorer within 5e-3 (TF32 convolutions on the GPU).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from glam_fast.scoring import Scorer

sf = pytest.importorskip("soundfile")

DEVICE = os.environ.get("GLAM_FAST_BENCH_DEVICE", "cuda")
AUDIO_DIR = os.environ.get("GLAM_FAST_BENCH_AUDIO")
N_FILES = int(os.environ.get("GLAM_FAST_BENCH_FILES", "2000" if DEVICE == "cuda" else "24"))
ROUNDS = int(os.environ.get("GLAM_FAST_BENCH_ROUNDS", "3"))
SAMPLE_RATES = (16000, 22050, 44100, 48000)

pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")


def synthetic_clip(rng: np.random.Generator, seconds: float, sample_rate: int) -> np.ndarray:
    """A voiced-sounding clip: 12 harmonics of a 100-250 Hz pitch with 5 Hz vibrato, a slow
    amplitude envelope and background noise; float32 in [-1, 1]."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = rng.uniform(100, 250) * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 13))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 3) * t) ** 2
    clip = 0.3 * envelope * voice / 3 + 0.02 * rng.standard_normal(t.size)
    return np.clip(clip, -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> list[str]:
    if AUDIO_DIR:
        found = sorted(str(p) for p in Path(AUDIO_DIR).rglob("*.wav"))
        if not found:
            pytest.fail(f"GLAM_FAST_BENCH_AUDIO={AUDIO_DIR}: no .wav files there")
        return found
    folder = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    out = []
    for i in range(N_FILES):
        rate = SAMPLE_RATES[i % len(SAMPLE_RATES)]
        path = folder / f"clip{i:05d}.wav"
        sf.write(path, synthetic_clip(rng, rng.uniform(2.0, 6.0), rate), rate, subtype="PCM_16")
        out.append(str(path))
    return out


@pytest.fixture(scope="module")
def cpu_reference(paths) -> dict[str, np.ndarray]:
    sample = paths[:: max(1, len(paths) // 16)]
    return {r.path: np.asarray(r.probabilities) for r in Scorer(device="cpu").score(sample)}


@pytest.mark.parametrize("workers, batch_size", [(8, 256), (16, 1024)])
def test_scorer(benchmark, paths, cpu_reference, workers, batch_size):
    scorer = Scorer(device=DEVICE, workers=min(workers, os.cpu_count() or 1), batch_size=batch_size)
    # Warm-up: CUDA context, feature modules and the kernels at full-batch shapes (a 32-file
    # warm-up left compiling for batch 1024 inside the first timed round: 4.2 s of model time
    # there against 0.35 s in the next). A file gives ~11 GLAM segments.
    list(scorer.score(paths[: max(32, batch_size // 4)]))
    splits, results = [], {}

    def run():
        scorer.stats = type(scorer.stats)()
        out = list(scorer.score(paths))
        splits.append(scorer.stats.as_dict())
        results.update((r.path, r) for r in out)
        return out

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    assert len(results) == len(paths) and all(r.ok for r in results.values())
    for path, probabilities in cpu_reference.items():
        np.testing.assert_allclose(results[path].probabilities, probabilities, atol=5e-3, err_msg=path)
    seconds = benchmark.stats.stats.median
    seconds_of_audio = sum(r.duration for r in results.values())
    benchmark.extra_info.update(
        variant=f"scorer-{DEVICE}-w{scorer.workers}-b{batch_size}",
        device=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        files=len(paths),
        audio=AUDIO_DIR or f"synthetic: {len(paths)} files, 2-6 s, {'/'.join(str(r) for r in SAMPLE_RATES)} Hz",
        audio_seconds=seconds_of_audio,
        files_per_s=len(paths) / seconds,
        audio_seconds_per_s=seconds_of_audio / seconds,
        segments_per_s=splits[-1]["units"] / seconds,
        time_split_per_round=splits,
        cpu_count=os.cpu_count(),
        torch=torch.__version__,
    )
