"""Corpora (which file has which label and speaker) and an on-disk feature cache.

- :func:`read_manifest`: a CSV file with a header and columns ``path,label[,speaker]`` (more
  columns are ignored; relative paths are resolved against the manifest's folder).
- :func:`read_emodb`: the Berlin EmoDB naming convention, e.g. ``03a01Fa.wav``: speaker "03" (first
  two characters), emotion code "F" (sixth character) -> "happiness".
- :class:`FeatureCache` + :func:`extract_features`: features of each file for a recipe, computed
  once and stored as safetensors, keyed by a hash of the recipe and of the file's path, size and
  modification time, so repeated training runs reuse them and a changed file is recomputed.

Reading a corpus does not open the audio: a file that cannot be decoded is reported (as an
:class:`glam_fast.audio.AudioError` naming it) when its features are extracted.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

# EmoDB's emotion codes (sixth character of a file name), in the corpus documentation's order.
EMODB_EMOTIONS = {
    "W": "anger",
    "L": "boredom",
    "E": "disgust",
    "A": "fear",
    "F": "happiness",
    "T": "sadness",
    "N": "neutral",
}
EMODB_LABELS = tuple(EMODB_EMOTIONS.values())
# speaker (2 digits), text (letter + 2 digits), emotion code, version letter(s).
_EMODB_NAME = re.compile(r"^(\d\d)([a-z]\d\d)([A-Za-z])([a-z]+)\.wav$")

# Part of every cache key: bump when the numbers a recipe produces change (invalidates old entries).
FEATURES_VERSION = 1


class CorpusError(ValueError):
    """A manifest or corpus folder that cannot be used as it is (the message says what and where)."""


@dataclass(frozen=True)
class CorpusItem:
    """One utterance: ``path`` to its audio, its ``label`` and (if known) its ``speaker``."""

    path: Path
    label: str
    speaker: str | None = None


@dataclass(frozen=True)
class Corpus:
    """Utterances with labels. ``labels`` fixes the class order: class index i is ``labels[i]``."""

    items: tuple[CorpusItem, ...]
    labels: tuple[str, ...]
    source: str

    def __post_init__(self):
        if not self.items:
            raise CorpusError(f"{self.source}: the corpus is empty")
        if len(set(self.labels)) != len(self.labels):
            raise CorpusError(f"{self.source}: duplicate class labels in {self.labels}")
        allowed = set(self.labels)
        unknown = Counter(item.label for item in self.items if item.label not in allowed)
        if unknown:
            first = next(item for item in self.items if item.label not in allowed)
            raise CorpusError(
                f"{self.source}: unknown labels {dict(unknown)} (first: {first.path}); known labels: {list(self.labels)}"
            )

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[CorpusItem]:
        return iter(self.items)

    def __getitem__(self, index: int) -> CorpusItem:
        return self.items[index]

    @property
    def paths(self) -> list[Path]:
        return [item.path for item in self.items]

    @property
    def targets(self) -> torch.Tensor:
        """(N,) int64 class index of each item (position of its label in ``labels``)."""
        index = {label: i for i, label in enumerate(self.labels)}
        return torch.tensor([index[item.label] for item in self.items], dtype=torch.long)

    @property
    def speakers(self) -> tuple[str, ...]:
        """Distinct speakers, sorted (empty if the corpus has no speaker information)."""
        return tuple(sorted({item.speaker for item in self.items if item.speaker is not None}))

    def label_counts(self) -> dict[str, int]:
        counts = Counter(item.label for item in self.items)
        return {label: counts[label] for label in self.labels}


def read_manifest(path: str | os.PathLike, labels: Sequence[str] | None = None) -> Corpus:
    """Read a CSV manifest with columns ``path,label[,speaker]`` (header row required).

    Relative paths are resolved against the manifest's folder. ``labels`` fixes the class order
    (and any other label is an error); by default the sorted distinct labels of the manifest.
    Raises :class:`CorpusError` for missing columns, empty cells, no rows or unknown labels.
    """
    manifest = Path(path)
    if not manifest.is_file():
        raise CorpusError(f"manifest not found: {manifest}")
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip() for name in (reader.fieldnames or [])]
        missing = [name for name in ("path", "label") if name not in columns]
        if missing:
            raise CorpusError(f"{manifest}: missing column(s) {missing}; the header must name path,label[,speaker], found {columns}")
        reader.fieldnames = columns
        has_speaker = "speaker" in columns
        items = []
        for row in reader:
            line = reader.line_num
            audio_path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            if not audio_path or not label:
                raise CorpusError(f"{manifest}, line {line}: empty path or label")
            speaker = None
            if has_speaker:
                speaker = (row.get("speaker") or "").strip() or None
            items.append(CorpusItem((manifest.parent / audio_path), label, speaker))
    if not items:
        raise CorpusError(f"{manifest}: the manifest has no rows (empty corpus)")
    classes = tuple(labels) if labels is not None else tuple(sorted({item.label for item in items}))
    return Corpus(tuple(items), classes, str(manifest))


def read_emodb(folder: str | os.PathLike) -> Corpus:
    """Read EmoDB from its file names: ``folder`` holds the ``*.wav`` files, or a ``wav/`` subfolder does.

    Label from the sixth character (W L E A F T N -> anger boredom disgust fear happiness sadness
    neutral; class order :data:`EMODB_LABELS`), speaker from the first two. Raises
    :class:`CorpusError` for a name that does not follow the convention or has an unknown code.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CorpusError(f"EmoDB folder not found: {root}")
    wav_dir = root / "wav" if (root / "wav").is_dir() else root
    items = []
    for audio_path in sorted(wav_dir.glob("*.wav")):
        match = _EMODB_NAME.match(audio_path.name)
        if match is None:
            raise CorpusError(f"{audio_path}: not an EmoDB file name (expected e.g. 03a01Fa.wav: speaker, text, emotion code, version)")
        speaker, _, code, _ = match.groups()
        if code not in EMODB_EMOTIONS:
            raise CorpusError(f"{audio_path}: unknown EmoDB emotion code {code!r}; known codes: {EMODB_EMOTIONS}")
        items.append(CorpusItem(audio_path, EMODB_EMOTIONS[code], speaker))
    if not items:
        raise CorpusError(f"{wav_dir}: no .wav files (empty corpus)")
    return Corpus(tuple(items), EMODB_LABELS, str(wav_dir))


class FeatureCache:
    """Per-file features on disk, shared safely between runs.

    Layout: ``root/<recipe key>/<file key>.safetensors`` (plus ``recipe.json`` saying what the
    recipe key stands for). The recipe key hashes the recipe's ``to_dict()`` and
    :data:`FEATURES_VERSION`; the file key hashes the audio file's absolute path, size and mtime
    (ns), so editing or replacing a file makes a new entry. Writes go to a temporary file renamed
    into place (atomic: readers never see half a file, concurrent writers of one entry are fine).
    An entry that cannot be read counts as a miss and is rewritten. Nothing is pickled.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def recipe_dir(self, recipe) -> Path:
        described = json.dumps({"features_version": FEATURES_VERSION, **recipe.to_dict()}, sort_keys=True)
        return self.root / hashlib.sha256(described.encode()).hexdigest()[:16]

    def entry(self, path: str | os.PathLike, recipe) -> Path:
        """Where the features of ``path`` under ``recipe`` are (or would be) stored."""
        return self._entry(file_identity(path), recipe)

    def _entry(self, identity: dict[str, str], recipe) -> Path:
        key = hashlib.sha256("\0".join(identity.values()).encode()).hexdigest()[:32]
        return self.recipe_dir(recipe) / f"{key}.safetensors"

    def load(self, path: str | os.PathLike, recipe) -> dict[str, torch.Tensor] | None:
        """The cached tensors for ``path``, or None on a miss (also when ``path`` does not exist)."""
        from safetensors import SafetensorError, safe_open

        try:
            identity = file_identity(path)
            with safe_open(str(self._entry(identity, recipe)), framework="pt") as stored:
                if stored.metadata() != identity:  # a hash collision or a foreign file
                    return None
                return {name: stored.get_tensor(name) for name in stored.keys()}
        except (SafetensorError, OSError):
            return None

    def store(self, path: str | os.PathLike, recipe, tensors: dict[str, torch.Tensor], identity: dict[str, str] | None = None) -> Path:
        """Write the tensors of ``path`` atomically; returns the entry's path.

        ``identity``: :func:`file_identity` of ``path`` taken before it was decoded (default: now),
        so a file changed while its features were computed is not stored under its new identity.
        """
        from safetensors.torch import save_file

        identity = file_identity(path) if identity is None else identity
        entry = self._entry(identity, recipe)
        entry.parent.mkdir(parents=True, exist_ok=True)
        description = entry.parent / "recipe.json"
        if not description.exists():
            text = json.dumps({"features_version": FEATURES_VERSION, **recipe.to_dict()}, indent=1, sort_keys=True)
            _write_atomic(description, lambda target: Path(target).write_text(text))
        contiguous = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
        _write_atomic(entry, lambda target: save_file(contiguous, target, metadata=identity))
        return entry


def file_identity(path: str | os.PathLike) -> dict[str, str]:
    """What the cache keys a file by: its absolute path, size in bytes and mtime in ns (as strings)."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return {"source": str(resolved), "size": str(stat.st_size), "mtime_ns": str(stat.st_mtime_ns)}


def _write_atomic(destination: Path, write) -> None:
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; cache entries are meant to be shared
        os.replace(temporary, destination)
    except BaseException:
        os.unlink(temporary)
        raise


def extract_features(
    paths: Sequence[str | os.PathLike],
    recipe,
    cache: FeatureCache | None = None,
    device=None,
    batch_size: int = 64,
    threads: int = 2,
) -> list[dict[str, torch.Tensor]]:
    """Features of each file under ``recipe`` (see the recipes' ``compute``), in the order given.

    Files found in ``cache`` are read from it; the others are decoded (at recipe.sample_rate),
    computed ``batch_size`` files at a time on ``device`` (default CPU) and stored; decoding runs
    on ``threads`` threads. Returns CPU tensors. A file that cannot be decoded raises its
    :class:`glam_fast.audio.AudioError`.
    """
    from glam_fast import audio

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results: list[dict[str, torch.Tensor] | None] = [None] * len(paths)
    missing = []
    for i, path in enumerate(paths):
        if cache is not None:
            results[i] = cache.load(path, recipe)
        if results[i] is None:
            missing.append(i)
    for start in range(0, len(missing), batch_size):
        batch = missing[start : start + batch_size]
        # Identities are taken before decoding: a file edited meanwhile gets recomputed next time.
        identities = [file_identity(paths[i]) if cache is not None and os.path.isfile(paths[i]) else None for i in batch]
        decoded = audio.load_many([paths[i] for i in batch], sr=recipe.sample_rate, threads=threads)
        waveforms = [waveform for waveform, _ in decoded]
        for i, identity, computed in zip(batch, identities, recipe.compute(waveforms, device=device)):
            if cache is not None:
                cache.store(paths[i], recipe, computed, identity)
            results[i] = computed
    return results
