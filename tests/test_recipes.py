"""Model inputs per recipe: shapes the models accept, segmentation, padding flags, serialisation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import glam_fast
from glam_fast import recipes
from glam_fast.features import MFCC
from tests.helpers import rel_err

EMODB_WAV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emodb" / "wav"
needs_emodb = pytest.mark.skipif(not EMODB_WAV.is_dir(), reason="EmoDB copy not found at ../shared/data/emodb")


def noise(samples, seed=0, scale=0.3):
    return torch.from_numpy((np.random.default_rng(seed).standard_normal(samples) * scale).astype(np.float32))


# ----------------------------------------------------------------------------- GLAM


@pytest.mark.parametrize(
    "samples, n_seg, padded",
    [(100, 1, True), (28_799, 1, True), (28_800, 1, False), (31_999, 1, False), (32_000, 2, False), (60_000, 10, False)],
)
def test_glam_segment_count_and_padding_flag(samples, n_seg, padded):
    recipe = recipes.GLAMRecipe()
    features, was_padded = recipes.glam_input(noise(samples), recipe)
    assert features.shape == (n_seg, 26, 57) and features.dtype == torch.float32
    assert was_padded is padded and recipe.n_segments(samples) == n_seg


def test_glam_segments_are_per_segment_mfcc():
    waveform = noise(40_000, 1)
    features, _ = recipes.glam_input(waveform)
    mfcc = MFCC(16000, 26)
    for k in range(features.shape[0]):
        torch.testing.assert_close(features[k], mfcc(waveform[None, k * 3200 : k * 3200 + 28_800])[0], rtol=1e-5, atol=1e-4)
    short = noise(5000, 2)
    padded, _ = recipes.glam_input(short)
    torch.testing.assert_close(padded[0], mfcc(torch.nn.functional.pad(short, (0, 23_800))[None])[0], rtol=1e-5, atol=1e-4)


def test_glam_batch_packs_segments_with_their_utterance():
    waveforms = [noise(32_000, 3), noise(4_000, 4), noise(45_000, 5)]
    batch = recipes.glam_segments(waveforms)
    assert batch.features.shape == (2 + 1 + 6, 26, 57)
    assert batch.utterance.tolist() == [0, 0, 1, 2, 2, 2, 2, 2, 2]
    assert batch.n_segments.tolist() == [2, 1, 6] and batch.padded.tolist() == [False, True, False]
    for waveform, part in zip(waveforms, batch.split()):
        torch.testing.assert_close(part, recipes.glam_input(waveform)[0], rtol=1e-5, atol=1e-4)
    small_chunks = recipes.glam_segments(waveforms, chunk=4)
    torch.testing.assert_close(small_chunks.features, batch.features, rtol=1e-5, atol=1e-4)


def test_glam_output_fits_the_model():
    recipe = recipes.GLAMRecipe()
    batch = recipes.glam_segments([noise(32_000, 6), noise(1_000, 7)], recipe)
    model = glam_fast.GLAM(recipe.input_shape, num_classes=7).eval()
    with torch.no_grad():
        logits = model(batch.features[:, None])
    assert logits.shape == (3, 7)
    utterance_logits = torch.zeros(2, 7).index_add_(0, batch.utterance, logits) / batch.n_segments[:, None]
    assert utterance_logits.shape == (2, 7)


@needs_emodb
def test_glam_recipe_equals_the_authors_librosa_pipeline():
    """librosa.load at 16 kHz, segments every 3200 samples, librosa MFCC per segment (reflect, as librosa 0.8)."""
    librosa = pytest.importorskip("librosa")
    path = sorted(EMODB_WAV.glob("*.wav"))[100]
    recipe = recipes.GLAMRecipe()
    features, padded = recipes.glam_input(recipe.load(path), recipe)
    y, _ = librosa.load(path, sr=16000)
    expected = [librosa.feature.mfcc(y=y[s : s + 28_800], sr=16000, n_mfcc=26, pad_mode="reflect") for s in (0, 3200)]
    assert features.shape == (2, 26, 57) and not padded
    for ours, theirs in zip(features, expected):
        assert rel_err(ours, torch.from_numpy(theirs)) < 1e-4


# ----------------------------------------------------------------------------- MS-SENet


def test_fix_length_centered():
    x = torch.arange(1, 6, dtype=torch.float32)
    assert recipes.fix_length_centered(x, 8).tolist() == [0, 1, 2, 3, 4, 5, 0, 0]
    assert recipes.fix_length_centered(x, 3).tolist() == [2, 3, 4]
    assert recipes.fix_length_centered(x, 2).tolist() == [2, 3]
    assert recipes.fix_length_centered(x, 5).tolist() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("corpus, frames", [("emodb", 188), ("iemocap", 606)])
def test_mssenet_frames_per_corpus(corpus, frames):
    recipe = recipes.MSSENetRecipe.for_corpus(corpus)
    assert recipe.frames == frames
    x = recipes.mssenet_inputs([noise(44_100, 1), noise(400_000, 2)], recipe)
    assert x.shape == (2, frames, 39) and x.dtype == torch.float32


def test_mssenet_input_is_mfcc_of_the_fixed_length_waveform_and_fits_the_model():
    recipe = recipes.MSSENetRecipe()
    waveform = noise(44_100, 3)
    x = recipes.mssenet_input(waveform, recipe)
    expected = MFCC(22050, 39)(recipes.fix_length_centered(waveform, 96_000)[None])[0].T
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-4)
    model = glam_fast.MSSENet(num_classes=7, n_mfcc=39).eval()
    with torch.no_grad():
        assert model(x[None]).shape == (1, 7)


# ----------------------------------------------------------------------------- AFCN


def test_afcn_minimum_is_the_trunks():
    assert recipes.AFCNRecipe().min_frames == glam_fast.AFCN().min_size


def test_afcn_input_shapes_padding_and_model():
    recipe = recipes.AFCNRecipe()
    full = recipes.afcn_input(noise(32_000, 1), recipe)
    short = recipes.afcn_input(noise(1_600, 2), recipe)
    assert full.features.shape == (3, 257, 201) and full.length == full.true_length == 201 and not full.padded
    assert short.features.shape == (3, 257, 63) and short.length == 63 and short.true_length == 11 and short.padded
    x, lengths = recipes.afcn_batch([full, short])
    assert x.shape == (2, 3, 257, 201) and lengths.tolist() == [201, 63]
    assert torch.all(x[1, :, :, 63:] == 0)
    model = glam_fast.AFCN(num_classes=7).eval()
    with torch.no_grad():
        assert model(x, lengths).shape == (2, 7)


def test_afcn_features_equal_librosa():
    librosa = pytest.importorskip("librosa")
    waveform = noise(12_345, 4)
    ours = recipes.afcn_input(waveform).features
    log_power = librosa.power_to_db(np.abs(librosa.stft(waveform.numpy(), n_fft=512, hop_length=160, pad_mode="reflect")) ** 2)
    expected = [log_power, librosa.feature.delta(log_power, width=9), librosa.feature.delta(log_power, width=9, order=2)]
    for channel, reference in zip(ours, expected):
        assert rel_err(channel, torch.from_numpy(reference)) < 1e-4


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "recipe",
    [recipes.GLAMRecipe(pad_mode="constant"), recipes.MSSENetRecipe.for_corpus("iemocap"), recipes.AFCNRecipe(top_db=None)],
)
def test_recipes_round_trip_through_json(recipe):
    saved = json.loads(json.dumps(recipe.to_dict()))
    assert saved["recipe"] == recipe.name
    assert recipes.recipe_from_dict(saved) == recipe
    assert type(recipe).from_dict(saved) == recipe


def test_bad_recipe_settings():
    with pytest.raises(ValueError, match="unknown recipe 'vgg'"):
        recipes.recipe_from_dict({"recipe": "vgg"})
    with pytest.raises(ValueError, match=r"unknown glam recipe settings \['n_mffc'\]"):
        recipes.GLAMRecipe.from_dict({"recipe": "glam", "n_mffc": 20})
    with pytest.raises(ValueError, match="got a 'afcn' recipe"):
        recipes.GLAMRecipe.from_dict({"recipe": "afcn"})
    with pytest.raises(ValueError, match="pad_mode"):
        recipes.GLAMRecipe(pad_mode="edge")
    with pytest.raises(ValueError, match="segment_hop"):
        recipes.GLAMRecipe(segment_hop=0)
    with pytest.raises(ValueError, match="frequency bins"):
        recipes.AFCNRecipe(n_fft=64)
    with pytest.raises(ValueError, match="no MS-SENet length"):
        recipes.MSSENetRecipe.for_corpus("ravdess")


def test_bad_waveforms():
    with pytest.raises(TypeError, match="wrap it in a list"):
        recipes.glam_segments(noise(100))
    with pytest.raises(ValueError, match="waveform 1 must be a 1-D float tensor"):
        recipes.glam_segments([noise(100), torch.zeros(2, 100)])
    with pytest.raises(ValueError, match="waveform 0 must be a 1-D float tensor"):
        recipes.mssenet_inputs([torch.zeros(100, dtype=torch.int16)])
    with pytest.raises(ValueError, match="waveform 0 is empty"):
        recipes.afcn_input(torch.zeros(0))
    with pytest.raises(ValueError, match="no waveforms"):
        recipes.glam_segments([])


def test_compute_gives_per_utterance_tensors():
    waveforms = [noise(30_000, 1), noise(2_000, 2)]
    glam = recipes.GLAMRecipe().compute(waveforms)
    assert [d["features"].shape for d in glam] == [(1, 26, 57), (1, 26, 57)]
    assert [bool(d["padded"]) for d in glam] == [False, True]
    afcn = recipes.AFCNRecipe().compute(waveforms)
    assert [(int(d["length"]), int(d["true_length"])) for d in afcn] == [(188, 188), (63, 13)]
    (mssenet,) = recipes.MSSENetRecipe().compute(waveforms[:1])
    assert mssenet["features"].shape == (188, 39)


@pytest.mark.gpu
def test_recipes_on_cuda_equal_cpu():
    waveforms = [noise(32_000, 1), noise(5_000, 2)]
    cpu = recipes.glam_segments(waveforms)
    gpu = recipes.glam_segments(waveforms, device="cuda")
    assert gpu.features.is_cuda and rel_err(gpu.features.cpu(), cpu.features) < 1e-4
    assert rel_err(recipes.mssenet_inputs(waveforms, device="cuda").cpu(), recipes.mssenet_inputs(waveforms)) < 1e-4
    on_gpu = recipes.afcn_input(waveforms[0].cuda())
    assert on_gpu.features.is_cuda and rel_err(on_gpu.features.cpu(), recipes.afcn_input(waveforms[0]).features) < 1e-4
