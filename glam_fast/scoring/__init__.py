"""Batch offline scoring of audio files (``glam-fast score``, :class:`Scorer`).

- :mod:`.pipeline`: :class:`Scorer` (decode workers, features and model batched across files).
- :mod:`.inputs`: files, folders, globs and manifests -> paths; ``--shard i/N``.
- :mod:`.output`: durable CSV / JSON Lines / Parquet rows and ``--resume``.
- :mod:`.job`: the command-line job (progress, summary).
- :mod:`.ray_data`: scoring a Ray Data dataset with an actor pool (optional extra ``ray``).
"""

from glam_fast.scoring.pipeline import Scorer, ScoreResult, ScoreStats

__all__ = ["Scorer", "ScoreResult", "ScoreStats"]
