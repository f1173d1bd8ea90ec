"""Spectral features in PyTorch, batched, on any device, equal to librosa's definitions.

The authors of all three models computed features with librosa, one file at a time, on the CPU.
These modules compute the same numbers for a batch of waveforms (B, samples) on the model's device:

- :class:`PowerSpectrogram`: ``|STFT|²`` with a periodic Hann window, ``center=True`` -> (B, 1 + n_fft//2, T)
- :class:`LogSpectrogram`: ``power_to_db`` of it (``librosa.power_to_db(np.abs(librosa.stft(y))**2)``)
- :class:`LogMel`: ``power_to_db`` of the Slaney mel spectrogram (``librosa.power_to_db(librosa.feature.melspectrogram(y))``)
- :class:`MFCC`: DCT-II (ortho) of the log-mel, first ``n_mfcc`` rows (``librosa.feature.mfcc``)
- :func:`delta` / :func:`stack_deltas`: ``librosa.feature.delta`` (Savitzky-Golay, ``mode="interp"``)

with T = 1 + samples // hop_length frames. librosa is not needed at run time: the window, the mel
filterbank and the DCT are built here with librosa's formulas (and checked against librosa in the
tests).

Conventions and choices:

- ``pad_mode``: ``"reflect"`` (default; librosa 0.8/0.9, which the authors used) or ``"constant"``
  (zeros; librosa >= 0.10's default). Reflection follows ``numpy.pad`` exactly, including inputs no
  longer than ``n_fft // 2`` samples, where numpy keeps reflecting back and forth (torch's reflect
  pad refuses such inputs); so every length >= 1 gives librosa's numbers.
- ``power_to_db`` uses ref = 1, amin = 1e-10 and clamps at ``top_db`` below the maximum. librosa
  takes that maximum over the whole array it is called with; here it is taken **per batch item**
  (over all bins and frames of that item), so item ``b`` of a batch equals librosa called on
  waveform ``b`` alone, whatever else is in the batch. ``top_db=None`` disables the clamp.
- Precision: STFT and mel projection run in the input's dtype (float32 normally; float64 is
  accepted), the decibel step and the DCT in float64 (the log and the ``top_db`` clamp are where
  float32 rounding would show), and the result is returned in the input's dtype.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

AMIN = 1e-10  # power floor before the log, as librosa.power_to_db
PAD_MODES = ("reflect", "constant")


# ----------------------------------------------------------------------------- building blocks


def hann_window(n_fft: int) -> np.ndarray:
    """Periodic Hann window of length n_fft, float64 (scipy.signal.get_window("hann", n_fft, fftbins=True))."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)


# Slaney's auditory-toolbox mel scale (librosa's default, htk=False): linear below 1 kHz, log above.
_MEL_F_SP = 200.0 / 3.0
_MEL_MIN_LOG_HZ = 1000.0
_MEL_MIN_LOG_MEL = _MEL_MIN_LOG_HZ / _MEL_F_SP
_MEL_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Hz -> mel on the Slaney scale (librosa.hz_to_mel(htk=False)), float64."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _MEL_F_SP
    log = _MEL_MIN_LOG_MEL + np.log(np.maximum(hz, _MEL_MIN_LOG_HZ) / _MEL_MIN_LOG_HZ) / _MEL_LOGSTEP
    return np.where(hz >= _MEL_MIN_LOG_HZ, log, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """mel -> Hz on the Slaney scale (librosa.mel_to_hz(htk=False)), float64."""
    mel = np.asarray(mel, dtype=np.float64)
    linear = _MEL_F_SP * mel
    log = _MEL_MIN_LOG_HZ * np.exp(_MEL_LOGSTEP * (mel - _MEL_MIN_LOG_MEL))
    return np.where(mel >= _MEL_MIN_LOG_MEL, log, linear)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int = 128, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Slaney-normalised triangular mel filterbank, (n_mels, 1 + n_fft//2) float64.

    Same formulas as ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=False, norm="slaney")``:
    n_mels + 2 band edges equally spaced in mel between fmin and fmax (default sample_rate / 2),
    triangles over the FFT bin frequencies, each scaled by 2 / (its bandwidth in Hz).
    """
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, 1 + n_fft // 2)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def dct_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Orthonormal DCT-II rows 0..n_out-1, (n_out, n_in) float64 (scipy.fft.dct(type=2, norm="ortho"))."""
    k = np.arange(n_out)[:, None]
    n = np.arange(n_in)[None, :]
    basis = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * math.sqrt(2.0 / n_in)
    basis[0] /= math.sqrt(2.0)
    return basis


def reflect_indices(length: int, before: int, after: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices of the ``before`` / ``after`` samples that ``numpy.pad(mode="reflect")`` adds.

    numpy reflects about the first and last sample and keeps reflecting when the pad is longer than
    the signal, which is a mirror-periodic extension with period 2 (length - 1).
    """
    if length == 1:
        return torch.zeros(before, dtype=torch.long), torch.zeros(after, dtype=torch.long)
    period = 2 * (length - 1)

    def mirror(positions: torch.Tensor) -> torch.Tensor:
        folded = torch.remainder(positions, period)
        return torch.where(folded >= length, period - folded, folded)

    return mirror(torch.arange(-before, 0)), mirror(torch.arange(length, length + after))


def center_pad(waveform: torch.Tensor, pad: int, pad_mode: str) -> torch.Tensor:
    """Pad (B, samples) by ``pad`` on both sides as librosa's ``center=True`` does -> (B, samples + 2 pad)."""
    if pad_mode == "constant":
        return F.pad(waveform, (pad, pad))
    if waveform.shape[-1] > pad:
        return F.pad(waveform, (pad, pad), mode="reflect")
    head, tail = reflect_indices(waveform.shape[-1], pad, pad)
    device = waveform.device
    return torch.cat([waveform[:, head.to(device)], waveform, waveform[:, tail.to(device)]], dim=-1)


def power_to_db(power: torch.Tensor, top_db: float | None = 80.0) -> torch.Tensor:
    """``librosa.power_to_db(S, ref=1.0, amin=1e-10, top_db)`` per batch item.

    power: (B, ...) non-negative. Returns float64 of the same shape: 10 log10(max(power, 1e-10)),
    clamped at ``top_db`` below the maximum of each item (dims 1..), as librosa on that item alone.
    """
    db = 10.0 * torch.log10(power.double().clamp_min(AMIN))
    if top_db is None:
        return db
    if top_db < 0:
        raise ValueError(f"top_db must be non-negative (or None), got {top_db}")
    peak = db.flatten(1).amax(dim=1).view(-1, *([1] * (db.dim() - 1)))
    return torch.maximum(db, peak - top_db)


def _savgol_coefficients(width: int, order: int) -> np.ndarray:
    """(width,) float64 weights: the order-th derivative of the degree-``order`` least-squares
    polynomial through ``width`` consecutive frames (scipy.signal.savgol_coeffs(width, order, order))."""
    positions = np.arange(width, dtype=np.float64) - width // 2
    vandermonde = positions[:, None] ** np.arange(order + 1)[None, :]  # (width, order + 1)
    # Only the leading coefficient survives order-fold differentiation: d^n/dt^n (a_n t^n) = n! a_n.
    return math.factorial(order) * np.linalg.pinv(vandermonde)[order]


def delta(features: torch.Tensor, width: int = 9, order: int = 1) -> torch.Tensor:
    """``librosa.feature.delta(features, width, order, axis=-1, mode="interp")``.

    features: (..., T) with T >= width. The order-th derivative, along the last (time) axis, of the
    polynomial of degree ``order`` fitted over ``width`` frames (Savitzky-Golay). ``order=2`` is
    librosa's second-order delta (not the delta of the delta). In ``mode="interp"`` the first and
    last width//2 frames take the derivative of the polynomial fitted to the first / last window;
    with degree == order that derivative is constant over a window, so they repeat the first /
    last interior value. Returns the same shape and dtype.
    """
    if width < 3 or width % 2 != 1:
        raise ValueError(f"delta width must be an odd integer >= 3, got {width}")
    if order < 1:
        raise ValueError(f"delta order must be >= 1, got {order}")
    frames = features.shape[-1]
    if frames < width:
        raise ValueError(f"delta needs at least width={width} frames along the last axis, got {frames}")
    weights = torch.as_tensor(_savgol_coefficients(width, order), dtype=features.dtype, device=features.device)
    interior = F.conv1d(features.reshape(-1, 1, frames), weights.view(1, 1, width))  # (N, 1, T - width + 1)
    return F.pad(interior, (width // 2, width // 2), mode="replicate").view(features.shape)


def stack_deltas(features: torch.Tensor, width: int = 9) -> torch.Tensor:
    """(B, F, T) -> (B, 3, F, T): the features, their delta and their second-order delta."""
    return torch.stack([features, delta(features, width, 1), delta(features, width, 2)], dim=1)


# ----------------------------------------------------------------------------- modules


def _check_waveform(waveform: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Shape, dtype and device checks, with errors that name ``module``'s class."""
    name = type(module).__name__
    if not isinstance(waveform, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor waveform of shape (B, samples), got {type(waveform).__name__}")
    if waveform.dim() != 2:
        raise ValueError(f"{name} expects a waveform batch of shape (B, samples), got shape {tuple(waveform.shape)}")
    if waveform.shape[0] == 0 or waveform.shape[1] == 0:
        raise ValueError(f"{name} got an empty waveform batch (shape {tuple(waveform.shape)})")
    if waveform.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} expects a float32 (or float64) waveform, got dtype {waveform.dtype}")
    buffer = next(module.buffers())
    if waveform.device != buffer.device:
        raise ValueError(f"{name} input is on {waveform.device} but the module is on {buffer.device}; move one with .to(...)")
    return waveform


class PowerSpectrogram(nn.Module):
    """``np.abs(librosa.stft(y, n_fft, hop_length, window="hann", center=True, pad_mode))**2``, batched.

    (B, samples) float -> (B, 1 + n_fft//2, 1 + samples//hop_length), same dtype as the input.
    """

    def __init__(self, n_fft: int = 2048, hop_length: int = 512, pad_mode: str = "reflect"):
        super().__init__()
        if n_fft < 2 or hop_length < 1:
            raise ValueError(f"need n_fft >= 2 and hop_length >= 1, got n_fft={n_fft}, hop_length={hop_length}")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        self.n_fft, self.hop_length, self.pad_mode = n_fft, hop_length, pad_mode
        # float64, cast to the input's dtype per call (librosa windows in float64).
        self.register_buffer("window", torch.from_numpy(hann_window(n_fft)), persistent=False)

    def extra_repr(self) -> str:
        return f"n_fft={self.n_fft}, hop_length={self.hop_length}, pad_mode={self.pad_mode!r}"

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        waveform = _check_waveform(waveform, self)
        padded = center_pad(waveform, self.n_fft // 2, self.pad_mode)
        spectrum = torch.stft(
            padded,
            self.n_fft,
            hop_length=self.hop_length,
            window=self.window.to(waveform.dtype),
            center=False,
            onesided=True,
            return_complex=True,
        )
        # re² + im² in two passes over the complex result (3x faster on the CPU than view_as_real(...).square().sum(-1)).
        power = spectrum.real * spectrum.real
        return power.addcmul_(spectrum.imag, spectrum.imag)


class LogSpectrogram(nn.Module):
    """Log-power linear spectrogram in dB: ``librosa.power_to_db(|stft|**2, top_db=top_db)`` per item.

    (B, samples) float -> (B, 1 + n_fft//2, 1 + samples//hop_length), same dtype as the input.
    """

    def __init__(self, n_fft: int = 2048, hop_length: int = 512, pad_mode: str = "reflect", top_db: float | None = 80.0):
        super().__init__()
        self.spectrogram = PowerSpectrogram(n_fft, hop_length, pad_mode)
        self.top_db = top_db

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        waveform = _check_waveform(waveform, self)
        return power_to_db(self.spectrogram(waveform), self.top_db).to(waveform.dtype)


class LogMel(nn.Module):
    """Log-mel spectrogram in dB: ``librosa.power_to_db(librosa.feature.melspectrogram(y, sr, ...))`` per item.

    Slaney mel filterbank (fmin 0, fmax sample_rate/2, Slaney norm) over the power spectrogram.
    (B, samples) float -> (B, n_mels, 1 + samples//hop_length); :meth:`db` returns the float64 values.
    """

    def __init__(
        self,
        sample_rate: int,
        n_fft: int = 2048,
        hop_length: int = 512,
        n_mels: int = 128,
        pad_mode: str = "reflect",
        top_db: float | None = 80.0,
    ):
        super().__init__()
        if sample_rate <= 0 or n_mels < 1:
            raise ValueError(f"need sample_rate > 0 and n_mels >= 1, got sample_rate={sample_rate}, n_mels={n_mels}")
        self.sample_rate, self.n_mels, self.top_db = sample_rate, n_mels, top_db
        self.spectrogram = PowerSpectrogram(n_fft, hop_length, pad_mode)
        # librosa builds the filterbank in float64 and stores it as float32.
        filterbank = torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels)).float()
        self.register_buffer("filterbank", filterbank, persistent=False)  # (n_mels, 1 + n_fft//2)

    def extra_repr(self) -> str:
        return f"sample_rate={self.sample_rate}, n_mels={self.n_mels}, top_db={self.top_db}"

    def db(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, n_mels, T) float64 log-mel."""
        waveform = _check_waveform(waveform, self)
        power = self.spectrogram(waveform)
        mel = torch.matmul(self.filterbank.to(power.dtype), power)
        return power_to_db(mel, self.top_db)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.db(waveform).to(waveform.dtype)


class MFCC(nn.Module):
    """``librosa.feature.mfcc(y, sr=sample_rate, n_mfcc, n_fft, hop_length, n_mels, pad_mode)``, batched.

    Power spectrogram (periodic Hann, center=True) -> Slaney mel filterbank -> power_to_db(ref=1,
    amin=1e-10, top_db per item) -> DCT-II ortho -> first n_mfcc rows; no lifter.
    (B, samples) float32 (or float64) -> (B, n_mfcc, 1 + samples//hop_length), same dtype.
    """

    def __init__(
        self,
        sample_rate: int,
        n_mfcc: int = 20,
        n_fft: int = 2048,
        hop_length: int = 512,
        n_mels: int = 128,
        pad_mode: str = "reflect",
        top_db: float | None = 80.0,
    ):
        super().__init__()
        if not 1 <= n_mfcc <= n_mels:
            raise ValueError(f"n_mfcc must lie in [1, n_mels={n_mels}], got {n_mfcc}")
        self.n_mfcc = n_mfcc
        self.log_mel = LogMel(sample_rate, n_fft, hop_length, n_mels, pad_mode, top_db)
        self.register_buffer("dct", torch.from_numpy(dct_matrix(n_mfcc, n_mels)), persistent=False)  # float64

    def extra_repr(self) -> str:
        return f"n_mfcc={self.n_mfcc}"

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        waveform = _check_waveform(waveform, self)
        return torch.matmul(self.dct, self.log_mel.db(waveform)).to(waveform.dtype)
