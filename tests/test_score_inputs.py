"""Inputs of glam-fast score: folders, globs, manifests, de-duplication, shards."""

import random

import pytest

from glam_fast.scoring.inputs import InputError, expand_inputs, parse_shard, select_shard, shard_index


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    for name in ["a/x.wav", "a/deep/y.FLAC", "a/notes.txt.bak", "a/z.ogg", "b.wav"]:
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def test_folders_globs_and_duplicates(tree):
    paths = expand_inputs([tree / "a", str(tree / "*.wav"), str(tree / "a" / "x.wav")])
    names = [p.rsplit("/", 1)[1] for p in paths]
    assert names == ["x.wav", "z.ogg", "y.FLAC", "b.wav"]  # folder order, then the glob; x.wav once
    assert all("//" not in p and "/./" not in p for p in paths)


def test_explicit_file_is_kept_whatever_its_name(tree):
    assert expand_inputs([tree / "a" / "notes.txt.bak"]) == [str(tree / "a" / "notes.txt.bak")]


def test_manifests(tree):
    (tree / "list.txt").write_text("# files\na/x.wav\n\nb.wav\n")
    (tree / "m.csv").write_text("label,path\nhappy,a/z.ogg\nsad,b.wav\n")
    assert expand_inputs([tree / "list.txt"]) == [str(tree / "a/x.wav"), str(tree / "b.wav")]
    assert expand_inputs([tree / "m.csv"]) == [str(tree / "a/z.ogg"), str(tree / "b.wav")]
    (tree / "bad.csv").write_text("file\nb.wav\n")
    with pytest.raises(InputError, match="'path' column"):
        expand_inputs([tree / "bad.csv"])


def test_inputs_that_name_nothing(tree):
    with pytest.raises(InputError, match="no audio files in this folder"):
        expand_inputs([tree / "empty"])
    with pytest.raises(InputError, match="no such file or folder"):
        expand_inputs([tree / "missing.wav"])
    with pytest.raises(InputError, match="matches no files"):
        expand_inputs([str(tree / "*.mp3")])


def test_shards_partition_whatever_the_listing_order():
    paths = [f"corpus/spk{i % 7}/utt{i}.wav" for i in range(500)]
    shuffled = paths[:]
    random.Random(0).shuffle(shuffled)
    for count in (1, 3, 8):
        shards = [select_shard(paths, i, count) for i in range(count)]
        assert sorted(p for s in shards for p in s) == sorted(paths)  # union = whole, no duplicates
        assert sum(len(s) for s in shards) == len(paths)
        for i in range(count):
            assert sorted(select_shard(shuffled, i, count)) == sorted(shards[i])  # order does not matter
    assert min(len(select_shard(paths, i, 8)) for i in range(8)) > 30  # roughly balanced
    assert shard_index("a/./b.wav", 5) == shard_index("a/b.wav", 5)


@pytest.mark.parametrize("text", ["3", "1/0", "4/4", "-1/3", "a/b"])
def test_bad_shard(text):
    with pytest.raises(ValueError, match="i/N"):
        parse_shard(text)
    assert parse_shard("2/5") == (2, 5)
