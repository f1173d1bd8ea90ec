"""Scoring on a Ray cluster with Ray Data (optional extra: ``pip install "glam-fast[ray]"``).

For collections that outgrow one machine: a dataset of paths is scored by a pool of actors, each
holding one :class:`~glam_fast.scoring.pipeline.Scorer` (the model is loaded once per actor, on a
GPU when ``num_gpus`` > 0), through ``Dataset.map_batches``::

    import ray
    from glam_fast.scoring.ray_data import paths_dataset, score_dataset

    ds = paths_dataset(["s3-mounted/a.wav", ...])           # or any dataset with a "path" column
    scored = score_dataset(ds, checkpoint="runs/glam/final", concurrency=4, num_gpus=1)
    scored.write_parquet("scores/")                          # Ray writes the files in parallel

Rows have the columns of ``glam-fast score`` (``path, status, error, duration_s, n_segments,
padded, label, prob_<class>``). Paths must be readable from every worker node (shared or mounted
storage). Ray itself handles retries of failed tasks; for resuming a killed job at file
granularity, ``glam-fast score --shard i/N --resume`` per machine is the simpler tool.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError('scoring with Ray Data needs ray: pip install "glam-fast[ray]"') from None
    return ray


class ScoreBatch:
    """Ray Data callable class: ``{"path": array of str}`` batch -> score columns (numpy)."""

    def __init__(self, checkpoint: str | None = None, device: str | None = None, batch_size: int | None = None, workers: int | None = None):
        from glam_fast.scoring.pipeline import Scorer

        self.scorer = Scorer(checkpoint, device=device, batch_size=batch_size, workers=workers)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from glam_fast.scoring.output import columns_for, result_row

        columns = columns_for(self.scorer.classes)
        rows = [result_row(r, self.scorer.classes) for r in self.scorer.score([str(p) for p in batch["path"]])]
        out = {}
        for column in columns:
            values = [row[column] for row in rows]
            if column.startswith("prob_") or column == "duration_s":
                out[column] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            elif column == "n_segments":
                out[column] = np.array([-1 if v is None else v for v in values], dtype=np.int64)
            else:
                out[column] = np.array(["" if v is None else str(v) for v in values], dtype=object)
        return out


def paths_dataset(paths: Sequence[str | os.PathLike]):
    """A Ray dataset with one ``path`` column."""
    ray = _ray()
    return ray.data.from_items([{"path": os.fspath(p)} for p in paths])


def score_dataset(
    dataset,
    checkpoint: str | None = None,
    concurrency: int = 1,
    num_gpus: float = 0,
    num_cpus: float | None = None,
    files_per_batch: int = 64,
    device: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
):
    """``dataset.map_batches`` over a pool of ``concurrency`` scoring actors (lazy; Ray executes it
    when the result is consumed or written). ``num_gpus`` per actor (> 0 puts each actor's model on
    its GPU); ``files_per_batch`` paths go to an actor at a time. Empty cells of error rows are NaN
    (probabilities, duration), -1 (n_segments) or "" (strings)."""
    _ray()
    if device is None:
        device = "cuda" if num_gpus else "cpu"
    remote_args = {"num_gpus": num_gpus}
    if num_cpus is not None:
        remote_args["num_cpus"] = num_cpus
    return dataset.map_batches(
        ScoreBatch,
        fn_constructor_kwargs={"checkpoint": checkpoint, "device": device, "batch_size": batch_size, "workers": workers},
        batch_size=files_per_batch,
        batch_format="numpy",
        concurrency=concurrency,
        **remote_args,
    )
