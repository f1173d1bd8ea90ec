"""glam_fast.audio: decoding, mono mix, resampling (== librosa.load), and a typed error for every bad input."""

import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from glam_fast import audio

EMODB_WAV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emodb" / "wav"
needs_emodb = pytest.mark.skipif(not EMODB_WAV.is_dir(), reason="EmoDB copy not found at ../shared/data/emodb")


def random_signal(frames, channels=None, seed=0, scale=0.3):
    shape = (frames,) if channels is None else (frames, channels)
    return (np.random.default_rng(seed).uniform(-1, 1, shape) * scale).astype(np.float32)


def write(path, samples, rate, **kwargs):
    sf.write(path, samples, rate, **kwargs)
    return path


@pytest.mark.parametrize(
    "format_, subtype, suffix, tolerance",
    [
        ("WAV", "PCM_16", "wav", 2**-15),
        ("WAV", "PCM_24", "wav", 2**-23),
        ("WAV", "PCM_32", "wav", 2**-31),
        ("WAV", "FLOAT", "wav", 0.0),
        ("WAV", "DOUBLE", "wav", 1e-7),
        ("FLAC", "PCM_16", "flac", 2**-15),
        ("FLAC", "PCM_24", "flac", 2**-23),
    ],
)
def test_lossless_formats_decode_to_float32_mono(tmp_path, format_, subtype, suffix, tolerance):
    original = random_signal(1234)
    path = write(tmp_path / f"x.{suffix}", original, 16000, format=format_, subtype=subtype)
    waveform, rate = audio.load(path)
    assert rate == 16000 and waveform.dtype == torch.float32 and waveform.shape == (1234,)
    assert np.abs(waveform.numpy() - original).max() <= tolerance


def test_ogg_vorbis_decodes(tmp_path):
    t = np.arange(8000) / 8000
    original = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = write(tmp_path / "x.ogg", original, 8000, format="OGG", subtype="VORBIS")
    waveform, rate = audio.load(path)
    assert rate == 8000 and waveform.shape == (8000,) and waveform.dtype == torch.float32
    assert np.abs(waveform.numpy() - original).max() < 0.05  # lossy


def test_stereo_is_averaged_to_mono(tmp_path):
    stereo = random_signal(999, channels=2)
    waveform, rate = audio.load(write(tmp_path / "s.wav", stereo, 48000, subtype="FLOAT"))
    assert rate == 48000
    np.testing.assert_allclose(waveform.numpy(), stereo.mean(axis=1), atol=1e-7)


@pytest.mark.parametrize("rate, channels", [(8000, None), (48000, None), (48000, 2), (44100, 2)])
def test_resampling_equals_librosa_load(tmp_path, rate, channels):
    librosa = pytest.importorskip("librosa")
    path = write(tmp_path / "x.wav", random_signal(rate // 3 + 7, channels), rate, subtype="PCM_24")
    waveform, got_rate = audio.load(path, sr=16000)
    expected, _ = librosa.load(path, sr=16000)
    assert got_rate == 16000 and waveform.shape == expected.shape == (math.ceil((rate // 3 + 7) * 16000 / rate),)
    np.testing.assert_allclose(waveform.numpy(), expected, atol=1e-6)


def test_resampling_is_band_limited(tmp_path):
    """A 10 kHz tone at 48 kHz must vanish at 16 kHz (Nyquist 8 kHz), not alias to 6 kHz; 1 kHz must survive."""
    t = np.arange(48000) / 48000
    tones = {f: (0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in (1000, 10000)}
    rms = {}
    for f, tone in tones.items():
        waveform, _ = audio.load(write(tmp_path / f"{f}.wav", tone, 48000, subtype="FLOAT"), sr=16000)
        middle = waveform.numpy()[2000:-2000]  # away from the filter's edge transients
        rms[f] = float(np.sqrt(np.mean(middle**2)))
    assert abs(rms[1000] - 0.5 / math.sqrt(2)) < 1e-3
    assert rms[10000] < 1e-3 * rms[1000]


def test_same_rate_is_not_resampled(tmp_path):
    original = random_signal(500)
    waveform, rate = audio.load(write(tmp_path / "x.wav", original, 16000, subtype="FLOAT"), sr=16000)
    assert rate == 16000
    np.testing.assert_array_equal(waveform.numpy(), original)


@needs_emodb
def test_emodb_file_equals_librosa_load():
    librosa = pytest.importorskip("librosa")
    path = sorted(EMODB_WAV.glob("*.wav"))[0]
    for sr in (None, 16000):
        waveform, rate = audio.load(path, sr=sr)
        expected, expected_rate = librosa.load(path, sr=sr)
        assert rate == expected_rate and waveform.shape == expected.shape
        np.testing.assert_allclose(waveform.numpy(), expected, atol=1e-6)


# ----------------------------------------------------------------------------- bad inputs


def wav_bytes(tmp_path, frames=4000, **kwargs):
    path = write(tmp_path / "good.wav", random_signal(frames), 16000, **kwargs)
    return path.read_bytes()


def check_error(path, error_type, *words):
    with pytest.raises(error_type) as caught:
        audio.load(path)
    assert isinstance(caught.value, audio.AudioError)
    message = str(caught.value)
    assert str(path) in message
    for word in words:
        assert word in message, message
    return caught.value


def test_missing_file(tmp_path):
    check_error(tmp_path / "nope.wav", audio.AudioFileNotFoundError, "no such file")


def test_directory_is_not_a_file(tmp_path):
    check_error(tmp_path, audio.AudioFileNotFoundError, "not a regular file")


def test_zero_bytes(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    check_error(path, audio.EmptyAudioFileError, "0 bytes")


def test_random_bytes_named_wav(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(7).bytes(5000))
    check_error(path, audio.NotAudioError, "not an audio file")


def test_text_file(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("path,label\na.wav,anger\n")
    check_error(path, audio.NotAudioError, "not an audio file")


@pytest.mark.parametrize("cut", [6, 30, 40])
def test_truncated_wav_header(tmp_path, cut):
    path = tmp_path / "cut.wav"
    path.write_bytes(wav_bytes(tmp_path)[:cut])
    check_error(path, audio.TruncatedAudioError, "truncated")


def test_truncated_wav_data(tmp_path):
    data = wav_bytes(tmp_path, frames=4000)  # 8000 bytes of PCM_16 data
    path = tmp_path / "cut.wav"
    path.write_bytes(data[: len(data) - 3001])
    error = check_error(path, audio.TruncatedAudioError, "truncated", "8000 bytes", "4999 are present")
    assert isinstance(error, audio.CorruptAudioError)


def test_truncated_flac_is_corrupt(tmp_path):
    path = write(tmp_path / "x.flac", random_signal(16000), 16000, format="FLAC")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    check_error(path, audio.CorruptAudioError, "corrupt or truncated")


def test_no_samples(tmp_path):
    path = write(tmp_path / "silent.wav", np.zeros(0, np.float32), 16000)
    check_error(path, audio.NoSamplesError, "no samples")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_wav(tmp_path, bad):
    samples = random_signal(1600, channels=2)
    samples[800, 1] = bad
    samples[1000, 0] = bad
    path = write(tmp_path / "bad.wav", samples, 16000, subtype="FLOAT")
    check_error(path, audio.NonFiniteAudioError, "2 NaN or infinite", "sample 800", "0.050 s")


def test_bad_sr_argument(tmp_path):
    path = write(tmp_path / "x.wav", random_signal(100), 16000)
    for sr in (0, -16000, 16000.5, True):
        with pytest.raises(ValueError, match="sr must be a positive integer"):
            audio.load(path, sr=sr)


def test_errors_survive_pickling():
    error = audio.TruncatedAudioError("a.wav", "truncated: short")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is audio.TruncatedAudioError and str(again) == "a.wav: truncated: short"


# ----------------------------------------------------------------------------- memory and arrays


def test_decode_bytes_equals_load(tmp_path):
    data = wav_bytes(tmp_path, subtype="PCM_24")
    from_bytes, rate = audio.decode(data, sr=8000, name="upload.wav")
    from_file, _ = audio.load(tmp_path / "good.wav", sr=8000)
    assert rate == 8000
    torch.testing.assert_close(from_bytes, from_file, rtol=0, atol=0)


def test_decode_bad_bytes_name_the_source(tmp_path):
    with pytest.raises(audio.EmptyAudioFileError, match="upload.wav: the file is empty"):
        audio.decode(b"", name="upload.wav")
    with pytest.raises(audio.NotAudioError, match="upload.wav"):
        audio.decode(np.random.default_rng(3).bytes(3000), name="upload.wav")
    with pytest.raises(audio.TruncatedAudioError, match="<bytes>: truncated"):
        audio.decode(wav_bytes(tmp_path)[:-100])


def test_load_array_mixes_checks_and_resamples():
    stereo = random_signal(4410, channels=2)
    waveform, rate = audio.load_array(stereo, 44100)
    np.testing.assert_allclose(waveform.numpy(), stereo.mean(axis=1), atol=1e-7)
    resampled, rate = audio.load_array(torch.from_numpy(stereo).double(), 44100, sr=16000)
    assert rate == 16000 and resampled.dtype == torch.float32 and resampled.shape == (1600,)
    expected = audio.resample_array(stereo.mean(axis=1), 44100, 16000)
    np.testing.assert_allclose(resampled.numpy(), expected, atol=1e-6)


def test_load_array_bad_inputs():
    with pytest.raises(audio.NoSamplesError, match="clip: the audio holds no samples"):
        audio.load_array(np.zeros(0, np.float32), 16000, name="clip")
    nan = random_signal(100)
    nan[5] = np.nan
    with pytest.raises(audio.NonFiniteAudioError, match="sample 5"):
        audio.load_array(nan, 16000)
    with pytest.raises(TypeError, match="floating-point"):
        audio.load_array(np.zeros(10, np.int16), 16000)
    with pytest.raises(TypeError, match="floating-point"):
        audio.load_array(torch.zeros(10, dtype=torch.int32), 16000)
    with pytest.raises(ValueError, match="shape"):
        audio.load_array(np.zeros((2, 3, 4), np.float32), 16000)
    with pytest.raises(ValueError, match="sample_rate"):
        audio.load_array(random_signal(10), 0)


@pytest.mark.parametrize("threads", [1, 3])
def test_load_many_keeps_order_and_reports_bad_files(tmp_path, threads):
    paths = [write(tmp_path / f"{i}.wav", random_signal(100 + i, seed=i), 16000, subtype="FLOAT") for i in range(4)]
    paths.insert(2, tmp_path / "missing.wav")
    with pytest.raises(audio.AudioFileNotFoundError, match="missing.wav"):
        audio.load_many(paths, threads=threads)
    results = audio.load_many(paths, threads=threads, return_errors=True)
    assert isinstance(results[2], audio.AudioFileNotFoundError)
    for path, result in zip(paths[:2] + paths[3:], results[:2] + results[3:]):
        waveform, rate = result
        assert rate == 16000 and waveform.numel() == 100 + int(path.stem)


def test_import_glam_fast_needs_no_audio_packages():
    code = "import sys, glam_fast; glam_fast.features; glam_fast.recipes; glam_fast.data; glam_fast.audio; " \
           "bad = [m for m in ('soundfile', 'soxr', 'librosa', 'safetensors') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
