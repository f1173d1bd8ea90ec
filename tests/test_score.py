"""glam_fast.Scorer: results equal the model applied directly; batching, decoders and arrays agree."""

import numpy as np
import pytest
import torch

import glam_fast
from glam_fast import audio, recipes
from glam_fast.checkpoint import load_checkpoint
from glam_fast.scoring import Scorer
from tests.score_helpers import CLASSES, TINY_GLAM, make_checkpoint, write_tone


@pytest.fixture(scope="module")
def glam_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "glam", "glam")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    # a long file (spread over several batches), a short one (padded), odd rates
    specs = [(3.1, 16_000), (0.3, 16_000), (1.0, 22_050), (2.2, 8_000), (0.9, 48_000)]
    return [str(write_tone(folder / f"c{i}.wav", s, r, seed=i)) for i, (s, r) in enumerate(specs)]


def direct_logits(ckpt, paths):
    """The reference model (no inference form) on glam_segments: mean of segment logits per file."""
    model, config = load_checkpoint(ckpt)
    recipe = recipes.recipe_from_dict(config["features"])
    waves = [audio.load(p, sr=recipe.sample_rate)[0] for p in paths]
    batch = recipes.glam_segments(waves, recipe)
    with torch.no_grad():
        logits = model(batch.features[:, None]).double()
    sums = torch.zeros(len(paths), logits.shape[1], dtype=torch.float64).index_add_(0, batch.utterance, logits)
    mean = sums / batch.n_segments[:, None]
    return mean, batch.n_segments.tolist(), batch.padded.tolist()


@pytest.mark.parametrize("batch_size", [1, 7, 256])
def test_glam_scores_equal_direct_computation(glam_ckpt, clips, batch_size):
    scorer = Scorer(glam_ckpt, device="cpu", batch_size=batch_size, workers=2)
    results = list(scorer.score(clips))
    expected, n_segments, padded = direct_logits(glam_ckpt, clips)
    assert [r.path for r in results] == clips
    assert all(r.ok for r in results)
    assert [r.n_segments for r in results] == n_segments
    assert [r.padded for r in results] == padded == [False, True, False, False, False]
    logits = torch.tensor([r.logits for r in results], dtype=torch.float64)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    probabilities = torch.tensor([r.probabilities for r in results], dtype=torch.float64)
    # A softmax moves by at most half the largest logit change: the logits' 1e-4 allows 5e-5 here.
    # (Measured: logits within 9.5e-5 of float64 at |logit| up to 28, the Winograd layers' ~3e-6
    # relative error; the float32 eager reference within 2.5e-5.)
    np.testing.assert_allclose(probabilities, torch.softmax(expected, 1), atol=5e-5)
    assert [r.label for r in results] == [CLASSES[i] for i in expected.argmax(1)]
    assert results[0].duration == pytest.approx(3.1, abs=1e-3)
    assert scorer.stats.files == 5 and scorer.stats.units == sum(n_segments)


def test_decoders_and_arrays_agree(glam_ckpt, clips):
    threads = list(Scorer(glam_ckpt, device="cpu", workers=2).score(clips))
    processes = list(Scorer(glam_ckpt, device="cpu", workers=2, decoder="processes").score(clips))
    np.testing.assert_allclose([r.logits for r in threads], [r.logits for r in processes], rtol=1e-5, atol=1e-5)
    scorer = Scorer(glam_ckpt, device="cpu")
    wave, rate = audio.load(clips[0])  # 16 kHz

    class DLPackOnly:  # what a CuPy array offers
        def __init__(self, t):
            self.t = t

        def __dlpack__(self, **kwargs):
            return self.t.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

    for form in (wave.numpy(), wave, DLPackOnly(wave), [wave.numpy()], wave[None]):
        (result,) = scorer.score_array(form, rate)
        assert result.ok and result.path == "<array 0>"
        np.testing.assert_allclose(result.logits, threads[0].logits, rtol=1e-5, atol=1e-5)
    bad = scorer.score_array([np.zeros(0, np.float32), np.full(100, np.nan, np.float32), wave.numpy()], rate, names=["a", "b", "c"])
    assert [r.status for r in bad] == ["error", "error", "ok"]
    assert "NoSamplesError" in bad[0].error and "NonFiniteAudioError" in bad[1].error


@pytest.mark.parametrize("kind", ["mssenet", "afcn"])
def test_other_models_score_files(tmp_path, kind):
    ckpt = make_checkpoint(tmp_path / kind, kind)
    long_clip = write_tone(tmp_path / "long.wav", 2.5, seed=3)
    short_clip = write_tone(tmp_path / "short.wav", 0.2, seed=4)
    scorer = Scorer(ckpt, device="cpu", batch_size=2, afcn_window_s=1.0)
    long_result, short_result = scorer.score([long_clip, short_clip])
    assert long_result.ok and short_result.ok
    assert short_result.padded and not long_result.padded
    if kind == "afcn":
        assert long_result.n_segments == 3  # 1 s windows
        # one window: the inference form with lengths equals the reference on that spectrogram
        model, config = load_checkpoint(ckpt)
        item = recipes.afcn_input(audio.load(short_clip, sr=16_000)[0], recipes.recipe_from_dict(config["features"]))
        with torch.no_grad():
            logits = model(item.features[None], torch.tensor([item.length]))[0].double()
        np.testing.assert_allclose(short_result.logits, logits, rtol=1e-4, atol=1e-5)
    else:
        assert long_result.n_segments == 1
        model, config = load_checkpoint(ckpt)
        x = recipes.mssenet_inputs([audio.load(long_clip, sr=16_000)[0]], recipes.recipe_from_dict(config["features"]))
        with torch.no_grad():
            logits = model(x)[0].double()
        np.testing.assert_allclose(long_result.logits, logits, rtol=1e-4, atol=1e-5)
    assert sum(long_result.probabilities) == pytest.approx(1.0)


def test_default_model_missing_is_a_clear_error(monkeypatch, tmp_path):
    from glam_fast import pretrained

    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="bundled default model 'glam-emodb' is not part of this installation"):
        Scorer()


def test_default_model_is_used_without_checkpoint(monkeypatch, tmp_path, clips):
    from glam_fast import pretrained

    make_checkpoint(tmp_path / "glam-emodb", "glam")
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    scorer = glam_fast.Scorer(device="cpu")
    assert scorer.classes == CLASSES and scorer.recipe == TINY_GLAM
    assert next(iter(scorer.score(clips[:1]))).ok


def test_bad_arguments(glam_ckpt):
    with pytest.raises(ValueError, match="batch_size"):
        Scorer(glam_ckpt, batch_size=0)
    with pytest.raises(ValueError, match="decoder"):
        Scorer(glam_ckpt, decoder="fibers")
