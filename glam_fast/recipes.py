"""Model inputs from waveforms, one recipe per model (spec: RECIPES.md).

Each recipe is a small frozen dataclass (:class:`GLAMRecipe`, :class:`MSSENetRecipe`,
:class:`AFCNRecipe`) that serialises with ``to_dict()`` / :func:`recipe_from_dict` (it is saved in
checkpoint JSON), and a function turning waveforms at the recipe's sample rate into model input:

- GLAM: :func:`glam_input` / :func:`glam_segments` (many utterances packed) -> (n_seg, 26, 57)
  MFCC segments per utterance, plus a flag for utterances padded up to one segment.
- MS-SENet: :func:`mssenet_input` / :func:`mssenet_inputs` -> (T, 39) MFCC per utterance,
  T = 188 (EmoDB length) or 606 (IEMOCAP length).
- AFCN: :func:`afcn_input` -> (3, 257, T) log-power spectrogram, Δ, ΔΔ with the valid and true
  lengths; :func:`afcn_batch` pads a list of them into (B, 3, 257, T_max) + lengths.

Waveforms are 1-D float32 tensors at ``recipe.sample_rate`` (``recipe.load(path)`` decodes and
resamples a file; see :mod:`glam_fast.audio`). Features are computed on the waveforms' device, or
on ``device`` when given. Every recipe also has ``compute(waveforms)`` giving, per utterance, a dict
of CPU tensors: the unit the feature cache (:mod:`glam_fast.data`) stores.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from glam_fast.features import MFCC, PAD_MODES, LogSpectrogram, stack_deltas

# Fixed input lengths of the MS-SENet recipe per corpus, in samples at 22,050 Hz.
MSSENET_CORPUS_SAMPLES = {"emodb": 96_000, "iemocap": 310_000}


class _Recipe:
    """Serialisation shared by the recipe dataclasses: ``{"recipe": name, field: value, ...}``."""

    name: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.name, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        values = dict(values)
        name = values.pop("recipe", cls.name)
        if name != cls.name:
            raise ValueError(f"{cls.__name__}.from_dict got a {name!r} recipe")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.name} recipe settings {unknown}; known: {sorted(known)}")
        return cls(**values)

    def load(self, path) -> torch.Tensor:
        """Decode ``path`` to a mono float32 waveform at this recipe's sample rate, (samples,)."""
        from glam_fast import audio

        waveform, _ = audio.load(path, sr=self.sample_rate)
        return waveform

    def _check(self, *positive_ints: str) -> None:
        for field in ("sample_rate", "n_fft", "hop_length", *positive_ints):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{type(self).__name__}.{field} must be a positive integer, got {value!r}")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"{type(self).__name__}.pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}")


def recipe_from_dict(values: dict[str, Any]):
    """Rebuild a recipe saved with ``to_dict()`` (dispatches on ``values["recipe"]``)."""
    recipes = {cls.name: cls for cls in (GLAMRecipe, MSSENetRecipe, AFCNRecipe)}
    name = values.get("recipe")
    if name not in recipes:
        raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(recipes)}")
    return recipes[name].from_dict(values)


def _check_waveforms(waveforms: Sequence[torch.Tensor], recipe: _Recipe) -> list[torch.Tensor]:
    if isinstance(waveforms, torch.Tensor):
        raise TypeError(f"expected a sequence of 1-D waveforms at {recipe.sample_rate} Hz, got one tensor; wrap it in a list")
    checked = []
    for i, waveform in enumerate(waveforms):
        if not isinstance(waveform, torch.Tensor) or waveform.dim() != 1 or not waveform.is_floating_point():
            what = f"shape {tuple(waveform.shape)} dtype {waveform.dtype}" if isinstance(waveform, torch.Tensor) else type(waveform).__name__
            raise ValueError(f"waveform {i} must be a 1-D float tensor (samples at {recipe.sample_rate} Hz), got {what}")
        if waveform.numel() == 0:
            raise ValueError(f"waveform {i} is empty")
        checked.append(waveform.float())
    return checked


@functools.lru_cache(maxsize=16)
def _mfcc_module(sample_rate: int, n_mfcc: int, n_fft: int, hop_length: int, n_mels: int, pad_mode: str, device: torch.device) -> MFCC:
    return MFCC(sample_rate, n_mfcc, n_fft, hop_length, n_mels, pad_mode).to(device)


@functools.lru_cache(maxsize=16)
def _log_spectrogram_module(n_fft: int, hop_length: int, pad_mode: str, top_db: float | None, device: torch.device) -> LogSpectrogram:
    return LogSpectrogram(n_fft, hop_length, pad_mode, top_db).to(device)


# ----------------------------------------------------------------------------- GLAM


@dataclasses.dataclass(frozen=True)
class GLAMRecipe(_Recipe):
    """GLAM (authors' defaults): 26 MFCCs computed per 1.8 s segment, a segment every 0.2 s, 16 kHz.

    ``segment_hop`` is 3200 samples; the authors' code gets 3199 from int((1.8 - 1.6) * 16000)
    through float rounding (which gives the same segment count on most lengths). The tail that
    does not fill a segment is dropped; an utterance shorter than one segment is zero-padded to
    one segment and flagged (the authors dropped those).
    """

    name: ClassVar[str] = "glam"
    sample_rate: int = 16_000
    n_mfcc: int = 26
    segment_samples: int = 28_800
    segment_hop: int = 3_200
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    pad_mode: str = "reflect"

    def __post_init__(self):
        self._check("n_mfcc", "segment_samples", "segment_hop", "n_mels")

    @property
    def frames(self) -> int:
        """MFCC frames per segment: 1 + segment_samples // hop_length (57)."""
        return 1 + self.segment_samples // self.hop_length

    @property
    def input_shape(self) -> tuple[int, int]:
        """(n_mfcc, frames) = (26, 57): the ``shape`` argument of :class:`glam_fast.GLAM`."""
        return (self.n_mfcc, self.frames)

    def n_segments(self, samples: int) -> int:
        """Segments of an utterance of ``samples`` samples (at least 1: short ones are padded)."""
        return 1 + max(samples - self.segment_samples, 0) // self.segment_hop

    def compute(self, waveforms: Sequence[torch.Tensor], device=None) -> list[dict[str, torch.Tensor]]:
        """Per utterance {"features": (n_seg, n_mfcc, frames) float32, "padded": () bool}, CPU."""
        batch = glam_segments(waveforms, self, device=device)
        return [{"features": f.cpu(), "padded": p.cpu()} for f, p in zip(batch.split(), batch.padded)]


class GLAMSegments(NamedTuple):
    """Segments of many utterances, packed for one model batch.

    features: (N, n_mfcc, frames) float32; add the channel dim (``features[:, None]``) for GLAM.
    utterance: (N,) int64, the utterance (index into the input list) of each segment.
    n_segments: (U,) int64 segments per utterance; padded: (U,) bool, True where an utterance was
    shorter than one segment and was zero-padded to one.
    """

    features: torch.Tensor
    utterance: torch.Tensor
    n_segments: torch.Tensor
    padded: torch.Tensor

    def split(self) -> list[torch.Tensor]:
        """Per-utterance (n_seg, n_mfcc, frames) views of ``features``."""
        return list(torch.split(self.features, self.n_segments.tolist()))


def glam_segments(
    waveforms: Sequence[torch.Tensor], recipe: GLAMRecipe = GLAMRecipe(), device=None, chunk: int | None = None
) -> GLAMSegments:
    """MFCC segments of many utterances at once (batched MFCC, ``chunk`` segments per call).

    waveforms: U 1-D float tensors at recipe.sample_rate (lengths may differ). Each segment's MFCC
    equals ``librosa.feature.mfcc`` on that segment alone. Returns :class:`GLAMSegments` on
    ``device`` (default: the first waveform's device). ``chunk`` bounds memory (~1 MB per segment);
    default 64 on the CPU (fastest there: the chunk stays in cache), 1024 on a GPU.
    """
    waveforms = _check_waveforms(waveforms, recipe)
    if not waveforms:
        raise ValueError("glam_segments got no waveforms")
    device = torch.device(device) if device is not None else waveforms[0].device
    chunk = chunk if chunk is not None else (64 if device.type == "cpu" else 1024)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    # One host-to-device copy for all utterances, then per-utterance views.
    on_device = torch.split(torch.cat(waveforms).to(device), [w.numel() for w in waveforms])
    segments, counts, padded = [], [], []
    for waveform in on_device:
        short = waveform.numel() < recipe.segment_samples
        if short:
            waveform = F.pad(waveform, (0, recipe.segment_samples - waveform.numel()))
        windows = waveform.unfold(0, recipe.segment_samples, recipe.segment_hop)  # (n_seg, segment_samples)
        segments.append(windows)
        counts.append(windows.shape[0])
        padded.append(short)
    mfcc = _mfcc_module(recipe.sample_rate, recipe.n_mfcc, recipe.n_fft, recipe.hop_length, recipe.n_mels, recipe.pad_mode, device)
    all_segments = torch.cat(segments)
    features = torch.cat([mfcc(part) for part in torch.split(all_segments, chunk)])
    n_segments = torch.tensor(counts, dtype=torch.long, device=device)
    utterance = torch.repeat_interleave(torch.arange(len(counts), device=device), n_segments)
    return GLAMSegments(features, utterance, n_segments, torch.tensor(padded, device=device))


def glam_input(waveform: torch.Tensor, recipe: GLAMRecipe = GLAMRecipe()) -> tuple[torch.Tensor, bool]:
    """One utterance -> ((n_seg, n_mfcc, frames) float32 MFCC segments, padded flag)."""
    batch = glam_segments([waveform], recipe)
    return batch.features, bool(batch.padded[0])


# ----------------------------------------------------------------------------- MS-SENet


@dataclasses.dataclass(frozen=True)
class MSSENetRecipe(_Recipe):
    """MS-SENet (authors' defaults): 39 MFCCs over the whole utterance at 22,050 Hz, fixed length.

    Each waveform is zero-padded symmetrically (the odd sample goes to the end) or centre-cropped
    (the odd sample dropped from the end) to ``n_samples`` before the MFCC: EmoDB 96,000 samples
    -> T = 188 frames, IEMOCAP 310,000 -> 606 (:meth:`for_corpus`).
    """

    name: ClassVar[str] = "mssenet"
    sample_rate: int = 22_050
    n_mfcc: int = 39
    n_samples: int = MSSENET_CORPUS_SAMPLES["emodb"]
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    pad_mode: str = "reflect"

    def __post_init__(self):
        self._check("n_mfcc", "n_samples", "n_mels")

    @classmethod
    def for_corpus(cls, corpus: str, **overrides) -> MSSENetRecipe:
        """The recipe with the fixed length the authors used for ``corpus`` ("emodb", "iemocap")."""
        if corpus not in MSSENET_CORPUS_SAMPLES:
            raise ValueError(f"no MS-SENet length is known for corpus {corpus!r}; known: {sorted(MSSENET_CORPUS_SAMPLES)}")
        return cls(n_samples=MSSENET_CORPUS_SAMPLES[corpus], **overrides)

    @property
    def frames(self) -> int:
        """T = 1 + n_samples // hop_length."""
        return 1 + self.n_samples // self.hop_length

    def compute(self, waveforms: Sequence[torch.Tensor], device=None) -> list[dict[str, torch.Tensor]]:
        """Per utterance {"features": (T, n_mfcc) float32}, CPU."""
        return [{"features": item.cpu()} for item in mssenet_inputs(waveforms, self, device=device)]


def fix_length_centered(waveform: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Zero-pad symmetrically or centre-crop a 1-D waveform to ``n_samples`` (extra sample at the end)."""
    excess = waveform.numel() - n_samples
    if excess >= 0:
        return waveform[excess // 2 : excess // 2 + n_samples]
    return F.pad(waveform, (-excess // 2, -excess - (-excess // 2)))


def mssenet_inputs(waveforms: Sequence[torch.Tensor], recipe: MSSENetRecipe = MSSENetRecipe(), device=None) -> torch.Tensor:
    """Many utterances -> (B, T, n_mfcc) float32 MFCC, each fixed to recipe.n_samples first."""
    waveforms = _check_waveforms(waveforms, recipe)
    if not waveforms:
        raise ValueError("mssenet_inputs got no waveforms")
    device = torch.device(device) if device is not None else waveforms[0].device
    fixed = torch.stack([fix_length_centered(w, recipe.n_samples) for w in waveforms]).to(device)
    mfcc = _mfcc_module(recipe.sample_rate, recipe.n_mfcc, recipe.n_fft, recipe.hop_length, recipe.n_mels, recipe.pad_mode, device)
    return mfcc(fixed).transpose(1, 2).contiguous()


def mssenet_input(waveform: torch.Tensor, recipe: MSSENetRecipe = MSSENetRecipe()) -> torch.Tensor:
    """One utterance -> (T, n_mfcc) float32 MFCC."""
    return mssenet_inputs([waveform], recipe)[0]


# ----------------------------------------------------------------------------- AFCN


@dataclasses.dataclass(frozen=True)
class AFCNRecipe(_Recipe):
    """AFCN (not published in detail; these are this project's choices).

    Log-power linear spectrogram in dB (``power_to_db(|STFT|²)``, top_db 80) at 16 kHz with a 512-
    sample (32 ms) periodic Hann window and FFT, hop 160 (10 ms): 257 frequency bins from 0 to
    8 kHz, one frame per 10 ms (T = 1 + samples // 160), the usual analysis rate for speech and
    fine enough in time for the trunk's stride-4 first layer. Channels: the spectrogram, its delta
    and its second-order delta (``librosa.feature.delta``, width 9). No normalisation is applied.
    Utterances shorter than ``min_frames`` (the AlexNet trunk's minimum, ``AFCN().min_size``)
    are zero-padded up to it; :func:`afcn_input` reports the true length.
    """

    name: ClassVar[str] = "afcn"
    sample_rate: int = 16_000
    n_fft: int = 512
    hop_length: int = 160
    pad_mode: str = "reflect"
    top_db: float | None = 80.0
    delta_width: int = 9
    min_frames: int = 63

    def __post_init__(self):
        self._check("min_frames")
        if self.top_db is not None and not self.top_db >= 0:
            raise ValueError(f"AFCNRecipe.top_db must be >= 0 or None, got {self.top_db!r}")
        if self.n_bins < self.min_frames:
            raise ValueError(f"AFCNRecipe.n_fft={self.n_fft} gives {self.n_bins} frequency bins; the trunk needs >= {self.min_frames}")
        if self.delta_width < 3 or self.delta_width % 2 != 1 or self.min_frames < self.delta_width:
            raise ValueError(
                f"AFCNRecipe.delta_width must be odd, >= 3 and <= min_frames={self.min_frames}, got {self.delta_width}"
            )

    @property
    def n_bins(self) -> int:
        """Frequency bins F = 1 + n_fft // 2 (257)."""
        return 1 + self.n_fft // 2

    def compute(self, waveforms: Sequence[torch.Tensor], device=None) -> list[dict[str, torch.Tensor]]:
        """Per utterance {"features": (3, F, T) float32, "length": () int64, "true_length": () int64}, CPU."""
        items = [afcn_input(w.to(device) if device is not None else w, self) for w in _check_waveforms(waveforms, self)]
        return [
            {"features": item.features.cpu(), "length": torch.tensor(item.length), "true_length": torch.tensor(item.true_length)}
            for item in items
        ]


class AFCNInput(NamedTuple):
    """One utterance for AFCN.

    features: (3, F, T) float32 — log-power spectrogram (dB), delta, second-order delta;
    length: valid frames to pass to the model (T, at least the trunk's minimum);
    true_length: frames of real audio (1 + samples // hop); less than ``length`` when padded.
    """

    features: torch.Tensor
    length: int
    true_length: int

    @property
    def padded(self) -> bool:
        return self.true_length < self.length


def afcn_input(waveform: torch.Tensor, recipe: AFCNRecipe = AFCNRecipe()) -> AFCNInput:
    """One utterance -> :class:`AFCNInput`, padded with zeros up to ``recipe.min_frames`` frames."""
    (waveform,) = _check_waveforms([waveform], recipe)
    true_length = 1 + waveform.numel() // recipe.hop_length
    min_samples = (recipe.min_frames - 1) * recipe.hop_length
    if waveform.numel() < min_samples:
        waveform = F.pad(waveform, (0, min_samples - waveform.numel()))
    spectrogram = _log_spectrogram_module(recipe.n_fft, recipe.hop_length, recipe.pad_mode, recipe.top_db, waveform.device)
    features = stack_deltas(spectrogram(waveform[None]), recipe.delta_width)[0]
    return AFCNInput(features, features.shape[-1], true_length)


def afcn_batch(items: Sequence[AFCNInput]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate utterances -> (x (B, 3, F, T_max) float32 zero-padded along time, lengths (B,) int64)."""
    if not items:
        raise ValueError("afcn_batch got no items")
    longest = max(item.features.shape[-1] for item in items)
    x = torch.stack([F.pad(item.features, (0, longest - item.features.shape[-1])) for item in items])
    lengths = torch.tensor([item.length for item in items], dtype=torch.long, device=x.device)
    return x, lengths
