"""Media helpers for tests: generated audio/video made with the project's ffmpeg, and the optional
real clips of ``<repo>/../shared/media`` (absent on a fresh clone: tests using them are skipped)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile
from scipy.signal import chirp

from tests.conftest import SHARED_MEDIA as MEDIA, astronaut_bgr, ffmpeg  # noqa: F401 - one place for each
from tests.conftest import needs_media as requires_media  # noqa: F401


def media_file(name: str) -> Path:
    """A real clip; call only from tests marked ``requires_media``, so the folder is there."""
    path = MEDIA / name
    assert path.is_file(), f"real test media {path} missing from {MEDIA}"
    return path


# --------------------------------------------------------------------------------------------- audio
def stereo_source(sr: int = 44100, seconds: float = 3.0, seed: int = 1) -> np.ndarray:
    """(n, 2) float in [-1, 1]: chirps under a stepped loudness envelope, different per channel, + noise."""
    rng = np.random.default_rng(seed)
    n = int(sr * seconds)
    t = np.arange(n) / sr
    step = int(sr * 0.15)
    levels = rng.uniform(0.05, 0.8, n // step + 1)
    env = np.repeat(levels, step)[:n]
    env = np.convolve(env, np.ones(441) / 441, mode="same")  # 10 ms ramps between steps
    left = env * (0.6 * chirp(t, 150, seconds, 5000) + 0.2 * np.sin(2 * np.pi * 440 * t))
    right = env * 0.5 * chirp(t, 300, seconds, 3000, method="quadratic")
    x = np.stack([left, right], axis=1) + 0.02 * rng.standard_normal((n, 2))
    return np.clip(x, -1.0, 1.0)


def write_wav16(path: Path, x: np.ndarray, sr: int) -> np.ndarray:
    """Write ``x`` as 16-bit PCM; return the exact samples written as float (x / 32768)."""
    pcm = np.round(x * 32767).astype(np.int16)
    wavfile.write(str(path), sr, pcm)
    return pcm.astype(np.float64) / 32768.0


# --------------------------------------------------------------------------------------------- video
def write_video(path: Path, frames: list[np.ndarray], fps: str | int | float = 25, codec: str = "ffv1") -> Path:
    """Encode BGR uint8 frames; ``ffv1`` (in .mkv) is lossless, so decoded frames equal ``frames``."""
    h, w = frames[0].shape[:2]
    from core.media import ffmpeg_exe

    if codec == "ffv1":
        vargs = ["-c:v", "ffv1", "-pix_fmt", "bgr0"]
    else:
        vargs = ["-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p"]
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}", "-framerate", str(fps), "-i", "-",
           *vargs, str(path)]
    data = b"".join(np.ascontiguousarray(f, dtype=np.uint8).tobytes() for f in frames)
    proc = subprocess.run(cmd, input=data, capture_output=True)
    if proc.returncode != 0:
        raise AssertionError(f"ffmpeg could not write {path}: {proc.stderr.decode(errors='replace')[-800:]}")
    return path


def numbered_frames(n: int, w: int = 48, h: int = 32) -> list[np.ndarray]:
    """Frames that are easy to tell apart: frame k is filled with a distinct colour and a bar at x=k."""
    out = []
    for k in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[:] = ((37 * k) % 256, (91 * k + 40) % 256, (151 * k + 80) % 256)
        f[:, 2 * k % w] = 255
        out.append(f)
    return out


@pytest.fixture(scope="session")
def centerface():
    from models.face_detection import CenterFaceDetector

    return CenterFaceDetector()
