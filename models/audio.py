"""Audio features Wav2Lip was trained on: 16 kHz mono -> 80-bin log-mel, 80 frames per second."""
from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
from scipy.signal import lfilter

from core.media import decode_audio

SAMPLE_RATE = 16000
N_FFT = 800
HOP = 200
WIN = 800
N_MELS = 80
FMIN, FMAX = 55.0, 7600.0
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS = 4.0
MEL_FPS = SAMPLE_RATE / HOP  # 80 mel frames per second
MEL_STEP = 16  # mel frames per video frame: the generator hears an 80 x 16 window


def load_audio(path_or_url: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode any audio ffmpeg reads (or a video's audio track) to mono float32 at 16 kHz."""
    from core.storage import local_copy

    with local_copy(str(path_or_url), role="audio") as local:
        return decode_audio(local, sample_rate)


_MEL_BASIS: np.ndarray | None = None


def _mel_basis() -> np.ndarray:
    global _MEL_BASIS
    if _MEL_BASIS is None:
        # keywords: librosa >= 0.10 no longer accepts these positionally
        _MEL_BASIS = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX)
    return _MEL_BASIS


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """80 x N normalized log-mel spectrogram in [-4, 4] of a 16 kHz mono waveform."""
    wav = np.asarray(wav, dtype=np.float32)
    emphasized = lfilter([1.0, -PREEMPHASIS], [1.0], wav)
    # reflect padding: the librosa release the model was trained with centered frames that way
    spec = np.abs(librosa.stft(y=emphasized, n_fft=N_FFT, hop_length=HOP, win_length=WIN,
                               window="hann", center=True, pad_mode="reflect"))
    mel = _mel_basis() @ spec
    db = 20.0 * np.log10(np.maximum(1e-5, mel)) - REF_LEVEL_DB
    normalized = 2 * MAX_ABS * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS
    return np.clip(normalized, -MAX_ABS, MAX_ABS).astype(np.float32)


def frame_count(n_samples: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Video frames that cover the audio: its duration times fps, rounded half up, at least one."""
    return max(1, int(np.floor(n_samples / sample_rate * float(fps) + 0.5)))


def window_starts(n_mel: int, n_frames: int, fps: float) -> np.ndarray:
    """Start mel frame of each video frame's 16-frame window.

    Frame i starts at int(i * 80 / fps) (the reference's float arithmetic); windows that would run
    past the end are the final 16 mel frames. Unlike the reference, which stops at the first such
    window (dropping up to ~0.2 s), we keep one window per frame up to the audio's full duration.
    """
    step = MEL_FPS / float(fps)
    last = max(0, n_mel - MEL_STEP)
    return np.array([min(int(i * step), last) for i in range(n_frames)], dtype=np.int64)


def mel_windows(mel: np.ndarray, n_frames: int, fps: float) -> np.ndarray:
    """(n_frames, 80, 16) mel windows, one per output video frame."""
    if mel.shape[1] < MEL_STEP:
        # very short audio: pad with silence (the normalized floor) to one full window
        mel = np.pad(mel, ((0, 0), (0, MEL_STEP - mel.shape[1])), constant_values=-MAX_ABS)
    starts = window_starts(mel.shape[1], n_frames, fps)
    idx = starts[:, None] + np.arange(MEL_STEP)[None, :]
    return np.ascontiguousarray(mel[:, idx].transpose(1, 0, 2))
