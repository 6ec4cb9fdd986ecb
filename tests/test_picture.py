"""The picture (issue: seamless mouth, the right speaker, looping, the reference's --box): the lipsync
and enhance_chunk stage functions on real clips (generated ones without ../shared/media), checked
frame by frame on the lossless intermediate video, before any lossy encode."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from core.media import decode_audio, iter_frames, probe_audio, probe_video, read_video_file_frames
from core.options import RunOptions
from core.products import Chunk
from models.audio import melspectrogram
from models.face_track import FaceTrack, source_index
from tasks.detect_faces import detect_faces
from tasks.enhance_chunk import enhance_chunk
from tasks.lipsync import lipsync, mouth_mask, paste
from tests.conftest import ffmpeg, needs_media
from tests.media_fixtures import media_file, numbered_frames, write_video


def run_lipsync(video: Path, audio: Path, out: Path, **options):
    """The lipsync stage's function as the stage calls it: probed inputs, saved detections."""
    info = probe_video(video)
    dets = detect_faces(info, "centerface").save(out.parent / f"{out.name}-detections.npz")
    synced = lipsync(probe_audio(audio), info, dets, out, RunOptions(**options))
    frames = list(read_video_file_frames(synced.video, synced.width, synced.height))
    return synced, frames, FaceTrack.load(synced.face_track), list(iter_frames(info))


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory, face_clip, speech):
    d = tmp_path_factory.mktemp("picture")
    clip, audio = d / "clip.mkv", d / "speech.wav"
    ffmpeg("-i", face_clip, "-frames:v", "10", "-vf", "scale=424:424", "-an", "-c:v", "ffv1", clip)
    ffmpeg("-i", speech, "-t", "1.2", audio)
    return clip, audio


def seam(out: np.ndarray, src: np.ndarray, box) -> float:
    """Largest one-pixel jump of |output - source| across the box's border."""
    d = np.abs(out.astype(np.float32) - src.astype(np.float32)).mean(axis=2)
    x1, y1, x2, y2 = (int(v) for v in box)
    h, w = d.shape
    jumps = []
    if x1 > 0:
        jumps.append(np.abs(d[y1:y2, x1] - d[y1:y2, x1 - 1]))
    if x2 < w:
        jumps.append(np.abs(d[y1:y2, x2 - 1] - d[y1:y2, x2]))
    if y1 > 0:
        jumps.append(np.abs(d[y1, x1:x2] - d[y1 - 1, x1:x2]))
    if y2 < h:
        jumps.append(np.abs(d[y2 - 1, x1:x2] - d[y2, x1:x2]))
    return float(max(j.max() for j in jumps))


def test_feathered_mouth_leaves_no_seam(models_dir, short_clip, tmp_path):
    clip, audio = short_clip
    results = {}
    for mask in ("box", "feather"):
        synced, frames, plan, src = run_lipsync(clip, audio, tmp_path / mask, mask=mask)
        assert plan.sync.all()
        results[mask] = [seam(f, src[source_index(i, len(src), synced.loop)],
                              plan.boxes[source_index(i, len(src), synced.loop)]) for i, f in enumerate(frames)]
    box, feather = max(results["box"]), max(results["feather"])
    print(f"largest jump across the box border: box {box:.1f}, feather {feather:.1f}")
    assert box > 20  # the pasted box does show its edge
    assert feather <= box / 4


@pytest.mark.parametrize("size", [(96, 96), (181, 143), (7, 5), (1, 1), (2, 9), (12, 33), (190, 201)])
def test_feathered_paste_is_the_mask_weighted_blend(size):
    """paste(mask="feather"): prediction * w + frame * (1 - w) with mouth_mask's weights, rounded to the
    nearest level; nothing outside the box changes, and the frame passed in is not written into."""
    rng = np.random.default_rng(size[0])
    frame = rng.integers(0, 256, (240, 260, 3), dtype=np.uint8)
    before = frame.copy()
    prediction = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    h, w = size
    box = (30, 40, 30 + w, 40 + h)
    out = paste(frame, prediction, box, "feather")
    np.testing.assert_array_equal(frame, before)
    weight = mouth_mask(h, w)[0][..., None].astype(np.float64)
    face = cv2.resize(prediction, (w, h)).astype(np.float64)
    want = face * weight + before[40:40 + h, 30:30 + w] * (1.0 - weight)
    got = out[40:40 + h, 30:30 + w].astype(np.float64)
    assert np.abs(got - want).max() <= 0.51  # the nearest level (the blend computes in float32)
    outside = np.ones(frame.shape[:2], bool)
    outside[40:40 + h, 30:30 + w] = False
    np.testing.assert_array_equal(out[outside], before[outside])
    if min(size) >= 20:  # the mouth is the prediction, the top rows and the box's rim are the frame
        assert weight[int(0.8 * h), w // 2] == 1.0 and weight[0].max() == 0.0 and weight[:, 0].max() < 0.1
    np.testing.assert_array_equal(paste(frame, prediction, box, "box")[40:40 + h, 30:30 + w], face.astype(np.uint8))


def reference_inference(model, frames: list[np.ndarray], wav: np.ndarray, fps: float, box, batch: int
                        ) -> list[np.ndarray]:
    """The reference inference script's algorithm with --box, written out independently: mel chunks
    of 16 starting at int(i * 80 / fps), frames looped forward, crops resized to 96, lower half
    blanked, batches of ``batch`` (its --wav2lip_batch_size), the prediction resized back and pasted
    over the box."""
    mel = melspectrogram(wav)
    chunks, i = [], 0
    while True:
        start = int(i * 80.0 / fps)
        if start + 16 > mel.shape[1]:
            chunks.append(mel[:, mel.shape[1] - 16:])
            break
        chunks.append(mel[:, start:start + 16])
        i += 1
    y1, y2, x1, x2 = box
    out = []
    for b in range(0, len(chunks), batch):
        idx = list(range(b, min(b + batch, len(chunks))))
        faces = np.asarray([cv2.resize(frames[k % len(frames)][y1:y2, x1:x2], (96, 96)) for k in idx])
        masked = faces.copy()
        masked[:, 48:] = 0
        img = np.concatenate((masked, faces), axis=3) / 255.0
        mels = np.asarray([chunks[k] for k in idx])[..., None]
        with torch.no_grad():
            pred = model(torch.FloatTensor(np.transpose(mels, (0, 3, 1, 2))),
                         torch.FloatTensor(np.transpose(img, (0, 3, 1, 2))))
        pred = pred.cpu().numpy().transpose(0, 2, 3, 1) * 255.0
        for k, p in zip(idx, pred):
            f = frames[k % len(frames)].copy()
            f[y1:y2, x1:x2] = cv2.resize(p.astype(np.uint8), (x2 - x1, y2 - y1))
            out.append(f)
    return out


def test_fixed_box_is_the_reference_inference(models_dir, short_clip, tmp_path):
    from models.loading import get_model

    clip, audio = short_clip
    box = (100, 330, 110, 320)  # top bottom left right
    # the reference runs torch: so does the stage here (OpenVINO's own fp32 kernels round differently)
    synced, frames, plan, src = run_lipsync(clip, audio, tmp_path / "box", box=box, mask="box", smooth=False,
                                            loop="forward", precision="fp32", batch_size=9, engine="torch")
    model, _ = get_model("wav2lip", "wav2lip_gan.pth", "cpu")
    # the same batches on both sides: the network's float results depend on the batch it runs in
    expected = reference_inference(model, src, decode_audio(audio), float(synced.fps), box, batch=9)
    # the reference stops at the first mel window that would run past the audio's end (up to 0.2 s
    # early); we go on to the audio's full duration: every frame it makes, we make the same
    assert len(frames) - 0.2 * float(synced.fps) <= len(expected) <= len(frames)
    assert len(expected) > 2 * len(src)  # looped over twice
    for i, (got, want) in enumerate(zip(frames, expected)):
        np.testing.assert_array_equal(got, want, err_msg=f"frame {i}")


def test_overlapped_stage_makes_the_frames_of_batch_by_batch_calls(models_dir, short_clip, tmp_path):
    """Decoding ahead and pasting/encoding behind the network (threads) changes no pixel and no order:
    the stage's frames equal :func:`sync_frames` called batch after batch on the source frames."""
    from models.audio import frame_count, mel_windows
    from models.loading import get_wav2lip
    from tasks.lipsync import sync_frames

    clip, audio = short_clip
    opts = RunOptions(batch_size=4)  # 30 output frames from 10 source frames: 8 batches, the spool read backward
    synced, frames, plan, src = run_lipsync(clip, audio, tmp_path / "out", batch_size=4)
    model, device = get_wav2lip(opts.checkpoint, opts.device, opts.engine, opts.precision)
    wav = decode_audio(audio)
    windows = mel_windows(melspectrogram(wav), frame_count(len(wav), synced.fps), synced.fps)
    expected = []
    for start in range(0, synced.n_frames, 4):
        batch = [(src[source_index(i, len(src), "pingpong")], i, source_index(i, len(src), "pingpong"))
                 for i in range(start, min(start + 4, synced.n_frames))]
        expected += sync_frames(model, device, batch, plan, windows, opts)
    assert len(frames) == len(expected) == 30
    for i, (got, want) in enumerate(zip(frames, expected)):
        np.testing.assert_array_equal(got, want, err_msg=f"frame {i}")


@pytest.mark.parametrize("where", ["decode", "network", "encode"])
def test_a_failure_in_any_thread_stops_the_stage_cleanly(models_dir, short_clip, tmp_path, monkeypatch, where):
    """An error while decoding ahead, in the network or while encoding behind reaches the caller as it was
    raised, and leaves no output, no partial file and no spool behind."""
    import tasks.lipsync as stage

    calls = {"n": 0}

    def failing(original, at):
        def call(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == at:
                raise RuntimeError(f"boom in {where}")
            return original(*args, **kwargs)
        return call

    if where == "decode":
        monkeypatch.setattr(stage.SourceFrames, "frame", failing(stage.SourceFrames.frame, 13))
    elif where == "network":
        monkeypatch.setattr(stage, "predict_batch", failing(stage.predict_batch, 3))
    else:
        monkeypatch.setattr(stage, "paste_batch", failing(stage.paste_batch, 2))
    clip, audio = short_clip
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=f"boom in {where}"):
        run_lipsync(clip, audio, out, batch_size=4)
    assert calls["n"] >= 2
    assert sorted(p.name for p in out.iterdir()) == ["faces.npz"]  # the face plan is written first


@pytest.mark.parametrize("loop", ["pingpong", "forward"])
def test_loop_order_of_source_frames(models_dir, tmp_path, loop):
    src = numbered_frames(6, 64, 48)  # no face: lip-sync passes the frames through unchanged
    video = write_video(tmp_path / "n.mkv", src, fps=25)
    audio = tmp_path / "a.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:duration=0.64", "-ar", "16000", audio)
    synced, frames, _, _ = run_lipsync(video, audio, tmp_path / "out", loop=loop)
    assert synced.n_frames == len(frames) == 16
    order = [0, 1, 2, 3, 4, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5] if loop == "pingpong" else [i % 6 for i in range(16)]
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(f, src[order[i]], err_msg=f"output frame {i}")
    assert not list((tmp_path / "out").glob(".*"))  # the spool of decoded frames is gone


@pytest.fixture(scope="module")
def two_people(tmp_path_factory, speech):
    """The two real clips side by side in one video (4 frames), and as much speech."""
    d = tmp_path_factory.mktemp("two")
    video = d / "two.mkv"
    ffmpeg("-i", media_file("talk_25fps_844.mp4"), "-i", media_file("talk_vfr_700.mp4"), "-filter_complex",
           "[0:v]scale=320:320,fps=25[a];[1:v]scale=320:320,fps=25[b];[a][b]hstack=inputs=2",
           "-frames:v", "4", "-an", "-c:v", "ffv1", video)
    audio = d / "speech.wav"
    ffmpeg("-i", speech, "-t", "0.16", audio)
    return video, audio


def _half(frame: np.ndarray, right: bool) -> np.ndarray:
    return frame[:, 320:] if right else frame[:, :320]


@needs_media
def test_only_the_chosen_speaker_is_lip_synced_and_restored(models_dir, two_people, tmp_path):
    video, audio = two_people
    for face, speaker_right in (("auto", None), ("1", True), ("100,160", False)):
        synced, frames, plan, src = run_lipsync(video, audio, tmp_path / f"s{face.replace(',', '_')}", face=face,
                                                loop="forward")
        assert plan.sync.all()
        right = bool(plan.boxes[0, 0] >= 320)
        if speaker_right is not None:
            assert right == speaker_right, face
        assert all(bool(b[0] >= 320) == right for b in plan.boxes)  # one face the whole time
        for i, f in enumerate(frames):
            np.testing.assert_array_equal(_half(f, not right), _half(src[i % len(src)], not right))
            assert not np.array_equal(_half(f, right), _half(src[i % len(src)], right))

    # restoration: both faces by default, only the speaker's with restore=speaker
    chunk = Chunk(path=synced.video, index=0, start=0, n_frames=synced.n_frames)
    for restore in ("all", "speaker"):
        out = enhance_chunk(chunk, synced.face_track, synced, tmp_path / f"restore-{restore}",
                            RunOptions(restore=restore))
        restored = list(read_video_file_frames(out.path, synced.width, synced.height))
        other_kept = all(np.array_equal(_half(r, not right), _half(f, not right)) for r, f in zip(restored, frames))
        assert other_kept == (restore == "speaker"), restore
        assert not np.array_equal(_half(restored[0], right), _half(frames[0], right))


def test_new_options_enter_only_their_stages_keys(models_dir):
    from core.products import FaceDetections, Job
    from tasks import detect_faces as det
    from tasks import enhance_chunk as enh
    from tasks import lipsync as lip

    info = dict(path="v.mp4", width=64, height=64, fps_num=25, fps_den=1, n_frames=10, is_still=False, vfr=False)
    job = Job(audio="a.wav", video="v.mp4", output="o.mp4", audio_sha256="a" * 64, video_sha256="b" * 64,
              audio_info=dict(path="a.wav", sample_rate=16000, channels=1, duration=1.0), video_info=info)
    dets = FaceDetections(key="d", detections="x", n_frames=10, faces=10)
    chunk = Chunk(key="s/0", path="c.mkv", index=0, start=0, n_frames=10)
    base = RunOptions()
    keys = lambda o: (det.STAGE.key(job=job, opts=o), lip.STAGE.key(job=job, detections=dets, opts=o),  # noqa: E731
                      enh.STAGE.key(chunk=chunk, opts=o))
    ref = keys(base)
    changed = {name: [a != b for a, b in zip(ref, keys(base.model_copy(update={name: value})))]
               for name, value in [("mask", "box"), ("face", "largest"), ("loop", "forward"), ("smooth", False),
                                   ("box", (1, 30, 1, 30)), ("restore", "speaker")]}
    for name in ("mask", "face", "loop", "smooth", "box"):
        assert changed[name] == [False, True, False], name
    assert changed["restore"] == [False, False, True]


# ------------------------------------------------------------------------------ the CLI
def test_faces_command_writes_the_tracks(models_dir, tiny, tmp_path):
    import json

    from tests.test_pipeline import cli

    out = tmp_path / "faces.json"
    r = cli("faces", "--video", tiny["video"], "-o", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["n_frames"] == 8 and len(data["frames"]) == 8 and data["cuts"] == []
    assert [t["id"] for t in data["tracks"]] == [0] and data["speakers"] == [0]
    assert data["frames_without_face"] == 0 and data["faces"] == 8
    face = data["frames"][3]["faces"][0]
    assert face["track"] == 0 and face["speaker"] and 0 < face["score"] <= 1
    assert len(face["box"]) == len(face["box_raw"]) == 4
    assert np.asarray(face["landmarks"]).shape == np.asarray(face["landmarks_raw"]).shape == (5, 2)
    assert face["landmarks"] != face["landmarks_raw"]  # smoothed
    assert "8 faces in 1 tracks over 8 frames" in r.stdout

    raw = tmp_path / "raw.json"
    assert cli("faces", "--video", tiny["video"], "-o", str(raw), "--no-smooth").returncode == 0
    frame = json.loads(raw.read_text())["frames"][3]["faces"][0]
    assert frame["landmarks"] == frame["landmarks_raw"]
    r = cli("faces", "--video", tiny["video"], "-o", str(tmp_path / "f.txt"))
    assert r.returncode == 2 and r.stderr.startswith("error: output ") and not (tmp_path / "f.txt").exists()


def test_preview_renders_source_synced_and_restored(models_dir, tiny, tmp_path):
    from tests.test_pipeline import cli

    out = tmp_path / "preview.png"
    r = cli("preview", "--audio", tiny["audio"], "--video", tiny["video"], "--at", "0.1", "-o", str(out),
            "--upscale", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    image = cv2.imread(str(out))
    # three panels of the 512-pixel height of the x2 restored frame (plus the label band), 4-pixel gaps
    assert image.shape[0] == 512 + 25 and image.shape[1] == 3 * 512 + 2 * 4
    source = cv2.resize(next(iter_frames(probe_video(tiny["video"]))), (512, 512), interpolation=cv2.INTER_LANCZOS4)
    assert not np.array_equal(image[25:, 516:1028], source)  # the lip-synced panel differs from the source
    plain = tmp_path / "plain.png"
    assert cli("preview", "--audio", tiny["audio"], "--video", tiny["video"], "--at", "0", "-o", str(plain),
               "--no-enhance").returncode == 0
    assert cv2.imread(str(plain)).shape[1] == 2 * 256 + 4
    r = cli("preview", "--audio", tiny["audio"], "--video", tiny["video"], "--at", "9", "-o",
            str(tmp_path / "late.png"))
    assert r.returncode == 2 and r.stderr.startswith("error: --at: 9 s is outside the output, which lasts 0.32 s")
    assert not (tmp_path / "late.png").exists()


def test_own_checkpoints_by_path_and_a_track_that_does_not_exist(models_dir, tiny, tmp_path):
    import shutil

    from tests.checkpoints import make_wav2lip_checkpoint
    from tests.test_pipeline import cli

    mine = make_wav2lip_checkpoint(tmp_path / "finetuned.pth", seed=7)
    out = tmp_path / "p.png"
    r = cli("preview", "--audio", tiny["audio"], "--video", tiny["video"], "--at", "0.1", "-o", str(out),
            "--checkpoint", str(mine), "--gfpgan", str(models_dir / "GFPGANv1.4.pth"))
    assert r.returncode == 0, r.stderr[-2000:]
    official = tmp_path / "o.png"
    assert cli("preview", "--audio", tiny["audio"], "--video", tiny["video"], "--at", "0.1", "-o",
               str(official)).returncode == 0
    assert not np.array_equal(cv2.imread(str(out)), cv2.imread(str(official)))  # other weights, other mouth

    r = cli("models", "verify", str(mine))
    assert r.returncode == 0 and "custom (not in the manifest)" in r.stdout, r.stdout + r.stderr

    # a present file that fails verification is told apart from one that cannot be downloaded
    broken = tmp_path / "models"
    broken.mkdir()
    shutil.copy(mine, broken / "wav2lip.pth")
    r = cli("models", "fetch", "wav2lip.pth", env={"WAV2LIP_HQ_MODELS_DIR": str(broken), "HTTPS_PROXY": "http://127.0.0.1:9"})
    assert r.returncode == 1
    assert f"wav2lip.pth is present at {broken / 'wav2lip.pth'} but fails verification" in r.stderr

    r = cli("run", "--audio", tiny["audio"], "--video", tiny["video"], "-o", str(tmp_path / "o.mp4"), "--face", "3",
            "--work-dir", str(tmp_path / "work"))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "error: --face: track 3 does not exist; the video's tracks are 0-0" in r.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_a_checkpoint_url_is_downloaded_once_into_the_models_dir(tmp_path, monkeypatch):
    import functools
    import http.server
    import threading

    from core.errors import InputError
    from models import weights
    from tests.checkpoints import make_wav2lip_checkpoint

    served = tmp_path / "site"
    mine = make_wav2lip_checkpoint(served / "finetuned.pth", seed=3)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("WAV2LIP_HQ_MODELS_DIR", str(tmp_path / "models"))
    url = f"http://127.0.0.1:{server.server_address[1]}/finetuned.pth"
    try:
        path = weights.checkpoint_file(url)
        assert path.parent == tmp_path / "models" / "custom" and path.read_bytes() == mine.read_bytes()
        assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left
        mine.unlink()  # a second use does not download again
        assert weights.checkpoint_file(url) == path
        with pytest.raises(InputError, match=r"--gfpgan: http://127.0.0.1:\d+/gone.pth: cannot download"):
            weights.checkpoint_file(url.replace("finetuned", "gone"), "--gfpgan")
        assert [p.name for p in path.parent.iterdir()] == [path.name]
        assert weights.verify(path.name)[1].startswith(f"{path.name}: custom (not in the manifest), SHA-256 ")
    finally:
        server.shutdown()
