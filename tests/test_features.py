"""glam_fast.features against librosa itself: MFCC, log-mel, log spectrogram and deltas, both pad modes."""

from pathlib import Path

import numpy as np
import pytest
import torch

from glam_fast import features
from tests.helpers import rel_err

librosa = pytest.importorskip("librosa")
scipy_fft = pytest.importorskip("scipy.fft")
scipy_signal = pytest.importorskip("scipy.signal")

EMODB_WAV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emodb" / "wav"
needs_emodb = pytest.mark.skipif(not EMODB_WAV.is_dir(), reason="EmoDB copy not found at ../shared/data/emodb")
PAD_MODES = ["reflect", "constant"]
TOLERANCE = 1e-4  # relative error vs librosa, per item


def rel(a, b) -> float:
    return rel_err(torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b)))


def noise(samples, seed, scale=0.3):
    return (np.random.default_rng(seed).standard_normal(samples) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def emodb_clips():
    """Seven real utterances at 16 kHz (one per 90 files), plus one whose end is digital silence."""
    paths = sorted(EMODB_WAV.glob("*.wav"))
    chosen = paths[::90]
    padded = next(p for p in paths if not np.any(librosa.load(p, sr=None)[0][-2000:]))
    return [librosa.load(p, sr=16000)[0] for p in chosen + [padded]]


# ----------------------------------------------------------------------------- building blocks


def test_hann_window_is_scipy_periodic_hann():
    for n in (512, 2048, 401):
        np.testing.assert_allclose(features.hann_window(n), scipy_signal.get_window("hann", n, fftbins=True), atol=1e-15)


@pytest.mark.parametrize("sr, n_fft, n_mels", [(16000, 2048, 128), (22050, 2048, 128), (8000, 512, 40), (48000, 1024, 64)])
def test_mel_filterbank_equals_librosa(sr, n_fft, n_mels):
    ours = features.mel_filterbank(sr, n_fft, n_mels)
    expected = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, dtype=np.float64)
    assert ours.shape == expected.shape == (n_mels, 1 + n_fft // 2)
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-15)


def test_mel_scale_round_trip_and_librosa():
    hz = np.array([0.0, 100.0, 999.0, 1000.0, 1001.0, 4000.0, 11025.0])
    np.testing.assert_allclose(features.hz_to_mel(hz), librosa.hz_to_mel(hz), rtol=1e-12)
    np.testing.assert_allclose(features.mel_to_hz(features.hz_to_mel(hz)), hz, rtol=1e-12, atol=1e-9)


def test_dct_matrix_is_scipy_ortho_dct2():
    x = np.random.default_rng(0).standard_normal((128, 7))
    expected = scipy_fft.dct(x, type=2, norm="ortho", axis=0)[:26]
    np.testing.assert_allclose(features.dct_matrix(26, 128) @ x, expected, atol=1e-12)


@pytest.mark.parametrize("length", [1, 2, 3, 5, 1024, 1025])
def test_reflect_padding_is_numpy_for_any_length(length):
    x = torch.arange(length, dtype=torch.float32)[None] + 1
    ours = features.center_pad(x, 1024, "reflect")
    np.testing.assert_array_equal(ours[0].numpy(), np.pad(x[0].numpy(), 1024, mode="reflect"))


# ----------------------------------------------------------------------------- MFCC parity


@needs_emodb
@pytest.mark.parametrize("pad_mode", PAD_MODES)
def test_mfcc_equals_librosa_on_emodb_segments(emodb_clips, pad_mode):
    """GLAM's setting: 26 MFCC of 1.8 s segments at 16 kHz, each segment as librosa sees it alone."""
    segments = np.stack([clip[start : start + 28800] for clip in emodb_clips for start in (0, 3200)])
    ours = features.MFCC(16000, 26, pad_mode=pad_mode)(torch.from_numpy(segments))
    assert ours.shape == (len(segments), 26, 57) and ours.dtype == torch.float32
    for item, segment in zip(ours, segments):
        expected = librosa.feature.mfcc(y=segment, sr=16000, n_mfcc=26, pad_mode=pad_mode)
        assert rel(item, expected) < TOLERANCE


@needs_emodb
@pytest.mark.parametrize("pad_mode", PAD_MODES)
def test_mfcc_equals_librosa_on_emodb_at_22050(pad_mode):
    """MS-SENet's setting: 39 MFCC over whole utterances at the files' own 22,050 Hz."""
    clips = [librosa.load(p, sr=None)[0] for p in sorted(EMODB_WAV.glob("*.wav"))[5::180]]
    ours = features.MFCC(22050, 39, pad_mode=pad_mode)(torch.from_numpy(np.stack(clips)))
    for item, clip in zip(ours, clips):
        assert rel(item, librosa.feature.mfcc(y=clip, sr=22050, n_mfcc=39, pad_mode=pad_mode)) < TOLERANCE


@pytest.mark.parametrize("pad_mode", PAD_MODES)
@pytest.mark.parametrize("samples", [1, 100, 1024, 1025, 4800, 28800])
def test_mfcc_equals_librosa_on_random_signals(pad_mode, samples):
    """Items of very different loudness in one batch: top_db is applied per item, as librosa per call."""
    batch = np.stack([noise(samples, seed, scale) for seed, scale in enumerate((1e-3, 0.3, 5.0))])
    ours = features.MFCC(16000, 26, pad_mode=pad_mode)(torch.from_numpy(batch))
    assert ours.shape == (3, 26, 1 + samples // 512)
    for item, signal in zip(ours, batch):
        assert rel(item, librosa.feature.mfcc(y=signal, sr=16000, n_mfcc=26, pad_mode=pad_mode)) < TOLERANCE


def test_mfcc_other_settings_and_float64():
    signal = noise(5000, 9).astype(np.float64)
    ours = features.MFCC(8000, 13, n_fft=512, hop_length=128, n_mels=40)(torch.from_numpy(signal)[None])[0]
    expected = librosa.feature.mfcc(y=signal, sr=8000, n_mfcc=13, n_fft=512, hop_length=128, n_mels=40, pad_mode="reflect")
    # Not ~1e-15: librosa rounds its float32 filterbank twice (before and after the Slaney norm).
    assert ours.dtype == torch.float64 and rel(ours, expected) < 1e-7


def test_mfcc_item_does_not_depend_on_the_rest_of_the_batch():
    batch = torch.from_numpy(np.stack([noise(6000, 1, 1e-4), noise(6000, 2, 3.0)]))
    mfcc = features.MFCC(16000, 26)
    together = mfcc(batch)
    for i in range(2):
        torch.testing.assert_close(together[i], mfcc(batch[i : i + 1])[0], rtol=1e-5, atol=1e-4)


def test_top_db_none_matches_librosa():
    signal = noise(3000, 4) * np.linspace(0, 1, 3000, dtype=np.float32) ** 8  # a wide dynamic range
    ours = features.MFCC(16000, 20, top_db=None)(torch.from_numpy(signal)[None])[0]
    mel = librosa.feature.melspectrogram(y=signal, sr=16000, pad_mode="reflect")
    expected = scipy_fft.dct(librosa.power_to_db(mel, top_db=None), type=2, norm="ortho", axis=0)[:20]
    assert rel(ours, expected) < TOLERANCE


# ----------------------------------------------------------------------------- log-mel, spectrogram, deltas


@pytest.mark.parametrize("pad_mode", PAD_MODES)
def test_log_mel_equals_librosa(pad_mode):
    signal = noise(7000, 5)
    ours = features.LogMel(22050, pad_mode=pad_mode)(torch.from_numpy(signal)[None])[0]
    expected = librosa.power_to_db(librosa.feature.melspectrogram(y=signal, sr=22050, pad_mode=pad_mode))
    assert ours.shape == (128, 14) and rel(ours, expected) < TOLERANCE


@pytest.mark.parametrize("pad_mode", PAD_MODES)
def test_log_spectrogram_and_deltas_equal_librosa(pad_mode):
    signal = noise(16000, 6) * np.hanning(16000).astype(np.float32)
    spectrogram = features.LogSpectrogram(512, 160, pad_mode)(torch.from_numpy(signal)[None])
    ours = features.stack_deltas(spectrogram)[0]
    log_power = librosa.power_to_db(np.abs(librosa.stft(signal, n_fft=512, hop_length=160, pad_mode=pad_mode)) ** 2)
    expected = [log_power, librosa.feature.delta(log_power), librosa.feature.delta(log_power, order=2)]
    assert ours.shape == (3, 257, 101)
    for channel, reference in zip(ours, expected):
        assert rel(channel, reference) < TOLERANCE


@pytest.mark.parametrize("width", [3, 5, 9])
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("frames", [9, 10, 57])
def test_delta_equals_librosa(width, order, frames):
    x = np.random.default_rng(frames).standard_normal((2, 7, frames))
    ours = features.delta(torch.from_numpy(x), width=width, order=order)
    np.testing.assert_allclose(ours.numpy(), librosa.feature.delta(x, width=width, order=order), atol=1e-10)


def test_delta_bad_arguments():
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="at least width=9 frames"):
        features.delta(x)
    with pytest.raises(ValueError, match="odd"):
        features.delta(x, width=4)
    with pytest.raises(ValueError, match="order"):
        features.delta(x, width=3, order=0)


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_get_clear_errors():
    mfcc = features.MFCC(16000, 26)
    with pytest.raises(ValueError, match=r"\(B, samples\)"):
        mfcc(torch.randn(100))
    with pytest.raises(ValueError, match="empty"):
        mfcc(torch.randn(2, 0))
    with pytest.raises(TypeError, match="float32"):
        mfcc(torch.zeros(1, 100, dtype=torch.int16))
    with pytest.raises(TypeError, match="torch.Tensor"):
        mfcc(np.zeros((1, 100), np.float32))
    with pytest.raises(ValueError, match="pad_mode"):
        features.MFCC(16000, 26, pad_mode="edge")
    with pytest.raises(ValueError, match="n_mfcc"):
        features.MFCC(16000, 200)
    with pytest.raises(ValueError, match="top_db"):
        features.power_to_db(torch.ones(1, 2, 2), top_db=-1.0)


@pytest.mark.gpu
@pytest.mark.parametrize("pad_mode", PAD_MODES)
def test_cuda_equals_cpu(pad_mode):
    batch = torch.from_numpy(np.stack([noise(28800, seed, scale) for seed, scale in enumerate((1e-3, 0.3, 5.0))]))
    mfcc = features.MFCC(16000, 26, pad_mode=pad_mode)
    on_gpu = mfcc.to("cuda")(batch.cuda()).cpu()
    assert rel(on_gpu, features.MFCC(16000, 26, pad_mode=pad_mode)(batch)) < TOLERANCE
    spectrogram = features.LogSpectrogram(512, 160, pad_mode)
    cpu = features.stack_deltas(spectrogram(batch))
    gpu = features.stack_deltas(spectrogram.to("cuda")(batch.cuda())).cpu()
    for channel in range(3):
        assert rel(gpu[:, channel], cpu[:, channel]) < TOLERANCE
