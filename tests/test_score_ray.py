"""Scoring a Ray Data dataset with an actor pool, on a local Ray instance (skipped without ray)."""

import os

import pytest

from tests.score_helpers import make_audio_folder, make_checkpoint

ray = pytest.importorskip("ray", reason="the optional extra 'ray' is not installed")


@pytest.mark.slow
def test_ray_dataset_scores_like_the_scorer(tmp_path, monkeypatch):
    from glam_fast.scoring import Scorer
    from glam_fast.scoring.ray_data import paths_dataset, score_dataset

    ckpt = str(make_checkpoint(tmp_path / "glam", "glam"))
    clips = [str(p) for p in make_audio_folder(tmp_path / "in", 5)]
    (tmp_path / "in" / "bad.wav").write_bytes(b"not audio")
    paths = [*clips, str(tmp_path / "in" / "bad.wav")]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setenv("PYTHONPATH", repo + os.pathsep + os.environ.get("PYTHONPATH", ""))  # workers import this checkout
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        scored = score_dataset(paths_dataset(paths), checkpoint=ckpt, concurrency=1, num_cpus=1, files_per_batch=4, workers=1)
        rows = {row["path"]: row for row in scored.take_all()}
    finally:
        ray.shutdown()
    expected = {r.path: r for r in Scorer(ckpt, device="cpu").score(paths)}
    assert rows.keys() == expected.keys()
    for path, result in expected.items():
        assert rows[path]["status"] == result.status
        if result.ok:
            assert rows[path]["label"] == result.label
            assert rows[path]["prob_calm"] == pytest.approx(result.probabilities[0], abs=1e-5)
        else:
            assert rows[path]["error"].startswith("NotAudioError")
