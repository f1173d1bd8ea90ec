"""Corpus readers (CSV manifest, EmoDB names) and the on-disk feature cache."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from glam_fast import audio, data, recipes

EMODB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emodb"
needs_emodb = pytest.mark.skipif(not (EMODB / "wav").is_dir(), reason="EmoDB copy not found at ../shared/data/emodb")


def write_wav(path, samples=4000, seed=0, rate=16000):
    signal = (np.random.default_rng(seed).standard_normal(samples) * 0.2).astype(np.float32)
    sf.write(path, signal, rate, subtype="FLOAT")
    return path


# ----------------------------------------------------------------------------- EmoDB


@needs_emodb
def test_read_emodb_real_folder():
    corpus = data.read_emodb(EMODB)
    assert len(corpus) == 535
    assert corpus.labels == ("anger", "boredom", "disgust", "fear", "happiness", "sadness", "neutral")
    assert corpus.speakers == ("03", "08", "09", "10", "11", "12", "13", "14", "15", "16")
    assert corpus.label_counts() == {
        "anger": 127, "boredom": 81, "disgust": 46, "fear": 69, "happiness": 71, "sadness": 62, "neutral": 79,
    }  # fmt: skip
    with (EMODB / "labels.csv").open() as handle:
        documented = {row["file"]: (row["emotion"], row["speaker"]) for row in csv.DictReader(handle)}
    assert {item.path.name: (item.label, item.speaker) for item in corpus} == documented
    assert corpus.targets.shape == (535,) and corpus.targets.max() == 6
    assert data.read_emodb(EMODB / "wav").items == corpus.items


def test_read_emodb_bad_folders(tmp_path):
    with pytest.raises(data.CorpusError, match="EmoDB folder not found"):
        data.read_emodb(tmp_path / "nowhere")
    with pytest.raises(data.CorpusError, match="no .wav files"):
        data.read_emodb(tmp_path)
    (tmp_path / "03a01Xa.wav").write_bytes(b"")
    with pytest.raises(data.CorpusError, match="03a01Xa.wav: unknown EmoDB emotion code 'X'"):
        data.read_emodb(tmp_path)
    (tmp_path / "03a01Xa.wav").unlink()
    (tmp_path / "recording.wav").write_bytes(b"")
    with pytest.raises(data.CorpusError, match="recording.wav: not an EmoDB file name"):
        data.read_emodb(tmp_path)


def test_read_emodb_labels_and_speakers_from_names(tmp_path):
    for name in ("03a01Fa.wav", "16b10Wb.wav", "08a02Tc.wav"):
        (tmp_path / name).write_bytes(b"")
    corpus = data.read_emodb(tmp_path)
    assert [(i.path.name, i.label, i.speaker) for i in corpus] == [
        ("03a01Fa.wav", "happiness", "03"), ("08a02Tc.wav", "sadness", "08"), ("16b10Wb.wav", "anger", "16"),
    ]  # fmt: skip
    assert corpus.targets.tolist() == [4, 5, 0]


# ----------------------------------------------------------------------------- CSV manifest


def test_manifest_resolves_paths_and_reads_speakers(tmp_path):
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "train.csv"
    manifest.write_text("path,label,speaker,notes\naudio/a.wav,sad,s1,x\n/abs/b.wav,happy,,y\nc.flac,sad,s2,z\n", encoding="utf-8-sig")
    corpus = data.read_manifest(manifest)
    assert [item.path for item in corpus] == [tmp_path / "lists" / "audio" / "a.wav", Path("/abs/b.wav"), tmp_path / "lists" / "c.flac"]
    assert corpus.labels == ("happy", "sad") and corpus.targets.tolist() == [1, 0, 1]
    assert [item.speaker for item in corpus] == ["s1", None, "s2"] and corpus.speakers == ("s1", "s2")


def test_manifest_without_speaker_and_with_fixed_labels(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("label,path\nsad,a.wav\n")
    corpus = data.read_manifest(manifest, labels=["neutral", "sad"])
    assert corpus.labels == ("neutral", "sad") and corpus.targets.tolist() == [1] and corpus[0].speaker is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("file,label\na.wav,sad\n", r"missing column\(s\) \['path'\]"),
        ("path,emotion\na.wav,sad\n", r"missing column\(s\) \['label'\]"),
        ("", r"missing column\(s\) \['path', 'label'\]"),
        ("path,label\n", "no rows"),
        ("path,label\na.wav,sad\nb.wav,\n", "line 3: empty path or label"),
    ],
)
def test_manifest_errors(tmp_path, text, message):
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(data.CorpusError, match=message):
        data.read_manifest(manifest)


def test_manifest_unknown_labels_and_missing_file(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.wav,sad\nb.wav,angry\nc.wav,angry\n")
    with pytest.raises(data.CorpusError, match=r"unknown labels \{'angry': 2\}.*b.wav"):
        data.read_manifest(manifest, labels=["sad", "happy"])
    with pytest.raises(data.CorpusError, match="manifest not found"):
        data.read_manifest(tmp_path / "none.csv")


# ----------------------------------------------------------------------------- feature cache


@pytest.fixture
def counted_compute(monkeypatch):
    """Counts the utterances each recipe class computes (cache misses)."""
    counts = {}
    for cls in (recipes.GLAMRecipe, recipes.AFCNRecipe):
        original = cls.compute

        def compute(self, waveforms, device=None, _original=original):
            counts[self.name] = counts.get(self.name, 0) + len(waveforms)
            return _original(self, waveforms, device=device)

        monkeypatch.setattr(cls, "compute", compute)
    return counts


def test_cache_miss_hit_and_invalidation(tmp_path, counted_compute):
    files = [write_wav(tmp_path / f"{i}.wav", samples=20_000 + 15_000 * i, seed=i) for i in range(3)]
    cache = data.FeatureCache(tmp_path / "cache")
    recipe = recipes.GLAMRecipe()

    first = data.extract_features(files, recipe, cache, batch_size=2)
    assert counted_compute["glam"] == 3
    assert [tuple(f["features"].shape) for f in first] == [(1, 26, 57), (2, 26, 57), (7, 26, 57)]
    assert [bool(f["padded"]) for f in first] == [True, False, False]

    second = data.extract_features(files, recipe, cache)
    assert counted_compute["glam"] == 3  # all hits
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)

    stat = files[1].stat()
    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched: recomputed
    data.extract_features(files, recipe, cache)
    assert counted_compute["glam"] == 4

    write_wav(files[2], samples=40_000, seed=9)  # rewritten: new size, new features
    third = data.extract_features(files, recipe, cache)
    assert counted_compute["glam"] == 5 and third[2]["features"].shape == (4, 26, 57)

    data.extract_features(files, recipes.GLAMRecipe(pad_mode="constant"), cache)  # another recipe: misses
    assert counted_compute["glam"] == 8


def test_cache_layout_is_safetensors_and_json_only(tmp_path, counted_compute):
    files = [write_wav(tmp_path / "a.wav", samples=2_000)]
    cache = data.FeatureCache(tmp_path / "cache")
    recipe = recipes.AFCNRecipe()
    (result,) = data.extract_features(files, recipe, cache)
    assert int(result["length"]) == 63 and int(result["true_length"]) == 13
    stored = sorted(p.name for p in cache.recipe_dir(recipe).iterdir())
    assert stored == sorted(["recipe.json", cache.entry(files[0], recipe).name])  # no temporary files left
    described = json.loads((cache.recipe_dir(recipe) / "recipe.json").read_text())
    assert described.pop("features_version") == data.FEATURES_VERSION
    assert recipes.recipe_from_dict(described) == recipe
    (again,) = data.extract_features(files, recipe, cache)
    assert counted_compute["afcn"] == 1 and int(again["true_length"]) == 13


def test_unreadable_cache_entry_is_recomputed(tmp_path, counted_compute):
    files = [write_wav(tmp_path / "a.wav")]
    cache = data.FeatureCache(tmp_path / "cache")
    recipe = recipes.GLAMRecipe()
    (fresh,) = data.extract_features(files, recipe, cache)
    cache.entry(files[0], recipe).write_bytes(b"not a safetensors file")
    (again,) = data.extract_features(files, recipe, cache)
    assert counted_compute["glam"] == 2
    torch.testing.assert_close(again["features"], fresh["features"], rtol=0, atol=0)
    assert cache.load(files[0], recipe) is not None


def test_extract_features_reports_the_bad_file(tmp_path):
    good = write_wav(tmp_path / "good.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"")
    cache = data.FeatureCache(tmp_path / "cache")
    with pytest.raises(audio.EmptyAudioFileError, match="bad.wav"):
        data.extract_features([good, bad], recipes.GLAMRecipe(), cache)
    with pytest.raises(audio.AudioFileNotFoundError, match="missing.wav"):
        data.extract_features([tmp_path / "missing.wav"], recipes.GLAMRecipe(), cache)


def test_extract_features_without_cache_resamples(tmp_path):
    path = write_wav(tmp_path / "a.wav", samples=44_100, rate=22_050)  # 2 s at 22,050 Hz -> 2 GLAM segments at 16 kHz
    (result,) = data.extract_features([path], recipes.GLAMRecipe())
    assert result["features"].shape == (2, 26, 57)
