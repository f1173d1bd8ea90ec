"""Corpus features with bad files skipped, and evaluation of a checkpoint on a labelled corpus."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from glam_fast import checkpoint as ckpt
from glam_fast.metrics import classification_metrics


def load_corpus(path: str | os.PathLike, labels: Sequence[str] | None = None):
    """A CSV manifest (``path,label[,speaker]``) when ``path`` is a file, else an EmoDB-named folder."""
    from glam_fast import data

    path = Path(path)
    if path.is_file():
        return data.read_manifest(path, labels)
    corpus = data.read_emodb(path)
    if labels is not None:
        corpus = data.Corpus(corpus.items, tuple(labels), corpus.source)
    return corpus


@dataclass
class CorpusFeatures:
    """Features of the readable files of a corpus. ``kept`` indexes ``corpus.items``; ``skipped``
    lists (path, reason) for files that could not be decoded."""

    features: list[dict]
    kept: list[int]
    skipped: list[tuple[str, str]]


def corpus_features(corpus, recipe, cache_dir: str | os.PathLike | None = None, device=None, chunk: int = 64) -> CorpusFeatures:
    """Features of every decodable file of ``corpus`` under ``recipe`` (cached when ``cache_dir``).

    Files that fail to decode are skipped and reported, never fatal; no readable file at all is an error.
    """
    from glam_fast import audio, data

    cache = data.FeatureCache(cache_dir) if cache_dir is not None else None
    paths = [str(p) for p in corpus.paths]
    features: list[dict | None] = [None] * len(paths)
    skipped = []
    for start in range(0, len(paths), chunk):
        index = list(range(start, min(start + chunk, len(paths))))
        try:
            computed = data.extract_features([paths[i] for i in index], recipe, cache=cache, device=device)
        except audio.AudioError:
            computed = []  # isolate the bad files one by one
            for i in index:
                try:
                    computed.extend(data.extract_features([paths[i]], recipe, cache=cache, device=device))
                except audio.AudioError as err:
                    computed.append(None)
                    skipped.append((paths[i], str(err)))
        for i, item in zip(index, computed):
            features[i] = item
    kept = [i for i, f in enumerate(features) if f is not None]
    if not kept:
        raise ValueError(f"{corpus.source}: none of the {len(paths)} files could be decoded (first error: {skipped[0][1]})")
    return CorpusFeatures([features[i] for i in kept], kept, skipped)


def evaluate_checkpoint(
    folder: str | os.PathLike, data_path: str | os.PathLike, device: str | torch.device = "cpu", cache_dir=None, batch_size: int = 256
) -> dict:
    """Utterance-level metrics of the checkpoint in ``folder`` on the corpus at ``data_path``.

    The corpus's labels must all be classes of the checkpoint (in any subset); features are
    computed with the recipe saved in the checkpoint. Returns classification_metrics plus
    ``skipped`` (undecodable files) and ``n_files``.
    """
    from glam_fast.recipes import recipe_from_dict
    from glam_fast.train import build_units, utterance_logits

    model, config = ckpt.load_checkpoint(folder, device)
    if "features" not in config:
        raise ckpt.CheckpointError(f"{folder}: config.json has no feature recipe ('features'); cannot compute inputs")
    recipe = recipe_from_dict(config["features"])
    corpus = load_corpus(data_path, labels=config["classes"])
    extracted = corpus_features(corpus, recipe, cache_dir, device)
    targets = corpus.targets[extracted.kept]
    units = build_units(config["model"], extracted.features, targets.tolist())
    predicted = utterance_logits(model, units, batch_size=batch_size).argmax(1)
    metrics = classification_metrics(targets.tolist(), predicted.tolist(), config["classes"])
    metrics["skipped"] = [{"path": p, "error": e} for p, e in extracted.skipped]
    metrics["n_files"] = len(corpus)
    return metrics
