"""Evaluation protocols: disjointness, coverage, determinism, clear errors."""

import pytest

from glam_fast.protocols import make_splits, random_holdout, shuffled_kfold, speaker_folds

EMODB_SPEAKERS = ["03", "08", "09", "10", "11", "12", "13", "14", "15", "16"]


def _items(per_speaker=4):
    return [s for s in EMODB_SPEAKERS for _ in range(per_speaker)]


def test_speaker_folds_are_disjoint_and_cover_every_speaker_once():
    speakers = _items()
    splits = speaker_folds(speakers, 5)
    assert len(splits) == 5
    tested = [s for split in splits for s in split.test_speakers]
    assert sorted(tested) == EMODB_SPEAKERS
    for split in splits:
        assert len(split.test_speakers) == 2 and len(split.validation_speakers) == 1
        train_spk = {speakers[i] for i in split.train}
        val_spk = {speakers[i] for i in split.validation}
        test_spk = {speakers[i] for i in split.test}
        assert not (train_spk & val_spk) and not (train_spk & test_spk) and not (val_spk & test_spk)
        assert len(split.train) + len(split.validation) + len(split.test) == len(speakers)
        assert split.select_on == "validation"


def test_speaker_folds_errors():
    with pytest.raises(ValueError, match="needs a speaker for every item"):
        speaker_folds(["a", None, "b"], 2)
    with pytest.raises(ValueError, match="no test speakers"):
        speaker_folds(["a", "b", "c", "d"], 5)


def test_random_holdout_is_deterministic_and_disjoint():
    a, b = random_holdout(100, [1, 2]), random_holdout(100, [1, 2])
    assert a == b and a[0].test != a[1].test
    for split in a:
        assert len(split.test) == 20 and not set(split.test) & set(split.train) and split.select_on == "test"


def test_shuffled_kfold_partitions_items():
    splits = shuffled_kfold(53, 10)
    tests = sorted(i for s in splits for i in s.test)
    assert tests == list(range(53))
    assert all(s.select_on == "last" for s in splits)


def test_make_splits_dispatch():
    assert len(make_splits("speaker-independent", "afcn", _items())) == 5
    assert len(make_splits("paper", "glam", _items(), folds=3)) == 3
    assert len(make_splits("paper", "mssenet", _items())) == 10
    with pytest.raises(ValueError, match="afcn has no published"):
        make_splits("paper", "afcn", _items())
    with pytest.raises(ValueError, match="unknown protocol"):
        make_splits("loso", "glam", _items())
