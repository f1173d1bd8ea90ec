"""glam-fast score end to end: every bad input gets its row, outputs, resume, kill and resume."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from glam_fast.cli import main
from glam_fast.scoring import pipeline
from glam_fast.scoring.output import read_rows
import dataclasses

from tests.helpers import child_env
from tests.score_helpers import CLASSES, TINY_GLAM, make_audio_folder, make_checkpoint, write_tone

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return str(make_checkpoint(tmp_path_factory.mktemp("ckpt") / "glam", "glam"))


def score(*args) -> int:
    return main(["score", *map(str, args)])


def rows_by_path(path) -> dict:
    return {row["path"].rsplit("/", 1)[1]: row for row in read_rows(str(path))}


def test_every_bad_input_gets_its_row(tmp_path, capsys, monkeypatch):
    # a segment every 2 s keeps the 10-minute file cheap (297 segments, 5 batches of <= 64)
    recipe = dataclasses.replace(TINY_GLAM, segment_hop=32_000)
    ckpt = make_checkpoint(tmp_path / "ckpt", "glam", glam_recipe=recipe)
    d = tmp_path / "in"
    d.mkdir()
    (d / "zero.wav").write_bytes(b"")
    write_tone(d / "full.wav", 0.5)
    (d / "truncated_header.wav").write_bytes((d / "full.wav").read_bytes()[:30])
    (d / "random.wav").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    sf.write(d / "silence.wav", np.zeros(32_000, np.float32), 16_000)
    write_tone(d / "short.wav", 0.3)
    ten_minutes = np.tile(sf.read(write_tone(tmp_path / "piece.wav", 10.0))[0], 60)
    sf.write(d / "ten_minutes.wav", ten_minutes, 16_000, subtype="PCM_16")
    write_tone(d / "rate8k.wav", 1.0, 8_000)
    write_tone(d / "rate48k.wav", 1.0, 48_000)
    write_tone(d / "stereo.wav", 1.0, channels=2)
    nan = np.sin(np.arange(16_000) / 10).astype(np.float32)
    nan[1234] = np.nan
    sf.write(d / "float_nan.wav", nan, 16_000, subtype="FLOAT")
    write_tone(d / "locked.wav", 1.0)
    if os.geteuid() == 0:
        # root reads through chmod 000: simulate the permission error where the file is opened
        real_open = open

        def guarded_open(path, *args, **kwargs):
            if str(path).endswith("locked.wav"):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(pipeline.audio, "open", guarded_open, raising=False)
    else:
        os.chmod(d / "locked.wav", 0)
    batches = []
    real_run = pipeline._GLAMUnits.run
    monkeypatch.setattr(pipeline._GLAMUnits, "run", lambda self, inputs: batches.append(inputs[0].shape[0]) or real_run(self, inputs))

    out = tmp_path / "scores.csv"
    assert score(d, "-o", out, "--checkpoint", ckpt, "--batch-size", "64", "--workers", "2") == 0
    summary = capsys.readouterr().err
    assert "scored 12 files: 7 ok, 5 failed" in summary
    rows = rows_by_path(out)
    assert len(rows) == 12
    errors = {name: row["error"] for name, row in rows.items() if row["status"] == "error"}
    assert errors.keys() == {"zero.wav", "truncated_header.wav", "random.wav", "float_nan.wav", "locked.wav"}
    assert errors["zero.wav"].startswith("EmptyAudioFileError")
    assert errors["truncated_header.wav"].startswith("TruncatedAudioError")
    assert errors["random.wav"].startswith("NotAudioError")
    assert errors["float_nan.wav"].startswith("NonFiniteAudioError") and "sample 1234" in errors["float_nan.wav"]
    assert errors["locked.wav"].startswith("PermissionError: Permission denied")
    for name, row in rows.items():
        if row["status"] == "error":
            assert row["label"] == "" and row["prob_calm"] == ""
            continue
        assert row["label"] in CLASSES and row["error"] == ""
        assert sum(float(row[f"prob_{c}"]) for c in CLASSES) == pytest.approx(1.0)
    assert rows["short.wav"]["padded"] == "true" and rows["short.wav"]["n_segments"] == "1"
    assert rows["silence.wav"]["padded"] == "false"
    assert float(rows["ten_minutes.wav"]["duration_s"]) == pytest.approx(600.0)
    assert int(rows["ten_minutes.wav"]["n_segments"]) == recipe.n_segments(600 * 16_000) == 300
    assert float(rows["rate8k.wav"]["duration_s"]) == pytest.approx(1.0, abs=1e-3)
    assert max(batches) <= 64 and sum(batches) == sum(int(r["n_segments"] or 0) for r in rows.values())

    assert score(d, "-o", tmp_path / "strict.jsonl", "--checkpoint", ckpt, "--strict") == 1


def test_folder_without_audio_and_bad_output(tmp_path, ckpt, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.md").write_text("no audio here")
    assert score(tmp_path / "docs", "-o", tmp_path / "x.csv", "--checkpoint", ckpt) == 2
    assert "no audio files in this folder" in capsys.readouterr().err
    write_tone(tmp_path / "a.wav", 0.5)
    assert score(tmp_path / "a.wav", "-o", tmp_path / "x.txt", "--checkpoint", ckpt) == 2
    assert "must end in .csv, .jsonl, .parquet" in capsys.readouterr().err
    assert score(tmp_path / "a.wav", "-o", tmp_path / "x.csv", "--checkpoint", ckpt) == 0
    assert score(tmp_path / "a.wav", "-o", tmp_path / "x.csv", "--checkpoint", ckpt) == 2
    assert "already exists: pass --resume" in capsys.readouterr().err
    assert score(tmp_path / "a.wav", "-o", tmp_path / "x.csv", "--checkpoint", ckpt, "--overwrite") == 0


def test_formats_and_stdout(tmp_path, ckpt, capsys):
    clips = make_audio_folder(tmp_path / "in", 3)
    assert score(tmp_path / "in", "--checkpoint", ckpt) == 0
    printed = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["path"] for r in printed] == [str(c) for c in clips]
    jsonl = tmp_path / "s.jsonl"
    assert score(tmp_path / "in", "-o", jsonl, "--checkpoint", ckpt) == 0
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["label"] for r in rows] == [r["label"] for r in printed] and rows[0]["padded"] is False
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert score(tmp_path / "in", "-o", tmp_path / "s.parquet", "--checkpoint", ckpt) == 2
        assert "needs pyarrow" in capsys.readouterr().err
        return
    parquet = tmp_path / "s.parquet"
    assert score(tmp_path / "in", "-o", parquet, "--checkpoint", ckpt) == 0
    assert [r["label"] for r in read_rows(str(parquet))] == [r["label"] for r in rows]
    assert not Path(str(parquet) + ".journal.jsonl").exists()
    # a killed Parquet run leaves its journal: resuming finishes it
    Path(str(parquet) + ".journal.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1])[:20])
    parquet.unlink()
    assert score(tmp_path / "in", "-o", parquet, "--checkpoint", ckpt, "--resume") == 0
    assert "2 already done" not in capsys.readouterr().err  # the torn second row was scored again
    assert sorted(r["path"] for r in read_rows(str(parquet))) == sorted(r["path"] for r in rows)


def test_resume_drops_a_torn_line_and_skips_done_rows(tmp_path, ckpt, capsys):
    make_audio_folder(tmp_path / "in", 5)
    out = tmp_path / "s.csv"
    assert score(tmp_path / "in", "-o", out, "--checkpoint", ckpt) == 0
    complete = out.read_text()
    lines = complete.splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:25])  # header, 2 rows, a torn third row
    capsys.readouterr()
    assert score(tmp_path / "in", "-o", out, "--checkpoint", ckpt, "--resume") == 0
    assert "scored 3 files: 3 ok, 0 failed, 2 already done" in capsys.readouterr().err
    assert sorted(out.read_text().splitlines()) == sorted(complete.splitlines())
    other = make_checkpoint(tmp_path / "mssenet", "mssenet")
    (tmp_path / "other.csv").write_text("path,status\n")
    assert score(tmp_path / "in", "-o", tmp_path / "other.csv", "--checkpoint", other, "--resume") == 2
    assert "cannot resume" in capsys.readouterr().err


def _rows(path: Path) -> dict:
    return {r["path"]: (r["status"], r["error"], r["label"], round(float(r["prob_calm"] or "nan"), 4)) for r in read_rows(str(path))}


def test_killed_runs_resume_to_the_same_rows(tmp_path, ckpt):
    """SIGKILL a real `glam-fast score` process at several moments, resume each time: same set of rows."""
    make_audio_folder(tmp_path / "in", 30, seconds=0.6)
    (tmp_path / "in" / "broken.wav").write_bytes(b"RIFF....WAVEfmt ")
    whole = tmp_path / "whole.csv"
    assert score(tmp_path / "in", "-o", whole, "--checkpoint", ckpt, "--batch-size", "4") == 0
    expected = _rows(whole)
    assert len(expected) == 31

    out = tmp_path / "resumed.csv"
    command = [sys.executable, "-m", "glam_fast", "score", str(tmp_path / "in"), "-o", str(out), "--checkpoint", ckpt,
               "--batch-size", "4", "--workers", "1", "--flush-rows", "3", "--resume"]
    env = child_env()

    def lines() -> int:
        return out.read_bytes().count(b"\n") if out.exists() else 0

    kills = []
    for rows_before_kill in (0, 7, 19):  # before the header is written, then after some rows
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while process.poll() is None and lines() < rows_before_kill + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills.append(lines())
        process.wait()
    assert len(kills) == 3 and max(kills) < 31  # the run really was cut short each time
    finish = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    written = [r["path"] for r in read_rows(str(out))]
    assert len(written) == len(set(written)) == 31  # nothing lost, nothing duplicated
    got = _rows(out)
    assert got.keys() == expected.keys()
    for path, (status, error, label, p) in expected.items():
        assert got[path][:3] == (status, error, label)
        assert got[path][3] == pytest.approx(p, abs=2e-4, nan_ok=True)


def test_example_clips_score(tmp_path, ckpt):
    """The README's quick start scores examples/audio (here with a test model)."""
    out = tmp_path / "scores.csv"
    assert score(REPO / "examples" / "audio", "-o", out, "--checkpoint", ckpt) == 0
    rows = read_rows(str(out))
    assert len(rows) >= 5 and all(r["status"] == "ok" for r in rows)


def test_shards_cover_the_inputs_once(tmp_path, ckpt, capsys):
    clips = make_audio_folder(tmp_path / "in", 7, seconds=0.5)
    scored = []
    for i in range(3):
        out = tmp_path / f"shard{i}.jsonl"
        assert score(tmp_path / "in", "-o", out, "--checkpoint", ckpt, "--shard", f"{i}/3") == 0
        scored += [r["path"] for r in read_rows(str(out))]
    assert sorted(scored) == sorted(str(c) for c in clips)
    assert score(tmp_path / "in", "--checkpoint", ckpt, "--shard", "3/3") == 2
    assert "0 <= i < N" in capsys.readouterr().err
