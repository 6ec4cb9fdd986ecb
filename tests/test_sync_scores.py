"""Sync scores the way users meet them: ``wav2lip-hq score`` (installed CLI), the run report of the
``lipsync_hq`` flow, and the batch report's columns and low-sync flags; without the weights, a clear
error from ``score`` and no columns anywhere."""
from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.checkpoints import make_syncnet_checkpoint
from tests.conftest import ffmpeg
from tests.test_pipeline import cli


@pytest.fixture(scope="module")
def syncnet_dir(tmp_path_factory) -> Path:
    """A models directory holding only random weights under the official name syncnet_v2.model."""
    d = tmp_path_factory.mktemp("syncnet-models")
    make_syncnet_checkpoint(d / "syncnet_v2.model", seed=5)
    return d


@pytest.fixture
def syncnet_weights(models_dir, syncnet_dir):
    """The session's models directory with syncnet_v2.model added for one test (runs then score)."""
    path = models_dir / "syncnet_v2.model"
    shutil.copyfile(syncnet_dir / "syncnet_v2.model", path)
    yield path
    path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ the CLI
def test_score_prints_the_scores_and_writes_the_plot(tiny, syncnet_dir, tmp_path, monkeypatch):
    from tasks.score_sync import score_video

    env = {"WAV2LIP_HQ_MODELS_DIR": str(syncnet_dir)}
    plot = tmp_path / "sync.png"
    done = cli("score", "--video", tiny["video"], "--json", "--plot", str(plot), env=env)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["video"] == tiny["video"] and got["audio"] is None
    assert isinstance(got["offset"], int) and -15 <= got["offset"] <= 15
    assert got["lse_d"] > 0 and got["lse_c"] >= 0
    assert len(got["framewise_confidence"]) == 8 - 5  # 8 frames: 3 lip windows of 5
    assert got["first_window_seconds"] == pytest.approx(0.1)
    image = cv2.imread(str(plot))
    assert image.shape == (220, 720, 3) and (image < 250).any()

    # the same numbers as the function the flow uses, run here in-process (deterministic)
    monkeypatch.setenv("WAV2LIP_HQ_MODELS_DIR", str(syncnet_dir))
    scores = score_video(tiny["video"], device="cpu")
    assert scores.summary() == {k: got[k] for k in ("offset", "lse_d", "lse_c")}
    assert list(scores.framewise) == got["framewise_confidence"]

    text = cli("score", "--video", tiny["video"], "--audio", tiny["audio"], env=env)
    assert text.returncode == 0, text.stderr
    assert re.search(r"^LSE-D:\s+\d+\.\d{3} \(distance, lower is better", text.stdout, re.MULTILINE)
    assert re.search(r"^LSE-C:\s+\d+\.\d{3} \(confidence, higher is better", text.stdout, re.MULTILINE)
    assert re.search(r"^offset: [+-]\d+ frames", text.stdout, re.MULTILINE)


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory) -> dict:
    """1.2 s of two faces, each moving in its own way: one on screen throughout (30 frames), the other from
    the frame at 0.4 s (20 frames), a listener and a speaker who walks in."""
    from tests.conftest import astronaut_bgr, make_speech_like
    from tests.media_fixtures import write_video

    d = tmp_path_factory.mktemp("two-faces")
    head = astronaut_bgr()[30:230, 150:310]
    long, short = (cv2.resize(head, size, interpolation=cv2.INTER_AREA) for size in ((128, 160), (144, 180)))
    frames = []
    for i in range(30):
        canvas = np.full((240, 480, 3), 90, np.uint8)
        y = int(30 + 6 * np.sin(i / 3))
        canvas[y:y + 160, 40:168] = long
        if i >= 10:
            x = int(290 + 8 * np.cos(i / 2))
            canvas[30:210, x:x + 144] = short
        frames.append(canvas)
    write_video(d / "faces.mp4", frames, codec="h264")
    make_speech_like(d / "speech.wav", 1.2, seed=3)
    return {"video": str(d / "faces.mp4"), "audio": str(d / "speech.wav")}


def test_score_rates_every_face_track_and_reports_the_one_in_best_sync(two_faces, syncnet_dir):
    """Both faces are scored against the speech; the numbers shown are those of the face in best sync
    (here the shorter track, which scoring the longest face would have missed), with its framewise
    confidence and time."""
    env = {"WAV2LIP_HQ_MODELS_DIR": str(syncnet_dir)}
    done = cli("score", "--video", two_faces["video"], "--audio", two_faces["audio"], "--json", env=env)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    tracks = got["face_tracks"]
    assert [(t["first_frame"], t["frames"]) for t in tracks] == [(0, 30), (10, 20)]
    best = max(tracks, key=lambda t: t["lse_c"])
    assert best["lse_c"] > min(t["lse_c"] for t in tracks) and best["first_frame"] == 10
    assert {k: got[k] for k in ("offset", "lse_d", "lse_c")} == {k: best[k] for k in ("offset", "lse_d", "lse_c")}
    assert len(got["framewise_confidence"]) == best["frames"] - 5
    assert got["first_window_seconds"] == pytest.approx((10 + 2.5) / 25)
    text = cli("score", "--video", two_faces["video"], "--audio", two_faces["audio"], env=env)
    assert text.returncode == 0, text.stderr
    assert re.search(r"^faces:  2 face tracks scored; below, the one in best sync \(from 0\.40 s\)$", text.stdout,
                     re.MULTILINE), text.stdout


@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny) -> dict:
    d = tmp_path_factory.mktemp("score-bad")
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=96x96:d=1", "-c:v", "libx264", str(d / "silent.mp4"))
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=96x96:d=1", "-f", "lavfi", "-i", "sine=frequency=300:duration=1",
           "-c:v", "libx264", "-c:a", "aac", "-shortest", str(d / "faceless.mp4"))
    (d / "notes.wav").write_text("not audio\n" * 20)
    (d / "folder.png").mkdir()
    (d / "link.png").symlink_to(d / "notes.wav")
    cv2.imwrite(str(d / "still.png"), np.full((96, 96, 3), 128, np.uint8))
    return {"dir": d, **tiny}


CASES = {
    "no weights": (["--video", "{video}"], "empty",
                   r"error: weight file syncnet_v2.model is missing: .*wav2lip-hq models fetch syncnet_v2.model"),
    "a missing video": (["--video", "{dir}/missing.mp4"], "models", r"error: video .*missing.mp4: file not found"),
    "a video without audio": (["--video", "{dir}/silent.mp4"], "models",
                              r"error: video .*silent.mp4: has no audio stream; give the speech with --audio"),
    "audio that is not media": (["--video", "{video}", "--audio", "{dir}/notes.wav"], "models",
                                r"error: audio .*notes.wav: not a media file"),
    "no face": (["--video", "{dir}/faceless.mp4"], "models",
                r"error: video .*faceless.mp4: no face; scoring needs one face in at least 7 frames"),
    "a plot that is not an image": (["--video", "{video}", "--plot", "{dir}/plot.txt"], "models",
                                    r"error: plot .*plot.txt: give a file name ending in .png"),
    "a plot in a missing folder": (["--video", "{video}", "--plot", "{dir}/nope/plot.png"], "models",
                                   r"error: plot .*plot.png: its directory .*nope does not exist"),
    "a plot that is a folder": (["--video", "{video}", "--plot", "{dir}/folder.png"], "models",
                                r"error: plot .*folder.png: is a directory; give the path of a file in it"),
    "a plot that is a link": (["--video", "{video}", "--plot", "{dir}/link.png"], "models",
                              r"error: plot .*link.png: is a symbolic link"),
    "a plot over the input": (["--video", "{dir}/still.png", "--audio", "{audio}", "--plot", "{dir}/still.png"],
                              "models", r"error: plot .*still.png: is the same file as the input .*still.png"),
    "cuda without a GPU": (["--video", "{video}", "--device", "cuda"], "models",
                           r"error: device cuda: no such CUDA device here"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_score_bad_input(case, bad, syncnet_dir, tmp_path):
    args, models, pattern = CASES[case]
    plot = tmp_path / "sync.png"
    env = {"WAV2LIP_HQ_MODELS_DIR": str(syncnet_dir if models == "models" else tmp_path)}
    done = cli("score", *[a.format(**bad) for a in args], *([] if "--plot" in args else ["--plot", str(plot)]),
               env=env)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(pattern, lines[0]), done.stderr
    assert done.stdout == "" and not plot.exists() and not list(tmp_path.glob(".*part"))


# ------------------------------------------------------------------------------------ run and batch
@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> dict:
    """1.2 s of two faces: a large central one, which the lip-sync replaces (random weights paint it
    flat grey, no face any more), and a small one in a corner that stays: the face track scored."""
    from tests.conftest import astronaut_bgr, make_speech_like
    from tests.media_fixtures import write_video

    d = tmp_path_factory.mktemp("sync-clip")
    img = astronaut_bgr()
    main = cv2.resize(img, (400, 400), interpolation=cv2.INTER_AREA)
    head = cv2.resize(img[30:230, 150:310], (100, 125), interpolation=cv2.INTER_AREA)
    frames = []
    for i in range(30):
        canvas = np.full((400, 640, 3), 90, np.uint8)
        canvas[:, 120:520] = main
        canvas[10:135, 10:110] = head
        shift = np.float32([[1, 0, 3 * np.sin(i / 4)], [0, 1, 2 * np.cos(i / 5)]])
        frames.append(cv2.warpAffine(canvas, shift, (640, 400), borderMode=cv2.BORDER_REFLECT))
    write_video(d / "faces.mp4", frames, codec="h264")
    make_speech_like(d / "speech.wav", 1.2)
    return {"video": str(d / "faces.mp4"), "audio": str(d / "speech.wav")}


def _artifacts(flow_run_id) -> dict:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as c:
        arts = c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: json.loads(a.data) if a.type == "table" and isinstance(a.data, str) else a.data for a in arts}


def test_run_report_carries_the_scores_and_the_plot(prefect_server, models_dir, syncnet_weights, clip, tmp_path):
    from flows.lipsync_hq import lipsync_hq
    from flows.report import artifact_key
    from tasks.score_sync import score_video

    output = str(tmp_path / "out.mp4")
    state = lipsync_hq(audio=clip["audio"], video=clip["video"], output=output, enhance=False,
                       work_dir=str(tmp_path / "work"), dask_workers=0, return_state=True)
    assert state.is_completed()
    arts = _artifacts(state.state_details.flow_run_id)
    [row] = arts[artifact_key(output, "sync-scores")]
    expected = score_video(output, device="cpu")  # the published output, scored afresh
    assert {k: row[k] for k in ("offset", "lse_d", "lse_c")} == expected.summary()
    assert "score_sync" in {r["stage"] for r in arts[artifact_key(output, "stage-timings")]}
    png = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", arts[artifact_key(output, "sync-plot")]).group(1)
    plot = cv2.imdecode(np.frombuffer(base64.b64decode(png), np.uint8), cv2.IMREAD_COLOR)
    assert plot.shape == (220, 720, 3)
    assert len(list((tmp_path / "work" / "score_sync").glob("*/manifest.json"))) == 1


def test_run_without_weights_has_no_scores(prefect_server, models_dir, tiny, tmp_path):
    from flows.lipsync_hq import lipsync_hq
    from flows.report import artifact_key

    assert not (models_dir / "syncnet_v2.model").exists()
    output = str(tmp_path / "out.mp4")
    state = lipsync_hq(audio=tiny["audio"], video=tiny["video"], output=output, enhance=False,
                       work_dir=str(tmp_path / "work"), dask_workers=0, return_state=True)
    arts = _artifacts(state.state_details.flow_run_id)
    assert artifact_key(output, "stage-timings") in arts
    assert not {artifact_key(output, "sync-scores"), artifact_key(output, "sync-plot")} & set(arts)
    assert not (tmp_path / "work" / "score_sync").exists()


def test_batch_reports_scores_and_flags_low_confidence(prefect_server, models_dir, syncnet_weights, clip, tmp_path):
    from flows.batch import REPORT_NAME, batch

    src, out, work = tmp_path / "in", tmp_path / "out", tmp_path / "work"
    for name in ("anna", "ben"):
        src.mkdir(exist_ok=True)
        shutil.copyfile(clip["audio"], src / f"{name}.wav")
        shutil.copyfile(clip["video"], src / f"{name}.mp4")
    (src / "carl.wav").write_bytes(b"not audio")
    shutil.copyfile(clip["video"], src / "carl.mp4")
    options = {"enhance": False, "work_dir": str(work)}

    def run(threshold: float) -> tuple[dict, dict]:
        state = batch(input_prefix=str(src), output_prefix=str(out), options=options, dask_workers=0,
                      min_sync_confidence=threshold, return_state=True)
        report = json.loads((out / REPORT_NAME).read_text())
        table = _artifacts(state.state_details.flow_run_id)["batch-report"]
        return report, {r["job"]: r for r in table}

    report, table = run(threshold=1000.0)
    jobs = {j["name"]: j for j in report["jobs"]}
    assert report["min_sync_confidence"] == 1000.0 and report["low_sync"] == ["anna", "ben"]
    for name in ("anna", "ben"):
        assert jobs[name]["status"] == "done" and jobs[name]["low_sync"] is True
        assert isinstance(jobs[name]["offset"], int) and jobs[name]["lse_d"] > 0
        assert table[name]["lse_c"] == jobs[name]["lse_c"] and table[name]["low_sync"] is True
    assert jobs["ben"]["lse_c"] == jobs["anna"]["lse_c"]  # same content, same scores
    assert (jobs["carl"]["status"], jobs["carl"]["lse_c"], jobs["carl"]["low_sync"]) == ("failed", None, None)
    # both outputs have the same bytes: one score in the work area, made by the first job's run
    assert len(list((work / "score_sync").glob("*/manifest.json"))) == 1

    again, _ = run(threshold=0.0)  # skipped jobs keep their scores; nothing is under 0
    kept = {j["name"]: j for j in again["jobs"]}
    assert kept["anna"]["status"] == "skipped" and kept["anna"]["lse_c"] == jobs["anna"]["lse_c"]
    assert again["low_sync"] == [] and kept["anna"]["low_sync"] is False

    syncnet_weights.unlink()  # no weights: no columns
    plain, table = run(threshold=1000.0)
    assert "min_sync_confidence" not in plain and "low_sync" not in plain
    for j in plain["jobs"]:
        assert not {"offset", "lse_d", "lse_c", "low_sync", "sync"} & set(j)
        assert not {"offset", "lse_d", "lse_c", "low_sync"} & set(table[j["name"]])
