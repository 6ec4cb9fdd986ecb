"""Shared fixtures: random-weight checkpoints in the official layout, and media the tests make."""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

# Prefect results of this session only (set before Prefect is imported): records left in the user's
# ~/.prefect/storage by earlier runs must not satisfy this session's cache keys
if "PREFECT_RESULTS_LOCAL_STORAGE_PATH" not in os.environ:
    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = _results = tempfile.mkdtemp(prefix="wav2lip-hq-results-")
    atexit.register(shutil.rmtree, _results, True)

from tests.checkpoints import make_gfpgan_checkpoint, make_wav2lip_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = REPO.parent / "shared" / "media"
HAVE_MEDIA = (SHARED_MEDIA / "talk_25fps_844.mp4").is_file()
needs_media = pytest.mark.skipif(not HAVE_MEDIA, reason=f"real test media not present at {SHARED_MEDIA}")

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("WAV2LIP_HQ_RETRY_DELAYS", "0.1,0.2,0.3")  # read when tasks are defined
# the S3 server checks credentials after the few requests that create them (see s3_server)
os.environ.setdefault("INITIAL_NO_AUTH_ACTION_COUNT", "3")


def ffmpeg(*args: str) -> None:
    """Run the project's ffmpeg binary; fail the test with its log on error."""
    from core.media import ffmpeg_exe

    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise AssertionError(f"ffmpeg {' '.join(cmd[1:])} failed: {proc.stderr.decode(errors='replace')[-800:]}")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """WAV2LIP_HQ_MODELS_DIR holding random-weight files under their official names."""
    d = tmp_path_factory.mktemp("models")
    make_wav2lip_checkpoint(d / "wav2lip_gan.pth", seed=1)
    make_gfpgan_checkpoint(d / "GFPGANv1.4.pth", seed=2)
    old = os.environ.get("WAV2LIP_HQ_MODELS_DIR")
    os.environ["WAV2LIP_HQ_MODELS_DIR"] = str(d)
    yield d
    if old is None:
        os.environ.pop("WAV2LIP_HQ_MODELS_DIR", None)
    else:
        os.environ["WAV2LIP_HQ_MODELS_DIR"] = old


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def astronaut_bgr() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def make_speech_like(path: Path, seconds: float, rate: int = 44100, seed: int = 0) -> Path:
    """A voiced-speech-like signal: harmonics of a wandering pitch under a syllable envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 0.5
    sig = 0.25 * voice * envelope + 0.01 * rng.standard_normal(t.size)
    stereo = np.stack([sig, 0.9 * sig], axis=1)
    pcm = (np.clip(stereo, -1, 1) * 32767).astype("<i2")
    raw = path.with_suffix(".raw")
    raw.write_bytes(pcm.tobytes())
    ffmpeg("-f", "s16le", "-ar", str(rate), "-ac", "2", "-i", str(raw), str(path))
    raw.unlink()
    return path


def make_face_clip(path: Path, seconds: float, fps: int = 25, size: int = 384) -> Path:
    """A talking-head-like clip from the astronaut photo: a slow drift and zoom, H.264 + AAC."""
    img = astronaut_bgr()
    n = int(round(seconds * fps))
    raw = path.with_suffix(".bgr")
    with open(raw, "wb") as f:
        for i in range(n):
            s = 1.0 + 0.02 * np.sin(i / 7)
            m = np.array([[s, 0, 4 * np.sin(i / 5)], [0, s, 3 * np.cos(i / 6)]], np.float32)
            frame = cv2.warpAffine(img, m, (512, 512), borderMode=cv2.BORDER_REFLECT)
            f.write(cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA).tobytes())
    ffmpeg("-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{size}x{size}", "-r", str(fps), "-i", str(raw),
           "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
           "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "12",
           "-c:a", "aac", "-shortest", str(path))
    raw.unlink()
    return path


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def speech(media_dir) -> Path:
    """Real speech when the shared media exist, else a generated speech-like signal (44.1 kHz stereo)."""
    if HAVE_MEDIA:
        return SHARED_MEDIA / "speech_44k_stereo.wav"
    return make_speech_like(media_dir / "speech.wav", 5.0)


@pytest.fixture(scope="session")
def face_clip(media_dir) -> Path:
    """A real 25 fps talking-face clip when present, else a generated one."""
    if HAVE_MEDIA:
        return SHARED_MEDIA / "talk_25fps_844.mp4"
    return make_face_clip(media_dir / "face.mp4", 3.0)


@pytest.fixture(scope="session")
def tiny(media_dir) -> dict:
    """A short face clip (8 frames at 25 fps) and 0.32 s of audio: a few GFPGAN faces only."""
    clip = media_dir / "tiny.mp4"
    audio = media_dir / "tiny.wav"
    if not clip.exists():
        make_face_clip(clip, 0.32, fps=25, size=256)
        ffmpeg("-i", str(clip), "-vn", "-ac", "1", str(audio))
    return {"video": str(clip), "audio": str(audio)}


@pytest.fixture(scope="session")
def portrait(media_dir) -> Path:
    path = media_dir / "astronaut.png"
    cv2.imwrite(str(path), astronaut_bgr())
    return path


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto, server mode) on 127.0.0.1 that checks credentials.

    The environment then carries its endpoint and a valid key pair, as a user's would: s3fs, Dask
    workers and subprocesses all reach it the standard AWS way.
    """
    import json

    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
    iam.create_user(UserName="ci")
    key = iam.create_access_key(UserName="ci")["AccessKey"]
    iam.put_user_policy(UserName="ci", PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
           "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"], "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield {"endpoint": endpoint, **env}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture
def s3(s3_server):
    """A fresh s3fs filesystem (no cached instance) on the test server."""
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)
