"""GLAM feature extraction for the whole EmoDB copy: glam_fast (batched PyTorch) vs the authors' librosa way.

Run from the repository root (needs ../shared/data/emodb, librosa and pytest-benchmark):

    python -m pytest bench/bench_features.py --benchmark-json bench/results/cpu-features-<description>.json

Measured in the same run, on the same 535 files (1,070 segments of 1.8 s at 16 kHz, 26 MFCC each):

- ``test_end_to_end[librosa]``: the authors' pipeline, one file at a time: ``librosa.load(sr=16000)``
  (soxr_hq), then ``librosa.feature.mfcc`` on each segment (``pad_mode="reflect"``, as their
  librosa 0.8). Single-threaded, as numpy runs it.
- ``test_end_to_end[glam_fast-cpu-N]``: ``audio.load_many(sr=16000, threads=N)`` (the same
  soundfile + soxr HQ decoding) then ``recipes.glam_segments`` (batched MFCC) with N torch threads:
  N = 1 (single-threaded like librosa: the per-core comparison) and N = torch's default.
- ``test_features_only[...]``: the MFCC step alone on already-decoded waveforms, same variants.

On a machine with CUDA the glam_fast variants also run on the GPU (``-cuda``; synchronised).
Each test also checks that the features it timed equal librosa's (relative error < 1e-4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from glam_fast import audio, recipes

librosa = pytest.importorskip("librosa")

EMODB_WAV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emodb" / "wav"
RECIPE = recipes.GLAMRecipe()
ROUNDS = 3

pytestmark = pytest.mark.skipif(not EMODB_WAV.is_dir(), reason="EmoDB copy not found at ../shared/data/emodb")


@pytest.fixture(scope="module")
def paths() -> list[Path]:
    return sorted(EMODB_WAV.glob("*.wav"))


@pytest.fixture(scope="module")
def waveforms(paths) -> list[np.ndarray]:
    return [librosa.load(path, sr=RECIPE.sample_rate)[0] for path in paths]


def librosa_mfcc_per_segment(y: np.ndarray) -> np.ndarray:
    """The authors' features of one utterance: (n_seg, 26, 57), librosa on each segment alone."""
    starts = range(0, len(y) - RECIPE.segment_samples + 1, RECIPE.segment_hop)
    return np.stack(
        [
            librosa.feature.mfcc(y=y[s : s + RECIPE.segment_samples], sr=RECIPE.sample_rate, n_mfcc=RECIPE.n_mfcc, pad_mode="reflect")
            for s in starts
        ]
    )


def librosa_end_to_end(paths) -> np.ndarray:
    return np.concatenate([librosa_mfcc_per_segment(librosa.load(path, sr=RECIPE.sample_rate)[0]) for path in paths])


def glam_fast_end_to_end(paths, device: str, threads: int) -> torch.Tensor:
    decoded = audio.load_many(paths, sr=RECIPE.sample_rate, threads=threads)
    features = recipes.glam_segments([waveform for waveform, _ in decoded], RECIPE, device=device).features
    if device == "cuda":
        torch.cuda.synchronize()
    return features


def glam_fast_features(waveforms: list[torch.Tensor], device: str) -> torch.Tensor:
    features = recipes.glam_segments(waveforms, RECIPE, device=device).features
    if device == "cuda":
        torch.cuda.synchronize()
    return features


def relative_error(ours: torch.Tensor, reference: np.ndarray) -> float:
    reference = torch.from_numpy(reference).double()
    return float((ours.detach().cpu().double() - reference).norm() / reference.norm())


@pytest.fixture(scope="module")
def reference(waveforms) -> np.ndarray:
    return np.concatenate([librosa_mfcc_per_segment(y) for y in waveforms])


def describe(benchmark, paths, variant: str, threads: int) -> None:
    benchmark.extra_info.update(
        files=len(paths),
        segments=len(paths) * RECIPE.n_segments(2 * RECIPE.sample_rate),
        variant=variant,
        torch_threads=threads,
        torch=torch.__version__,
        librosa=librosa.__version__,
        recipe=RECIPE.to_dict(),
    )


DEFAULT_THREADS = torch.get_num_threads()
VARIANTS = list(dict.fromkeys([("librosa", 1), ("glam_fast-cpu", 1), ("glam_fast-cpu", DEFAULT_THREADS)]))
if torch.cuda.is_available():
    VARIANTS.append(("glam_fast-cuda", DEFAULT_THREADS))


@pytest.fixture
def torch_threads():
    """Restores torch's thread count after a test that changes it."""
    default = torch.get_num_threads()
    yield
    torch.set_num_threads(default)


@pytest.mark.parametrize("variant, threads", VARIANTS)
def test_end_to_end(benchmark, paths, reference, variant, threads, torch_threads):
    torch.set_num_threads(threads)
    if variant == "librosa":
        result = benchmark.pedantic(librosa_end_to_end, args=(paths,), rounds=ROUNDS, iterations=1)
        assert np.array_equal(result, reference)
    else:
        device = variant.split("-")[1]
        glam_fast_end_to_end(paths[:4], device, threads)  # warm-up: module construction, CUDA context
        result = benchmark.pedantic(glam_fast_end_to_end, args=(paths, device, threads), rounds=ROUNDS, iterations=1)
        assert result.shape == reference.shape and relative_error(result, reference) < 1e-4
    describe(benchmark, paths, variant, threads)


@pytest.mark.parametrize("variant, threads", VARIANTS)
def test_features_only(benchmark, paths, waveforms, reference, variant, threads, torch_threads):
    torch.set_num_threads(threads)
    if variant == "librosa":
        result = benchmark.pedantic(lambda: np.concatenate([librosa_mfcc_per_segment(y) for y in waveforms]), rounds=ROUNDS, iterations=1)
        assert np.array_equal(result, reference)
    else:
        device = variant.split("-")[1]
        tensors = [torch.from_numpy(y) for y in waveforms]
        glam_fast_features(tensors[:4], device)  # warm-up
        result = benchmark.pedantic(glam_fast_features, args=(tensors, device), rounds=ROUNDS, iterations=1)
        assert relative_error(result, reference) < 1e-4
    describe(benchmark, paths, variant, threads)
