"""Bad input found up front, the way a user meets it: the installed CLI, one `error: <input>: <problem>`
line, exit code 2, no traceback, no retries, nothing written, nothing given modified. (More cases, on
media problems, are in test_pipeline.py's test_cli_bad_input.)"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.test_pipeline import cli, cli_inputs, clip, speech_2s  # noqa: F401 - fixtures

UNREACHABLE = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "AKIAUNREACHABLE0000",
               "AWS_SECRET_ACCESS_KEY": "unreachable-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def huge_png_header(path: Path) -> Path:
    """A tiny PNG whose header declares 65535 x 65535 pixels."""
    ok, png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(png.tobytes())
    data[16:24] = struct.pack(">II", 65535, 65535)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


# case: (how to change the good command, env, the message expected)
CASES = {
    "credentials in an input URL": (
        {"audio": "s3://AKIAEXAMPLEKEY:TopSecretValue@bucket/a.wav"}, {},
        r"audio s3://bucket/a.wav: credentials in the URL are not accepted"),
    "credentials in the output URL": (
        {"output": "s3://AKIAEXAMPLEKEY:TopSecretValue@bucket/o.mp4"}, {},
        r"output s3://bucket/o.mp4: credentials in the URL are not accepted"),
    "a container without H.264 + AAC": ({"output": "{dir}/out.webm"}, {}, r"output .*out.webm: a .webm file cannot"),
    "a text file as output": ({"output": "{dir}/out.txt"}, {}, r"output .*out.txt: a .txt file cannot"),
    "cuda without a GPU": ({"args": ["--device", "cuda"]}, {}, r"device cuda: no such CUDA device here"),
    "not a device": ({"args": ["--device", "tpu7"]}, {}, r"device tpu7: not a device name"),
    "fp16 on a CPU": ({"args": ["--precision", "fp16", "--device", "cpu"]}, {},
                      r"precision fp16: CPUs have no fast fp16"),
    "a work dir that is a file": ({"args": ["--work-dir", "{dir}/notes.mp4"]}, {},
                                  r"work_dir .*notes.mp4: is a file, not a folder"),
    "an unreachable input": ({"audio": "s3://bucket/a.wav"}, UNREACHABLE,
                             r"audio s3://bucket/a.wav: storage unreachable"),
    "an unreachable output": ({"output": "s3://bucket/o.mp4"}, UNREACHABLE,
                              r"output s3://bucket/o.mp4: storage unreachable"),
    "an unreachable work area": ({"args": ["--work-dir", "s3://bucket/work"]}, UNREACHABLE,
                                 r"work_dir s3://bucket/work: storage unreachable"),
    "an image header of 65535 x 65535": ({"video": "{dir}/huge.png"}, {},
                                         r"video .*huge.png: its header declares an image far larger"),
    "upscaled frames too large": ({"video": "{dir}/big.png", "args": ["--upscale", "2"]}, {},
                                  r"output .*out.mp4 \(--upscale 2\): frames of 12000x8000 are larger"),
    "a pipe as input": ({"audio": "{dir}/pipe.wav"}, {}, r"audio .*pipe.wav: is not a regular file"),
    "an unknown mask": ({"args": ["--mask", "oval"]}, {}, r"^error: --mask: invalid choice: 'oval'"),
    "a face choice that is not one": ({"args": ["--face", "left"]}, {},
                                      r"^error: --face: auto, largest, center, a track number N, or a point X,Y"),
    "a face point outside the frame": ({"args": ["--face", "5000,10"]}, {},
                                       r"^error: --face: the point 5000,10 is outside the \d+x\d+ frame"),
    "a box outside the frame": ({"args": ["--box", "0 5000 0 10"]}, {},
                                r"^error: --box: 0 5000 0 10 \(top bottom left right\) reaches outside the"),
    "a box upside down": ({"args": ["--box", "100 50 0 10"]}, {}, r"^error: --box: top bottom left right in pixels"),
    "a missing checkpoint file": ({"args": ["--checkpoint", "{dir}/mine.pth"]}, {},
                                  r"^error: --checkpoint: .*mine.pth: no such file"),
    "a checkpoint with other keys": (
        {"args": ["--checkpoint", "{dir}/other.pth"]}, {},
        r"^error: --checkpoint: .*other.pth: does not fit Wav2Lip: \d+ missing keys: audio_encoder.*; "
        r"1 unexpected keys: encoder.weight"),
    "a checkpoint with another network's layout": (
        {"args": ["--checkpoint", "{dir}/restorer.pth"]}, {},
        r"^error: --checkpoint: .*restorer.pth: not this network's layout: .*the file holds: params_ema"),
    "a GFPGAN checkpoint with another layout": (
        {"args": ["--gfpgan", "{dir}/lipsync.pth"]}, {},
        r"^error: --gfpgan: .*lipsync.pth: not this network's layout: .*the file holds: state_dict, optimizer"),
}


@pytest.fixture
def inputs(cli_inputs, models_dir) -> dict:
    d = cli_inputs["dir"]
    # a user's own checkpoints, each in the other network's layout
    os.symlink(models_dir / "GFPGANv1.4.pth", d / "restorer.pth")
    os.symlink(models_dir / "wav2lip_gan.pth", d / "lipsync.pth")
    torch.save({"state_dict": {"module.encoder.weight": torch.zeros(2, 2)}}, d / "other.pth")
    huge_png_header(d / "huge.png")
    cv2.imwrite(str(d / "big.png"), np.zeros((4000, 6000, 3), np.uint8))
    os.mkfifo(d / "pipe.wav")
    return cli_inputs


@pytest.mark.parametrize("case", list(CASES))
def test_refused_up_front(inputs, models_dir, case):
    change, env, pattern = CASES[case]
    d = inputs["dir"]
    job = {"audio": inputs["audio"], "video": inputs["video"], "output": str(d / "out.mp4"), "args": []}
    job.update(change)
    fill = lambda s: s.replace("{dir}", str(d))  # noqa: E731
    before = {p: p.lstat().st_mtime_ns for p in d.iterdir()}
    r = cli("run", "--audio", fill(job["audio"]), "--video", fill(job["video"]), "-o", fill(job["output"]),
            *map(fill, job["args"]), env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    assert __import__("re").search(pattern, lines[0]), lines[0]
    assert "TopSecretValue" not in r.stderr + r.stdout
    assert {p: p.lstat().st_mtime_ns for p in d.iterdir()} == before  # nothing written or modified


def test_pads_that_empty_every_face_box_are_named(models_dir, tmp_path, media_dir):
    """Negative pads larger than the face leave nothing to lip-sync: say so, not "no face found"."""
    from core.errors import InputError
    from core.media import probe_audio, probe_video
    from core.options import RunOptions
    from tasks.detect_faces import detect_faces
    from tasks.lipsync import lipsync
    from tests.conftest import ffmpeg, make_face_clip

    clip, audio = make_face_clip(tmp_path / "v.mp4", 0.2, size=256), tmp_path / "a.wav"
    ffmpeg("-i", str(clip), "-vn", str(audio))
    video = probe_video(clip)
    dets = detect_faces(video, "centerface").save(tmp_path / "detections.npz")
    with pytest.raises(InputError, match=r"--pads 0 -1000 0 0: they leave no face box"):
        lipsync(probe_audio(audio), video, dets, tmp_path / "out", RunOptions(pads=(0, -1000, 0, 0)))
    assert not (tmp_path / "out" / "synced.mkv").exists()
