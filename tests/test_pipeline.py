"""End to end: the Prefect flow and the CLI on real (or generated) media with random-weight checkpoints."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.errors import NoFaceError
from core.media import decode_audio, iter_frames, probe_audio, probe_video
from models.checkpoint import CheckpointError
from models.restorer import FACE_SIZE
from models.face_track import FaceTrack
from tests.conftest import REPO, ffmpeg

FPS = 25


@pytest.fixture(scope="module")
def clip(media_dir, face_clip) -> Path:
    """2.4 s of the talking-face clip, without its audio."""
    out = media_dir / "clip_2s.mp4"
    if not out.exists():
        ffmpeg("-i", str(face_clip), "-t", "2.4", "-an", "-c:v", "libx264", "-crf", "10", str(out))
    return out


@pytest.fixture(scope="module")
def speech_2s(media_dir, speech) -> Path:
    out = media_dir / "speech_2s.wav"
    if not out.exists():
        ffmpeg("-i", str(speech), "-t", "2.0", str(out))
    return out


def untouched_mask(track: FaceTrack, shape: tuple[int, int], margin: int = 12) -> np.ndarray:
    import cv2

    from models.restorer import similarity_to_template

    mask = np.ones(shape, bool)
    for i in range(track.n_frames):
        for lm in track.faces_at(i):
            inv = cv2.invertAffineTransform(similarity_to_template(lm))
            corners = np.array([[0, 0, 1], [FACE_SIZE, 0, 1], [0, FACE_SIZE, 1], [FACE_SIZE, FACE_SIZE, 1]]) @ inv.T
            x0, y0 = np.floor(corners.min(0)).astype(int) - margin
            x1, y1 = np.ceil(corners.max(0)).astype(int) + margin
            mask[max(0, y0):y1, max(0, x0):x1] = False
        if track.sync[i]:
            x0, y0, x1, y1 = track.boxes[i]
            mask[max(0, y0 - margin):y1 + margin, max(0, x0 - margin):x1 + margin] = False
    return mask


def test_end_to_end(prefect_server, models_dir, clip, speech_2s, tmp_path):
    from flows.lipsync_hq import lipsync_hq

    out = tmp_path / "result.mp4"
    work = tmp_path / "work"
    result = lipsync_hq(audio=str(speech_2s), video=str(clip), output=str(out), work_dir=str(work),
                        precision="bf16", chunk_frames=20)
    assert result == str(out) and out.is_file()

    src = probe_video(clip)
    got = probe_video(out)
    audio = probe_audio(speech_2s)
    assert got.fps == src.fps == FPS
    assert (got.width, got.height) == (src.width, src.height)
    assert abs(got.n_frames - audio.duration * FPS) <= 1
    assert abs(got.duration - audio.duration) <= 1 / FPS

    # the audio is there and is the input's
    a_in, a_out = decode_audio(speech_2s), decode_audio(out)
    assert abs(len(a_out) - len(a_in)) <= 16000 / FPS
    n = min(len(a_in), len(a_out))
    corr = np.corrcoef(a_in[:n], a_out[:n])[0, 1]
    assert corr > 0.95, corr

    # pixels away from the face are unchanged (codec tolerance); the mouth region changed
    track = FaceTrack.load(glob.glob(str(work / "lipsync" / "*" / "faces.npz"))[0])
    assert track.sync.all()
    keep = untouched_mask(track, (src.height, src.width))
    assert keep.mean() > 0.2
    mouth_diffs, away_diffs = [], []
    for k, (a, b) in enumerate(zip(iter_frames(src), iter_frames(got))):
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=2)
        away_diffs.append(diff[keep].mean())
        x0, y0, x1, y1 = track.boxes[k]
        mouth_diffs.append(diff[(y0 + y1) // 2:y1, x0:x1].mean())
    assert max(away_diffs) < 3.0, max(away_diffs)
    assert min(mouth_diffs) > 10.0, min(mouth_diffs)

    # a second run of the finished job reuses every stage: no stage output is written again
    manifests = {p: p.stat().st_mtime_ns for p in work.rglob("manifest.json")}
    assert len(manifests) >= 7
    out2 = tmp_path / "again.mp4"
    lipsync_hq(audio=str(speech_2s), video=str(clip), output=str(out2), work_dir=str(work),
               precision="bf16", chunk_frames=20)
    assert {p: p.stat().st_mtime_ns for p in work.rglob("manifest.json")} == manifests
    assert out2.read_bytes() == out.read_bytes()


def test_still_portrait(prefect_server, models_dir, portrait, speech_2s, tmp_path):
    from flows.lipsync_hq import lipsync_hq

    short = tmp_path / "short.wav"
    ffmpeg("-i", str(speech_2s), "-t", "0.6", str(short))
    out = tmp_path / "portrait.mp4"
    lipsync_hq(audio=str(short), video=str(portrait), output=str(out), work_dir=str(tmp_path / "w"),
               still_fps=10, enhance=False)
    got = probe_video(out)
    assert got.fps == 10 and got.n_frames == 6
    assert (got.width, got.height) == (512, 512)


def test_no_face_fail_names_the_time_and_writes_nothing(prefect_server, models_dir, speech_2s, tmp_path):
    from flows.lipsync_hq import lipsync_hq

    blank = tmp_path / "blank.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=160x120:d=1:r=25", "-c:v", "libx264", str(blank))
    out = tmp_path / "o.mp4"
    with pytest.raises(NoFaceError, match=r"blank.mp4: no face to lip-sync in the frame at 0.00 s"):
        lipsync_hq(audio=str(speech_2s), video=str(blank), output=str(out), work_dir=str(tmp_path / "w"),
                   on_no_face="fail")
    assert not out.exists() and list(tmp_path.glob("*o.mp4*")) == []


def test_bad_checkpoint_is_named_and_writes_nothing(prefect_server, models_dir, clip, speech_2s, tmp_path,
                                                    monkeypatch):
    import torch

    from flows.lipsync_hq import lipsync_hq
    from models.wav2lip import Wav2Lip

    bad_dir = tmp_path / "models"
    bad_dir.mkdir()
    sd = {f"module.{k}": v for k, v in Wav2Lip().state_dict().items() if "output_block" not in k}
    torch.save({"state_dict": sd}, bad_dir / "wav2lip_gan.pth")
    os.symlink(models_dir / "GFPGANv1.4.pth", bad_dir / "GFPGANv1.4.pth")
    monkeypatch.setenv("WAV2LIP_HQ_MODELS_DIR", str(bad_dir))
    out = tmp_path / "o.mp4"
    with pytest.raises(CheckpointError, match=r"wav2lip_gan.pth: does not fit Wav2Lip: .*missing keys: output_block"):
        lipsync_hq(audio=str(speech_2s), video=str(clip), output=str(out), work_dir=str(tmp_path / "w"))
    assert not out.exists()


# ------------------------------------------------------------------------------ the CLI
def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("wav2lip-hq")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "flows.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.fixture
def cli_inputs(tmp_path, speech_2s, clip):
    silent = tmp_path / "silent.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=64x64:d=1", "-c:v", "libx264", str(silent))
    empty = tmp_path / "empty.wav"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "0", str(empty))
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 20)
    return {"audio": str(speech_2s), "video": str(clip), "silent": str(silent), "empty": str(empty),
            "text": str(text), "dir": tmp_path}


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"video .*missing.mp4: file not found"),
    ("not_media", r"video .*notes.mp4: not a media file"),
    ("no_video_stream", r"video .*speech_2s.wav: has no video stream"),
    ("no_audio_stream", r"audio .*silent.mp4: has no audio stream"),
    ("zero_audio", r"audio .*empty.wav: .*zero length"),
    ("output_is_input", r"output .*: is the same file as the input"),
    ("unwritable", r"output /proc/out.mp4: its directory /proc is not writable"),
    ("missing_dir", r"output .*/no/such/dir/out.mp4: its directory .* does not exist"),
    ("device", r"output /dev/null: exists and is not a regular file"),
    ("fifo", r"output .*/pipe.mp4: exists and is not a regular file"),
    ("symlink", r"output .*/link.mp4: is a symbolic link"),
    ("stdout", r"output /dev/stdout: is a symbolic link"),
])
def test_cli_bad_input(cli_inputs, models_dir, case, pattern):
    d = cli_inputs
    out = str(d["dir"] / "out.mp4")
    audio, video = d["audio"], d["video"]
    if case == "missing":
        video = str(d["dir"] / "missing.mp4")
    elif case == "not_media":
        video = d["text"]
    elif case == "no_video_stream":
        video = d["audio"]
    elif case == "no_audio_stream":
        audio = d["silent"]
    elif case == "zero_audio":
        audio = d["empty"]
    elif case == "output_is_input":
        out = video
    elif case == "unwritable":
        out = "/proc/out.mp4"
    elif case == "missing_dir":
        out = str(d["dir"] / "no" / "such" / "dir" / "out.mp4")
    elif case == "device":
        out = "/dev/null"
    elif case == "fifo":
        out = str(d["dir"] / "pipe.mp4")
        if not os.path.exists(out):
            os.mkfifo(out)
    elif case == "symlink":
        out = str(d["dir"] / "link.mp4")
        if not os.path.islink(out):
            (d["dir"] / "target.mp4").write_bytes(b"the user's file")
            os.symlink(d["dir"] / "target.mp4", out)
    elif case == "stdout":
        out = "/dev/stdout"
    before = {p: p.stat().st_mtime_ns for p in Path(d["dir"]).iterdir()}
    r = cli("run", "--audio", audio, "--video", video, "-o", out)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and __import__("re").search(pattern, r.stderr), r.stderr
    assert "Traceback" not in r.stderr
    after = {p: p.stat().st_mtime_ns for p in Path(d["dir"]).iterdir()}
    assert after == before  # nothing written, nothing the user gave modified
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_cli_missing_weights(cli_inputs, tmp_path):
    r = cli("run", "--audio", cli_inputs["audio"], "--video", cli_inputs["video"], "-o", str(tmp_path / "o.mp4"),
            env={"WAV2LIP_HQ_MODELS_DIR": str(tmp_path / "empty_models")})
    assert r.returncode == 2
    assert "wav2lip_gan.pth is missing" in r.stderr and "wav2lip-hq models fetch wav2lip_gan.pth" in r.stderr


def test_cli_models_list_and_verify(models_dir):
    r = cli("models", "list")
    assert r.returncode == 0 and str(models_dir) in r.stdout and "wav2lip_gan.pth" in r.stdout
    # random weights are not the published files: verify must say so, naming the file
    r = cli("models", "verify", "wav2lip_gan.pth")
    assert r.returncode == 1 and "wav2lip_gan.pth: size" in r.stdout


def test_cli_models_verify_hashes_the_file_itself(tmp_path):
    """A forged digest record beside a corrupted file must not make it verify; no files: a failure."""
    import json

    from models.weights import MANIFEST

    models = tmp_path / "models"
    models.mkdir()
    r = cli("models", "verify", env={"WAV2LIP_HQ_MODELS_DIR": str(models)})
    assert r.returncode == 1 and "no weight files to verify" in r.stderr
    w = MANIFEST["s3fd-619a316812.pth"]
    bad = models / w.name
    with open(bad, "wb") as f:  # the published size, the wrong bytes
        f.truncate(w.size)
    st = bad.stat()
    (models / f".{w.name}.sha256.json").write_text(json.dumps(
        {"stamp": {"size": st.st_size, "mtime_ns": st.st_mtime_ns}, "sha256": w.sha256}))
    r = cli("models", "verify", w.name, env={"WAV2LIP_HQ_MODELS_DIR": str(models)})
    assert r.returncode == 1 and "does not match the published" in r.stdout, r.stdout


def test_cli_help_explains_every_option():
    r = cli("run", "--help")
    assert r.returncode == 0
    for opt in ["--audio", "--video", "--output", "--checkpoint", "--gfpgan", "--blend", "--upscale",
                "--on-no-face", "--fps", "--pads", "--no-smooth", "--detector", "--crf", "--precision",
                "--device", "--work-dir", "--chunk-frames", "--batch-size", "--no-enhance", "--preset"]:
        assert opt in r.stdout
    # -o is the same flag everywhere, but what it receives differs per command
    squeeze = lambda text: " ".join(text.split())  # noqa: E731 (argparse wraps the help)
    assert "Where the final video is written" in squeeze(r.stdout)
    assert "Where the preview image is written: a .png or .jpg" in squeeze(cli("preview", "--help").stdout)
    assert "Where the face tracks are written as JSON" in squeeze(cli("faces", "--help").stdout)


def test_ctrl_c_stops_the_run_within_seconds_and_leaves_nothing(models_dir, tmp_path, speech_2s, clip):
    """Ctrl-C in a terminal signals the whole process group: one line, exit 130, no retries, nothing at
    the output, no temporary files in the work area or the temporary folder, no process left."""
    import signal
    import tempfile
    import time

    import psutil

    out, work = tmp_path / "out.mp4", tmp_path / "work"
    scratch_before = set(Path(tempfile.gettempdir()).glob("wav2lip-hq-run-*"))
    exe = Path(sys.executable).with_name("wav2lip-hq")
    proc = subprocess.Popen([str(exe), "run", "--audio", str(speech_2s), "--video", str(clip), "-o", str(out),
                             "--work-dir", str(work), "--chunk-frames", "2", "--dask-workers", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group, as a terminal's job is
    deadline = time.monotonic() + 300
    while not list(work.glob("enhance_chunk/.*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # until a chunk is being enhanced: ffmpeg pipes, model work, a temporary directory
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGINT)
    start = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - start < 20
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].startswith("error: interrupted (SIGINT): stopped")
    assert not out.exists() and not list(tmp_path.glob(".out.mp4*"))
    assert [p for p in work.rglob(".*") if p.name != "manifest.json"] == []  # no unfinished directories
    assert set(Path(tempfile.gettempdir()).glob("wav2lip-hq-run-*")) == scratch_before
    time.sleep(1)
    assert [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
