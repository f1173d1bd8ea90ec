"""Evaluation protocols: how a labelled corpus is split into train / validation / test.

- ``speaker-independent`` (the default, the honest number): K folds over speakers; each fold tests
  on its speakers, and the model is chosen on a validation speaker carved from the training
  speakers only, never on the test fold.
- ``paper``: the authors' protocol of a model, for comparison with their numbers. GLAM: random
  80/20 utterance splits, one per seed, reporting the epoch with the best (WA+UA)/2 ON THE TEST
  SPLIT (optimistic: test-set selection). MS-SENet: 10-fold shuffled KFold over utterances
  (seed 44), last epoch. AFCN has no published protocol.

- ``all``: one split training on every item for a fixed number of epochs, no evaluation (the way
  to train a final model once a protocol has measured the recipe).

Splits are lists of indices into the corpus item list, deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

PROTOCOLS = ("speaker-independent", "paper", "all")


@dataclass(frozen=True)
class Split:
    """One fold. ``select_on`` says where the epoch is chosen: 'validation', 'test' (optimistic,
    the paper protocol of GLAM) or 'last' (the final epoch)."""

    name: str
    train: list[int]
    validation: list[int]
    test: list[int]
    select_on: str
    test_speakers: tuple[str, ...] = ()
    validation_speakers: tuple[str, ...] = ()


def speaker_folds(speakers: Sequence[str | None], folds: int = 5) -> list[Split]:
    """K folds over speakers (sorted, dealt round robin); validation = one speaker of the next fold.

    ``speakers[i]`` is the speaker of item i. Every speaker is a test speaker exactly once.
    """
    if any(s is None or s == "" for s in speakers):
        raise ValueError("the speaker-independent protocol needs a speaker for every item (add a speaker column to the manifest)")
    unique = sorted(set(speakers))
    if folds < 2:
        raise ValueError(f"need at least 2 folds, got {folds}")
    if len(unique) < max(folds, 3):
        raise ValueError(
            f"{len(unique)} speakers cannot make {folds} speaker-independent folds with a validation speaker: "
            f"fold {len(unique)} would have no test speakers (need at least {max(folds, 3)} speakers)"
        )
    groups = [unique[i::folds] for i in range(folds)]
    splits = []
    for k, test_group in enumerate(groups):
        val_speaker = groups[(k + 1) % folds][0]
        test_set, val_set = set(test_group), {val_speaker}
        splits.append(
            Split(
                name=f"fold{k}",
                train=[i for i, s in enumerate(speakers) if s not in test_set and s not in val_set],
                validation=[i for i, s in enumerate(speakers) if s in val_set],
                test=[i for i, s in enumerate(speakers) if s in test_set],
                select_on="validation",
                test_speakers=tuple(test_group),
                validation_speakers=(val_speaker,),
            )
        )
    return splits


def random_holdout(n_items: int, seeds: Sequence[int], test_fraction: float = 0.2) -> list[Split]:
    """GLAM's paper protocol: one random utterance split per seed, epoch chosen on the test split."""
    splits = []
    for seed in seeds:
        order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed)).tolist()
        n_test = max(1, round(n_items * test_fraction))
        splits.append(Split(f"seed{seed}", sorted(order[n_test:]), [], sorted(order[:n_test]), select_on="test"))
    return splits


def shuffled_kfold(n_items: int, folds: int = 10, seed: int = 44) -> list[Split]:
    """MS-SENet's paper protocol: shuffled K-fold over utterances, the last epoch evaluated."""
    if n_items < folds:
        raise ValueError(f"{n_items} items cannot make {folds} folds")
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed)).tolist()
    bounds = [round(k * n_items / folds) for k in range(folds + 1)]
    splits = []
    for k in range(folds):
        test = sorted(order[bounds[k] : bounds[k + 1]])
        held = set(test)
        splits.append(Split(f"fold{k}", [i for i in range(n_items) if i not in held], [], test, select_on="last"))
    return splits


def make_splits(protocol: str, model: str, speakers: Sequence[str | None], folds: int | None = None, seed: int = 0) -> list[Split]:
    """The splits of ``protocol`` for ``model`` over items with the given speakers."""
    if protocol == "speaker-independent":
        return speaker_folds(speakers, folds or 5)
    if protocol == "paper":
        if model == "glam":
            return random_holdout(len(speakers), [seed + i for i in range(folds or 1)])
        if model == "mssenet":
            return shuffled_kfold(len(speakers), folds or 10, seed=44)
        raise ValueError(f"{model} has no published evaluation protocol; use --protocol speaker-independent")
    if protocol == "all":
        return [Split("all", list(range(len(speakers))), [], [], select_on="last")]
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
