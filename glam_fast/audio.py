"""Decoding audio to mono float32 waveforms, with typed errors for every way a file can be bad.

- :func:`load` reads a file through libsndfile (``soundfile``: WAV int16/int24/int32/float, FLAC,
  OGG, and whatever else libsndfile reads), :func:`decode` does the same for an encoded file held
  in memory, :func:`load_array` takes samples already decoded, :func:`load_many` loads many files
  on a few threads (libsndfile and soxr release the GIL). All three mix channels to mono
  (mean, as ``librosa.to_mono``) and resample with soxr (``"HQ"``, band-limited) when ``sr`` is
  given; the resampled length is ``ceil(samples * sr / rate)``, as ``librosa.load``. The result
  for a file equals ``librosa.load(path, sr=sr)`` (librosa >= 0.10, ``res_type="soxr_hq"``).
- Every failure raises a subclass of :class:`AudioError` whose message names the file and the
  problem, so a batch job can report the bad file and go on with the others.

soundfile and soxr are imported on first use, so this module (and the error types) import
without them.
"""

from __future__ import annotations

import io
import math
import os
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

# Leading bytes of the containers recognised as audio when libsndfile cannot open a file: such a
# file is reported as corrupt (a real audio file gone bad) rather than as "not audio".
_AUDIO_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"fLaC", b"OggS", b"FORM", b".snd", b"caff", b"ID3")
_HEADER_BYTES = 1 << 16  # enough to walk the RIFF chunks in front of a WAV file's data chunk
_WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # data sizes that streaming writers / RF64 leave unset


class AudioError(Exception):
    """A waveform could not be produced from this source. ``source`` names it, ``problem`` says why."""

    def __init__(self, source: str, problem: str):
        super().__init__(source, problem)
        self.source, self.problem = source, problem

    def __str__(self) -> str:
        return f"{self.source}: {self.problem}"


class AudioFileNotFoundError(AudioError):
    """The path does not exist (or is not a regular file)."""


class EmptyAudioFileError(AudioError):
    """The file has zero bytes."""


class NotAudioError(AudioError):
    """The content is not in any audio format libsndfile recognises."""


class CorruptAudioError(AudioError):
    """A recognised audio format that fails to decode."""


class TruncatedAudioError(CorruptAudioError):
    """The file ends before its header says it should."""


class NoSamplesError(AudioError):
    """Valid audio holding zero samples."""


class NonFiniteAudioError(AudioError):
    """Samples that are NaN or infinite (possible in float WAV files)."""


def _soundfile():
    try:
        import soundfile
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("decoding audio needs the soundfile package: pip install soundfile") from error
    return soundfile


def _check_rate(sr: int | None, what: str) -> None:
    if sr is not None and (isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0):
        raise ValueError(f"{what} must be a positive integer number of Hz, got {sr!r}")


def _wav_truncation(header: bytes, total_size: int) -> str | None:
    """Why a RIFF/WAVE file of ``total_size`` bytes starting with ``header`` is cut short, or None.

    Walks the chunks up to the data chunk. libsndfile reads a WAV file whose data chunk is cut
    short without complaint (it returns the samples that are there), so this is checked here.
    """
    if header[:4] not in (b"RIFF", b"RIFX") or (len(header) >= 12 and header[8:12] != b"WAVE"):
        return None
    if total_size < 12:
        return f"the file ends inside its RIFF header ({total_size} bytes)"
    size_format = "<I" if header[:4] == b"RIFF" else ">I"
    offset = 12
    while offset + 8 <= min(len(header), total_size):
        chunk_id = header[offset : offset + 4]
        (chunk_size,) = struct.unpack(size_format, header[offset + 4 : offset + 8])
        if chunk_id == b"data":
            present = total_size - offset - 8
            if chunk_size not in _WAV_UNKNOWN_SIZES and chunk_size > present:
                return f"its WAV header declares {chunk_size} bytes of audio data but only {present} are present"
            return None
        offset += 8 + chunk_size + (chunk_size & 1)
    if offset + 8 > total_size:
        return f"the file ends ({total_size} bytes) before the WAV data chunk"
    return None  # data chunk beyond the header bytes read: leave the check to libsndfile


def _decode(source, name: str, header: bytes, total_size: int, sr: int | None) -> tuple[torch.Tensor, int]:
    """Shared by :func:`load` and :func:`decode`: ``source`` is a path or a binary file object."""
    soundfile = _soundfile()
    if total_size == 0:
        raise EmptyAudioFileError(name, "the file is empty (0 bytes)")
    cut_short = _wav_truncation(header, total_size)
    if cut_short is not None:
        raise TruncatedAudioError(name, f"truncated: {cut_short}")
    known_container = header.startswith(_AUDIO_MAGIC)
    try:
        with soundfile.SoundFile(source) as stream:
            rate = stream.samplerate
            try:
                samples = stream.read(dtype="float32", always_2d=True)  # (frames, channels)
            except soundfile.LibsndfileError as error:
                raise CorruptAudioError(name, f"{stream.format} audio that fails to decode ({error.error_string}): corrupt or truncated") from None
    except soundfile.LibsndfileError as error:
        if known_container:
            raise CorruptAudioError(name, f"audio file that libsndfile cannot open ({error.error_string}): corrupt or truncated") from None
        raise NotAudioError(name, f"not an audio file in a format libsndfile reads ({error.error_string})") from None
    return _finish(samples, rate, sr, name)


def _finish(samples: np.ndarray, rate: int, sr: int | None, name: str) -> tuple[torch.Tensor, int]:
    """(frames, channels) float samples -> checked mono float32 tensor, resampled to ``sr``."""
    if samples.shape[0] == 0:
        raise NoSamplesError(name, "the audio holds no samples")
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int(samples.size - np.count_nonzero(finite))
        first = int(np.argmin(finite.all(axis=1)))
        raise NonFiniteAudioError(
            name, f"{bad} NaN or infinite sample values, the first at sample {first} ({first / rate:.3f} s)"
        )
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if sr is not None and sr != rate:
        mono = resample_array(mono, rate, sr)
        rate = sr
    return torch.from_numpy(mono), int(rate)


def resample_array(samples: np.ndarray, rate: int, sr: int) -> np.ndarray:
    """Band-limited resampling of 1-D float32 ``samples`` from ``rate`` to ``sr`` Hz (soxr, "HQ").

    Output length ``ceil(len(samples) * sr / rate)`` (zero-padded or trimmed by the last sample or
    so), as ``librosa.resample(res_type="soxr_hq")``.
    """
    try:
        import soxr
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("resampling needs the soxr package: pip install soxr") from error
    _check_rate(rate, "rate")
    _check_rate(sr, "sr")
    resampled = soxr.resample(samples, rate, sr, quality="HQ")
    length = math.ceil(samples.shape[0] * sr / rate)
    if resampled.shape[0] >= length:
        return np.ascontiguousarray(resampled[:length])
    return np.pad(resampled, (0, length - resampled.shape[0]))


def load(path: str | os.PathLike, sr: int | None = None) -> tuple[torch.Tensor, int]:
    """Decode an audio file -> (waveform (samples,) float32 CPU tensor, sample rate in Hz).

    Multi-channel audio is averaged to mono; with ``sr`` the waveform is resampled to ``sr`` Hz
    (soxr HQ) and ``sr`` is returned. Integer PCM is scaled to [-1, 1) as libsndfile does.

    Raises an :class:`AudioError` subclass naming the file: :class:`AudioFileNotFoundError`,
    :class:`EmptyAudioFileError`, :class:`NotAudioError`, :class:`TruncatedAudioError`,
    :class:`CorruptAudioError`, :class:`NoSamplesError`, :class:`NonFiniteAudioError`.
    """
    _check_rate(sr, "sr")
    name = os.fspath(path)
    if not os.path.exists(name):
        raise AudioFileNotFoundError(name, "no such file")
    if not os.path.isfile(name):
        raise AudioFileNotFoundError(name, "not a regular file")
    with open(name, "rb") as handle:
        header = handle.read(_HEADER_BYTES)
    return _decode(name, name, header, os.path.getsize(name), sr)


def load_many(
    paths: Sequence[str | os.PathLike], sr: int | None = None, threads: int = 2, return_errors: bool = False
) -> list:
    """:func:`load` for many files on ``threads`` threads, results in the order of ``paths``.

    Returns a list of (waveform, sample rate). A file that fails raises its :class:`AudioError`
    (the first failing file in ``paths`` order); with ``return_errors=True`` the error takes that
    file's place in the list instead and the other files are still returned.
    """
    _check_rate(sr, "sr")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")

    def load_one(path):
        try:
            return load(path, sr)
        except AudioError as error:
            if return_errors:
                return error
            raise

    if threads == 1 or len(paths) < 2:
        return [load_one(path) for path in paths]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(load_one, paths))


def decode(data: bytes, sr: int | None = None, name: str = "<bytes>") -> tuple[torch.Tensor, int]:
    """:func:`load` for an encoded audio file held in memory (e.g. an upload); ``name`` labels errors."""
    _check_rate(sr, "sr")
    data = bytes(data)
    return _decode(io.BytesIO(data), name, data[:_HEADER_BYTES], len(data), sr)


def load_array(samples, sample_rate: int, sr: int | None = None, name: str = "<array>") -> tuple[torch.Tensor, int]:
    """The checks, mono mix and resampling of :func:`load`, for samples already decoded.

    samples: numpy array or torch tensor, floating point, (samples,) or (samples, channels) — the
    layout soundfile returns. Returns (waveform (samples,) float32 CPU tensor, rate); raises
    :class:`NoSamplesError` / :class:`NonFiniteAudioError` naming ``name``.
    """
    _check_rate(sample_rate, "sample_rate")
    _check_rate(sr, "sr")
    if isinstance(samples, torch.Tensor):
        if not samples.is_floating_point():
            raise TypeError(f"{name}: load_array expects floating-point samples in [-1, 1], got dtype {samples.dtype}")
        samples = samples.detach().to("cpu", torch.float32).numpy()
    samples = np.asarray(samples)
    if not np.issubdtype(samples.dtype, np.floating):
        raise TypeError(f"{name}: load_array expects floating-point samples in [-1, 1], got dtype {samples.dtype}")
    if samples.ndim == 1:
        samples = samples[:, None]
    elif samples.ndim != 2:
        raise ValueError(f"{name}: load_array expects shape (samples,) or (samples, channels), got {samples.shape}")
    if samples.shape[1] == 0:
        raise NoSamplesError(name, f"the array has no channels (shape {samples.shape})")
    return _finish(samples.astype(np.float32, copy=False), int(sample_rate), sr, name)
