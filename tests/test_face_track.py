"""Face tracks (models/face_track.py): association with stable ids, smoothing without lag and never
across a cut, the speaker choice, the per-frame plan, looping; and on the real clips, the steadiness
the smoothing buys."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import InputError, NoFaceError
from core.media import VideoInfo, iter_frames, probe_video
from models.face_track import (
    Detections,
    FaceTrack,
    associate,
    build_plan,
    choose_speaker,
    parse_face,
    shots,
    smooth_track,
    source_index,
    track_faces,
)
from tasks.detect_faces import detect_faces
from tests.conftest import ffmpeg, needs_media
from tests.media_fixtures import media_file

FPS = 25.0


def _info(n: int, w: int = 640, h: int = 480) -> VideoInfo:
    return VideoInfo(path="synthetic.mp4", width=w, height=h, fps_num=25, fps_den=1, n_frames=n, is_still=False,
                     vfr=False)


def _landmarks(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    rel = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]])
    return np.stack([x1 + rel[:, 0] * w, y1 + rel[:, 1] * h], axis=1)


def make_dets(n: int, faces: dict[int, list], cuts=()) -> Detections:
    """``faces``: frame -> list of boxes (stored in the given order)."""
    frame, boxes = [], []
    for i in range(n):
        for b in faces.get(i, []):
            frame.append(i)
            boxes.append(b)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    lms = np.stack([_landmarks(b) for b in boxes]).astype(np.float32) if len(boxes) else np.zeros((0, 5, 2))
    return Detections(n, np.asarray(frame, np.int64), boxes, lms.astype(np.float32),
                      np.linspace(0.99, 0.9, len(boxes)).astype(np.float32), np.full((n, 4), np.nan, np.float32),
                      np.asarray(cuts, np.int64))


LEFT = np.array([50, 100, 200, 280.0])
RIGHT = np.array([400, 90, 560, 290.0])


def test_ids_stay_with_their_face_whatever_the_detector_order():
    # the detector lists the two faces in alternating order; each keeps its id, numbered left to right
    faces = {i: ([LEFT + i, RIGHT - i] if i % 2 else [RIGHT - i, LEFT + i]) for i in range(10)}
    dets = make_dets(10, faces)
    ids = associate(dets, FPS)
    for r in range(len(ids)):
        assert ids[r] == (0 if dets.boxes[r, 0] < 300 else 1)


def test_a_short_gap_keeps_the_id_and_a_cut_starts_new_tracks():
    faces = {i: [LEFT] for i in range(20) if not 5 <= i < 15}  # missing 10 frames (0.4 s)
    ids = associate(make_dets(20, faces), FPS)
    assert set(ids) == {0}
    faces = {i: [LEFT] for i in range(60) if not 5 <= i < 40}   # missing 1.4 s: a new track
    assert list(np.unique(associate(make_dets(60, faces), FPS))) == [0, 1]
    dets = make_dets(20, {i: [LEFT] for i in range(20)}, cuts=[10])
    ids = associate(dets, FPS)
    assert set(ids[:10]) == {0} and set(ids[10:]) == {1}
    assert shots(20, dets.cuts) == [(0, 10), (10, 20)]


def test_smoothing_follows_motion_without_lag_and_removes_jitter():
    frames = np.arange(40)
    # constant acceleration: a centred quadratic filter reproduces it exactly (a causal filter lags)
    motion = np.stack([3.0 * frames + 0.05 * frames ** 2, 100 - 2.0 * frames], axis=1)
    np.testing.assert_allclose(smooth_track(motion, frames, FPS), motion, atol=1e-9)
    jitter = np.random.default_rng(0).normal(0, 2.0, motion.shape)
    out = smooth_track(motion + jitter, frames, FPS)
    rms2 = lambda x: np.sqrt((np.diff(x, 2, axis=0) ** 2).mean())  # noqa: E731
    assert rms2(out - motion) < rms2(jitter) / 4
    # runs are smoothed separately; a run too short for the filter is kept raw
    gappy = np.array([0, 1, 2, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19])
    values = np.random.default_rng(1).normal(size=(len(gappy), 2))
    out = smooth_track(values, gappy, FPS)
    np.testing.assert_array_equal(out[:3], values[:3])
    np.testing.assert_allclose(out[3:], smooth_track(values[3:], gappy[3:], FPS))


def test_speaker_choice():
    n = 30
    # the right face is larger but on screen for fewer frames
    faces = {i: [LEFT] + ([RIGHT * [1, 1, 1.05, 1.1]] if i < 20 else []) for i in range(n)}
    tracks = track_faces(make_dets(n, faces), FPS, smooth=True)
    assert choose_speaker(tracks, "auto", 640, 480) == [0]
    assert choose_speaker(tracks, "largest", 640, 480) == [1]
    assert choose_speaker(tracks, "1", 640, 480) == [1]
    assert choose_speaker(tracks, "450,200", 640, 480) == [1]
    assert choose_speaker(tracks, "100,150", 640, 480) == [0]
    assert choose_speaker(tracks, "center", 640, 480) == [1]  # RIGHT's centre (~480, 190) vs LEFT's (125, 190)
    with pytest.raises(InputError, match=r"--face: track 2 does not exist; the video's tracks are 0-1"):
        choose_speaker(tracks, "2", 640, 480)
    # equal time on screen: the larger face; one choice per shot
    faces = {i: [LEFT, RIGHT] for i in range(n)}
    tracks = track_faces(make_dets(n, faces, cuts=[15]), FPS, smooth=True)
    assert choose_speaker(tracks, "auto", 640, 480) == [1, 3]
    for bad in ("left", "1.5", "3,", "-1", ""):
        with pytest.raises(ValueError):
            parse_face(bad)


def test_the_speaker_never_switches_between_faces_of_similar_size():
    # two faces whose sizes cross back and forth every few frames: a per-frame "largest face" rule
    # would switch between them; the track choice holds
    n = 40
    faces = {i: [LEFT * [1, 1, 1 + 0.02 * np.sin(i), 1], RIGHT * [1, 1, 1 - 0.02 * np.sin(i), 1]] for i in range(n)}
    tracks = track_faces(make_dets(n, faces), FPS, smooth=True)
    plan = build_plan(tracks, _info(n), pads=(0, 10, 0, 0), face="largest", smooth=True, on_no_face="pass")
    sides = {bool(plan.boxes[i, 0] > 300) for i in range(n)}
    assert len(sides) == 1 and plan.sync.all()


def test_plan_boxes_faces_and_restore_choice(tmp_path):
    n = 12
    faces = {i: [LEFT, RIGHT] for i in range(n) if i != 6}
    tracks = track_faces(make_dets(n, faces), FPS, smooth=False)
    plan = build_plan(tracks, _info(n), pads=(0, 10, 0, 0), face="0", smooth=False, on_no_face="pass")
    assert plan.sync.tolist() == [i != 6 for i in range(n)]
    np.testing.assert_array_equal(plan.boxes[0], [50, 100, 200, 290])  # bottom pad 10
    assert len(plan.faces_at(0)) == 2 and len(plan.faces_at(0, speaker_only=True)) == 1
    np.testing.assert_allclose(plan.faces_at(0, speaker_only=True)[0], _landmarks(LEFT), atol=1e-3)
    np.testing.assert_allclose(plan.faces_at(0)[0], _landmarks(LEFT), atol=1e-3)  # the speaker first
    assert plan.faces_at(6) == []
    back = FaceTrack.load(plan.save(tmp_path / "faces.npz"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces.npz"]
    for name in ("sync", "boxes", "faces"):
        np.testing.assert_array_equal(getattr(back, name), getattr(plan, name))
    with pytest.raises(NoFaceError, match=r"0\.24 s \(frame 6\)"):
        build_plan(tracks, _info(n), pads=(0, 10, 0, 0), face="auto", smooth=False, on_no_face="fail")
    # a fixed box: every frame, whatever was detected; the face overlapping it is the speaker
    fixed = build_plan(tracks, _info(n), pads=(0, 10, 0, 0), face="auto", smooth=False, on_no_face="fail",
                       box=(80, 300, 380, 600))
    assert fixed.sync.all() and (fixed.boxes == [380, 80, 600, 300]).all()
    np.testing.assert_allclose(fixed.faces_at(0, speaker_only=True)[0], _landmarks(RIGHT), atol=1e-3)


def test_pingpong_has_no_jump():
    seq = [source_index(i, 4, "pingpong") for i in range(12)]
    assert seq == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]
    assert [source_index(i, 4, "forward") for i in range(6)] == [0, 1, 2, 3, 0, 1]
    assert all(source_index(i, 1, "pingpong") == 0 for i in range(5))
    jumps = [abs(source_index(i + 1, 50, "pingpong") - source_index(i, 50, "pingpong")) for i in range(500)]
    assert max(jumps) == 1


# ------------------------------------------------------------------------------ real clips
def _jitter(lms: np.ndarray, eye: float) -> float:
    return float(np.sqrt((np.diff(lms, 2, axis=0) ** 2).sum(-1).mean()) / eye * 100)


@needs_media
@pytest.mark.parametrize("name", ["talk_25fps_844.mp4", "talk_vfr_700.mp4"])
def test_real_clips_landmark_jitter_halved_and_close_to_raw(name):
    info = probe_video(media_file(name))
    dets = detect_faces(info, "centerface")
    raw = track_faces(dets, float(info.fps), smooth=False)
    steady = track_faces(dets, float(info.fps), smooth=True)
    assert raw.n_tracks == 1 and len(raw.rows(0)) == info.n_frames
    rows = raw.rows(0)
    lm_raw, lm = raw.landmarks[rows], steady.landmarks[rows]
    eye = float(np.linalg.norm(lm_raw[:, 0] - lm_raw[:, 1], axis=1).mean())
    before, after = _jitter(lm_raw, eye), _jitter(lm, eye)
    distance = float(np.linalg.norm(lm - lm_raw, axis=-1).mean() / eye * 100)
    print(f"{name}: jitter {before:.2f}% -> {after:.2f}% of the eye distance; {distance:.2f}% from raw")
    assert after <= before / 2
    assert distance < 2.0


@pytest.fixture(scope="module")
def two_shots(tmp_path_factory):
    """The two real clips back to back (same size): a cut at the first frame of the second."""
    d = tmp_path_factory.mktemp("cut")
    a, b = d / "a.mkv", d / "b.mkv"
    ffmpeg("-i", media_file("talk_25fps_844.mp4"), "-frames:v", "40", "-vf", "scale=420:420", "-r", "25",
           "-an", "-c:v", "ffv1", a)
    ffmpeg("-i", media_file("talk_vfr_700.mp4"), "-frames:v", "40", "-vf", "scale=420:420,fps=25", "-an",
           "-c:v", "ffv1", b)
    both = d / "both.mkv"
    ffmpeg("-i", a, "-i", b, "-filter_complex", "[0:v][1:v]concat=n=2:v=1", "-c:v", "ffv1", both)
    return probe_video(a), probe_video(both)


@needs_media
def test_a_cut_is_found_and_never_smoothed_across(two_shots):
    first, both = two_shots
    dets = detect_faces(both, "centerface")
    assert dets.cuts.tolist() == [first.n_frames]
    tracks = track_faces(dets, FPS, smooth=True)
    before = {int(t) for t, f in zip(tracks.ids, dets.frame) if f < first.n_frames}
    after = {int(t) for t, f in zip(tracks.ids, dets.frame) if f >= first.n_frames}
    assert before and after and not before & after
    # the first shot's smoothed landmarks are those of the first clip alone: nothing leaked across
    alone = track_faces(detect_faces(first, "centerface"), FPS, smooth=True)
    rows = np.flatnonzero(dets.frame < first.n_frames)
    np.testing.assert_allclose(tracks.landmarks[rows], alone.landmarks, atol=1e-4)
    # and the plan lip-syncs one speaker per shot, each on its own shot's face
    plan = build_plan(tracks, both, pads=(0, 10, 0, 0), face="auto", smooth=True, on_no_face="fail")
    assert plan.sync.all()


@needs_media
def test_frames_decoded_for_detection_are_the_ones_iterated(two_shots):
    first, _ = two_shots
    frames = list(iter_frames(first))
    given = detect_faces(first, "centerface", frames=frames)
    decoded = detect_faces(first, "centerface")
    np.testing.assert_array_equal(given.boxes, decoded.boxes)
