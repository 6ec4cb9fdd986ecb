"""Tests for models/audio.py (log-mel features, decoding, frame/window arithmetic) and the frame
looping of tasks.lipsync.

The mel reference below is written from the published formulas with numpy only (no librosa, nothing
from models.audio), so it checks the product rather than restating it.
"""
from __future__ import annotations

import math
from fractions import Fraction

import cv2
import numpy as np
import pytest
from scipy.signal import chirp, resample_poly

from models.audio import frame_count, load_audio, mel_windows, melspectrogram, window_starts
from tests.media_fixtures import (
    ffmpeg,
    media_file,
    numbered_frames,
    requires_media,
    stereo_source,
    write_video,
    write_wav16,
)

SR = 16000


# ------------------------------------------------------------------------------ independent reference
def _hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    return np.where(f < 1000.0, 3.0 * f / 200.0,
                    15.0 + 27.0 * np.log(np.maximum(f, 1e-12) / 1000.0) / np.log(6.4))


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * np.exp((m - 15.0) * np.log(6.4) / 27.0))


def _reference_mel_basis(sr=SR, n_fft=800, n_mels=80, fmin=55.0, fmax=7600.0) -> np.ndarray:
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    bins = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    basis = np.zeros((n_mels, bins.size))
    for i in range(n_mels):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        rising = (bins - lo) / (mid - lo)
        falling = (hi - bins) / (hi - mid)
        basis[i] = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (hi - lo))
    return basis


def reference_melspectrogram(wav: np.ndarray) -> np.ndarray:
    x = np.asarray(wav, dtype=np.float64)
    y = x.copy()
    y[1:] = x[1:] - 0.97 * x[:-1]
    n_fft, hop = 800, 200
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    padded = np.pad(y, n_fft // 2, mode="reflect")
    n_frames = 1 + (padded.size - n_fft) // hop
    frames = np.stack([padded[t * hop:t * hop + n_fft] for t in range(n_frames)])
    magnitude = np.abs(np.fft.rfft(frames * window, axis=1)).T  # (401, T)
    s = 20.0 * np.log10(np.maximum(1e-5, _reference_mel_basis() @ magnitude)) - 20.0
    return np.clip(8.0 * (s + 100.0) / 100.0 - 4.0, -4.0, 4.0)


def reference_mel_chunks(mel: np.ndarray, fps: float) -> list[np.ndarray]:
    """Wav2Lip's inference.py loop, verbatim in behaviour: stops after the first clamped window."""
    chunks, i = [], 0
    mel_idx_multiplier = 80.0 / fps
    while True:
        start_idx = int(i * mel_idx_multiplier)
        if start_idx + 16 > mel.shape[1]:
            chunks.append(mel[:, mel.shape[1] - 16:])
            break
        chunks.append(mel[:, start_idx:start_idx + 16])
        i += 1
    return chunks


def make_signal(n: int = 20923, seed: int = 7) -> np.ndarray:
    """~1.3 s at 16 kHz: two chirps, a tone burst and seeded noise (length not a multiple of the hop)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    x = 0.4 * chirp(t, 80, t[-1], 7000) + 0.2 * chirp(t, 3000, t[-1], 200, method="quadratic")
    x += 0.3 * np.sin(2 * np.pi * 1234.0 * t) * (t > 0.5) * (t < 0.8)
    x += 0.03 * rng.standard_normal(n)
    x[:800] *= np.linspace(0, 1, 800)  # quiet start: exercises the 1e-5 floor region too
    return x.astype(np.float32)


# --------------------------------------------------------------------------------- melspectrogram
def test_melspectrogram_matches_independent_reference():
    wav = make_signal()
    mel = melspectrogram(wav)
    assert mel.shape == (80, 1 + wav.size // 200)
    assert mel.dtype == np.float32
    ref = reference_melspectrogram(wav)
    assert np.max(np.abs(mel - ref)) < 1e-4
    # the signal spans the range: not a trivially clipped or constant spectrogram
    assert mel.min() < -2 and mel.max() > 1 and np.std(mel) > 0.5


def test_reference_mel_basis_sanity():
    """Guards the reference itself: 80 triangles, each with a peak, ordered, covering 55..7600 Hz."""
    basis = _reference_mel_basis()
    bins = np.linspace(0, 8000, 401)
    peaks = bins[np.argmax(basis, axis=1)]
    assert np.all(np.diff(peaks) >= 0)
    assert np.all(basis.max(axis=1) > 0)
    assert basis[:, bins < 55].sum() == 0 and basis[:, bins > 7600].sum() == 0
    # Slaney area normalisation: each triangle integrates (over Hz) to about 1
    area = basis.sum(axis=1) * (bins[1] - bins[0])
    assert np.allclose(area[20:], 1.0, atol=0.05)


@pytest.mark.filterwarnings("ignore:n_fft=800 is too large")
@pytest.mark.parametrize("n", [200, 3200, 16001])
def test_melspectrogram_shape_and_silence_floor(n):
    mel = melspectrogram(np.zeros(n, np.float32))
    assert mel.shape == (80, 1 + n // 200)
    assert np.all(mel == -4.0)


@requires_media
def test_melspectrogram_real_speech_matches_reference():
    wav = load_audio(media_file("speech_44k_stereo.wav"))
    mel = melspectrogram(wav)
    assert mel.shape == (80, 1 + wav.size // 200)
    assert np.max(np.abs(mel - reference_melspectrogram(wav))) < 1e-4


# ------------------------------------------------------------------------------------- load_audio
SRC_SECONDS = 3.0


@pytest.fixture(scope="module")
def encoded_audio(tmp_path_factory):
    """The 44.1 kHz stereo source, its 16 kHz mono reference, and the same audio in several formats."""
    d = tmp_path_factory.mktemp("audio")
    src = d / "src.wav"
    exact = write_wav16(src, stereo_source(44100, SRC_SECONDS), 44100)
    reference = resample_poly(exact.mean(axis=1), 160, 441)
    files = {
        "wav": (d / "a.wav", ["-c:a", "pcm_s16le"]),
        "flac": (d / "a.flac", ["-c:a", "flac"]),
        "mp3": (d / "a.mp3", ["-c:a", "libmp3lame", "-b:a", "128k"]),
        "m4a": (d / "a.m4a", ["-c:a", "aac", "-b:a", "128k"]),
        "aac": (d / "a.aac", ["-c:a", "aac", "-b:a", "128k"]),
    }
    out = {}
    for kind, (path, args) in files.items():
        ffmpeg("-i", src, *args, path)
        out[kind] = path
    video = d / "v.mp4"
    ffmpeg("-f", "lavfi", "-i", f"color=c=gray:s=64x64:r=25:d={SRC_SECONDS}", "-i", src,
           "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-pix_fmt", "yuv420p",
           "-c:a", "aac", "-b:a", "128k", video)
    out["mp4"] = video
    return reference, out


def _envelope(x: np.ndarray, frame: int = 320) -> np.ndarray:
    n = x.size // frame
    return np.sqrt(np.mean(x[:n * frame].reshape(n, frame) ** 2, axis=1))


def _best_lag_corr(a: np.ndarray, b: np.ndarray, max_lag: int) -> tuple[int, float]:
    best = (0, -1.0)
    for lag in range(-max_lag, max_lag + 1):
        x = a[max(0, lag):]
        y = b[max(0, -lag):]
        m = min(x.size, y.size)
        c = float(np.corrcoef(x[:m], y[:m])[0, 1])
        if c > best[1]:
            best = (lag, c)
    return best


@pytest.mark.parametrize("kind", ["wav", "flac", "mp3", "m4a", "aac", "mp4"])
def test_load_audio_formats(encoded_audio, kind):
    reference, files = encoded_audio
    wav = load_audio(files[kind])
    assert wav.dtype == np.float32 and wav.ndim == 1
    expected = SRC_SECONDS * SR
    assert abs(wav.size - expected) <= 0.02 * expected, (kind, wav.size)
    assert np.all(np.isfinite(wav))
    m = min(wav.size, reference.size)
    if kind in ("wav", "flac"):
        corr = np.corrcoef(wav[:m], reference[:m])[0, 1]
        assert corr > 0.99, (kind, corr)
        # same waveform up to the downmix gain (the gain itself: see the level test below)
        core = slice(200, m - 200)  # resample_poly's zero-padded edges
        gain = np.dot(wav[core], reference[core]) / np.dot(reference[core], reference[core])
        assert np.max(np.abs(wav[core] - gain * reference[core])) < 0.02
    else:
        # lossy: loudness envelope (20 ms frames) must follow the source, allowing encoder delay
        lag, corr = _best_lag_corr(_envelope(wav), _envelope(reference), max_lag=5)
        assert corr > 0.9, (kind, lag, corr)
        assert abs(lag) <= 3, (kind, lag)  # at most ~60 ms of priming delay
        assert 0.5 < np.std(wav) / np.std(reference) < 2.0


def test_load_audio_stereo_downmix_level_is_channel_mean(encoded_audio):
    """Wav2Lip's reference loads audio with librosa, whose mono downmix is the mean of the channels;
    the mel features (absolute dB) depend on that level."""
    reference, files = encoded_audio
    wav = load_audio(files["wav"])
    core = slice(200, min(wav.size, reference.size) - 200)
    gain = np.dot(wav[core], reference[core]) / np.dot(reference[core], reference[core])
    assert gain == pytest.approx(1.0, abs=0.01)


def test_load_audio_mono_level_preserved(tmp_path):
    src = tmp_path / "mono.wav"
    exact = write_wav16(src, stereo_source(44100, 1.0)[:, 0], 44100)
    reference = resample_poly(exact, 160, 441)
    wav = load_audio(src)
    core = slice(200, min(wav.size, reference.size) - 200)
    assert np.max(np.abs(wav[core] - reference[core])) < 0.01


def test_load_audio_accepts_str_path(encoded_audio):
    _, files = encoded_audio
    assert np.array_equal(load_audio(str(files["flac"])), load_audio(files["flac"]))


@requires_media
def test_load_audio_real_speech():
    wav = load_audio(media_file("speech_44k_stereo.wav"))
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(wav.size - 5.02 * SR) <= 0.02 * 5.02 * SR
    assert 0.01 < np.std(wav) < 1.0


# -------------------------------------------------------------------------- frame/window arithmetic
def test_frame_count_from_audio_duration():
    assert frame_count(2 * SR, 25) == 50
    assert frame_count(2 * SR + 100, 25) == 50
    assert frame_count(2 * SR + 600, 25) == 51  # 2.0375 s * 25 = 50.94
    assert frame_count(0, 25) == 1 and frame_count(1, 25) == 1
    assert frame_count(10 * SR, Fraction(30000, 1001)) == 300  # 299.7 -> 300
    for n in range(1000, 200000, 7919):
        for fps in (25, 30, 24, Fraction(30000, 1001), 12.5):
            k = frame_count(n, fps)
            # the frames cover the audio to within half a frame
            assert abs(k / float(fps) - n / SR) <= 0.5 / float(fps) + 1e-9


@pytest.mark.parametrize("fps", [25, 30, 24, 60, Fraction(30000, 1001), Fraction(24000, 1001), 12.5])
def test_window_starts_follow_reference_float_arithmetic(fps):
    n_frames = 4000
    starts = window_starts(10 ** 6, n_frames, fps)
    assert starts.dtype == np.int64 and starts.shape == (n_frames,)
    step = 80.0 / float(fps)
    assert starts.tolist() == [int(i * step) for i in range(n_frames)]


def test_window_starts_fps30_and_ntsc_rounding():
    # fps 30: the reference expression at i=3 is int(3 * 2.666...) — computed, not assumed
    ref3 = int(3 * (80.0 / 30))
    assert ref3 == 8
    assert window_starts(100, 10, 30)[3] == ref3
    assert window_starts(100, 10, 30.0).tolist() == [int(i * (80.0 / 30)) for i in range(10)]
    # 24000/1001 fps: i * (80 / fps) falls just below an exact integer at i=300 (exact 1001);
    # the reference's float truncation gives 1000 and we must reproduce it (not the exact floor).
    fps = Fraction(24000, 1001)
    assert math.floor(Fraction(300 * 80) / fps) == 1001
    ref = int(300 * (80.0 / float(fps)))
    assert ref == 1000
    assert window_starts(10 ** 5, 301, fps)[300] == ref


def test_window_starts_clamp_to_final_window():
    starts = window_starts(40, 30, 25)  # step 3.2 mel frames per video frame
    assert starts.max() == 40 - 16
    for i, s in enumerate(starts):
        assert s == min(int(i * 3.2), 24)
    assert window_starts(10, 5, 25).tolist() == [0] * 5  # mel shorter than a window: start 0


@pytest.mark.parametrize("seconds,fps", [(1.3, 25), (2.0, 30), (1.77, Fraction(30000, 1001)), (0.9, 24)])
def test_mel_windows_match_reference_chunks(seconds, fps):
    wav = make_signal(int(seconds * SR))
    mel = melspectrogram(wav)
    n_frames = frame_count(wav.size, fps)
    windows = mel_windows(mel, n_frames, fps)
    assert windows.shape == (n_frames, 80, 16)
    assert windows.dtype == mel.dtype and windows.flags["C_CONTIGUOUS"]
    ref = reference_mel_chunks(mel, float(fps))
    # the reference stops at its first clamped window; we keep one window per frame of the audio
    assert len(ref) <= n_frames <= len(ref) + math.ceil(16 * float(fps) / 80) + 1
    for i, chunk in enumerate(ref):
        np.testing.assert_array_equal(windows[i], chunk)
    for i in range(len(ref), n_frames):
        np.testing.assert_array_equal(windows[i], mel[:, -16:])


def test_mel_windows_short_mel_is_padded_with_floor():
    mel = melspectrogram(make_signal(1600))  # 0.1 s -> 9 mel frames
    assert mel.shape[1] == 9
    windows = mel_windows(mel, 3, 25)
    assert windows.shape == (3, 80, 16)
    for w in windows:
        np.testing.assert_array_equal(w[:, :9], mel)
        assert np.all(w[:, 9:] == -4.0)


def test_audio_longer_and_shorter_than_video():
    fps, n_src = 25, 50  # a 2 s video
    longer = make_signal(int(3.3 * SR))
    n_long = frame_count(longer.size, fps)
    assert n_long == 83 and n_long > n_src  # 82.5 frames, rounded half up; video frames loop
    w = mel_windows(melspectrogram(longer), n_long, fps)
    assert w.shape == (83, 80, 16)
    shorter = make_signal(SR)
    n_short = frame_count(shorter.size, fps)
    assert n_short == 25 and n_short < n_src  # video is cut
    assert mel_windows(melspectrogram(shorter), n_short, fps).shape == (25, 80, 16)


# ------------------------------------------------------------------------------- SourceFrames
@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory):
    frames = numbered_frames(5)
    path = write_video(tmp_path_factory.mktemp("video") / "tiny.mkv", frames, fps=25)
    return path, frames


def _source(info, n_out, loop, tmp_path):
    from tasks.lipsync import SourceFrames

    with SourceFrames(info, n_out, loop, tmp_path) as source:
        out = [source.frame(i) for i in range(n_out)]
    assert list(tmp_path.iterdir()) == []  # the spool file is removed
    return out


@pytest.mark.parametrize("loop,order", [("forward", [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]),
                                        ("pingpong", [0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3])])
def test_source_frames_loop(tiny_video, tmp_path, loop, order):
    from core.media import probe_video

    path, src = tiny_video
    info = probe_video(path)
    assert info.n_frames == 5 and not info.is_still
    out = _source(info, 12, loop, tmp_path)
    assert [k for _, k in out] == order
    for i, (f, k) in enumerate(out):
        np.testing.assert_array_equal(f, src[k], err_msg=f"output frame {i}")


def test_source_frames_cut(tiny_video, tmp_path):
    from core.media import probe_video

    path, src = tiny_video
    out = _source(probe_video(path), 3, "pingpong", tmp_path)
    assert [k for _, k in out] == [0, 1, 2]
    for f, k in out:
        np.testing.assert_array_equal(f, src[k])


def test_source_frames_still_image_counts_from_audio(tmp_path):
    from core.media import probe_video

    img = numbered_frames(4)[3]
    path = tmp_path / "still.png"
    assert cv2.imwrite(str(path), img)
    info = probe_video(path, still_fps=25)
    assert info.is_still and info.n_frames == 1
    n_out = frame_count(int(1.3 * SR) + 100, info.fps)  # audio decides: 1.306 s -> 33 frames
    assert n_out == 33
    spool = tmp_path / "spool"
    spool.mkdir()
    out = _source(info, n_out, "pingpong", spool)
    assert len(out) == n_out
    for f, k in out:
        assert k == 0
        np.testing.assert_array_equal(f, img)
