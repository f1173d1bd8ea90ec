"""Which files to score: expanding command-line inputs, and splitting them into shards.

An input is a file, a folder (searched recursively for audio files), a glob pattern, or a
manifest (a ``.csv`` file with a ``path`` column, or a ``.txt`` / ``.lst`` file with one path per
line; relative paths in a manifest are taken relative to the manifest's folder). A file named
explicitly is scored whatever its extension (a bad one gets an error row); folders and globs that
match folders contribute only files with an audio extension.

Paths are normalised (``os.path.normpath``, ``/`` separators) and de-duplicated, so a file
reached twice (a folder and a glob) is scored once. The normalised path is the key of an output
row (``--resume``) and of sharding: :func:`shard_index` hashes it, so every machine of a job array
computes the same partition whatever order the files were listed in, as long as the inputs are
written the same way.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
from collections.abc import Iterable, Sequence

# Extensions searched for in folders (lower case). libsndfile reads all of these (MP3 since 1.1).
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf", ".w64", ".rf64"})
MANIFEST_EXTENSIONS = frozenset({".csv", ".txt", ".lst"})


class InputError(ValueError):
    """An input that names nothing to score (missing path, empty folder, bad manifest)."""


def normalise(path: str | os.PathLike) -> str:
    """The key of a path: ``os.path.normpath`` with ``/`` separators (no filesystem access)."""
    return os.path.normpath(os.fspath(path)).replace(os.sep, "/")


def is_audio_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS


def _audio_under(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(os.path.join(root, name) for name in sorted(files) if is_audio_name(name))
    return found


def read_path_manifest(path: str) -> list[str]:
    """Paths listed in a manifest: CSV with a ``path`` column, or one path per line (``#`` comments)."""
    folder = os.path.dirname(path)
    if path.lower().endswith(".csv"):
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [name.strip() for name in (reader.fieldnames or [])]
            if "path" not in columns:
                raise InputError(f"{path}: a CSV manifest needs a header with a 'path' column, found {columns or 'no header'}")
            reader.fieldnames = columns
            entries = [(row.get("path") or "").strip() for row in reader]
    else:
        with open(path, encoding="utf-8-sig") as handle:
            entries = [line.strip() for line in handle]
        entries = [entry for entry in entries if entry and not entry.startswith("#")]
    entries = [entry for entry in entries if entry]
    if not entries:
        raise InputError(f"{path}: the manifest lists no files")
    return [os.path.join(folder, entry) for entry in entries]


def expand_one(spec: str) -> list[str]:
    """The files one input names (see the module docstring); raises :class:`InputError` if none."""
    if os.path.isdir(spec):
        files = _audio_under(spec)
        if not files:
            raise InputError(f"{spec}: no audio files in this folder (searched recursively for {', '.join(sorted(AUDIO_EXTENSIONS))})")
        return files
    if os.path.isfile(spec) and os.path.splitext(spec)[1].lower() in MANIFEST_EXTENSIONS:
        return read_path_manifest(spec)
    if os.path.exists(spec):
        return [spec]  # a file (or anything else on disk: it gets its own error row)
    if glob.has_magic(spec):
        matches = sorted(glob.glob(spec, recursive=True))
        files = []
        for match in matches:
            files.extend(_audio_under(match) if os.path.isdir(match) else [match])
        if not files:
            raise InputError(f"{spec}: the pattern matches no files")
        return files
    raise InputError(f"{spec}: no such file or folder")


def expand_inputs(specs: Iterable[str | os.PathLike]) -> list[str]:
    """All files named by ``specs``, normalised, first occurrence kept, in the order given."""
    seen, paths = set(), []
    for spec in specs:
        for path in expand_one(os.fspath(spec)):
            key = normalise(path)
            if key not in seen:
                seen.add(key)
                paths.append(key)
    return paths


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> (i, N) with 0 <= i < N (job-array indices start at 0)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/N (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard i/N needs N >= 1 and 0 <= i < N, got {text!r}")
    return index, count


def shard_index(path: str, count: int) -> int:
    """The shard (0 .. count-1) that owns ``path``: a stable hash of its normalised form."""
    digest = hashlib.sha256(normalise(path).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def select_shard(paths: Sequence[str], index: int, count: int) -> list[str]:
    """The paths of shard ``index`` of ``count``, in their original order."""
    return [path for path in paths if shard_index(path, count) == index]
