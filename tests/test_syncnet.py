"""SyncNet and the LSE-D / LSE-C scores: the official weight layout loaded through the users' path, the
formulas against a straightforward re-derivation of the reference evaluation, and the face crops."""
from __future__ import annotations

import math
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError
from models.sync_faces import (
    CROP_SCALE,
    MAX_MISSED,
    PAD_VALUE,
    Track,
    crop_face,
    crop_tracks,
    crop_windows,
    link_tracks,
    scorable,
)
from models.face_track import iou
from models.syncnet import (
    SyncNet,
    evaluate_sync,
    load_syncnet,
    scores_from_distances,
    sync_scores,
)
from tests.checkpoints import make_syncnet_checkpoint
from tests.media_fixtures import media_file, requires_media

# Key -> shape of the published syncnet_v2.model, written out from the reference's module S.
_LAYERS = {
    "netcnnaud": {0: (64, 1, 3, 3), 1: 64, 4: (192, 64, 3, 3), 5: 192, 8: (384, 192, 3, 3), 9: 384,
                  11: (256, 384, 3, 3), 12: 256, 14: (256, 256, 3, 3), 15: 256, 18: (512, 256, 5, 4), 19: 512},
    "netcnnlip": {0: (96, 3, 5, 7, 7), 1: 96, 4: (256, 96, 1, 5, 5), 5: 256, 8: (256, 256, 1, 3, 3), 9: 256,
                  11: (256, 256, 1, 3, 3), 12: 256, 14: (256, 256, 1, 3, 3), 15: 256, 18: (512, 256, 1, 6, 6),
                  19: 512},
    "netfcaud": {0: (512, 512), 1: 512, 3: (1024, 512)},
    "netfclip": {0: (512, 512), 1: 512, 3: (1024, 512)},
}
OFFICIAL_SHAPES: dict[str, tuple[int, ...]] = {}
for _seq, _layers in _LAYERS.items():
    for _i, _shape in _layers.items():
        if isinstance(_shape, int):  # BatchNorm
            for _name in ("weight", "bias", "running_mean", "running_var"):
                OFFICIAL_SHAPES[f"{_seq}.{_i}.{_name}"] = (_shape,)
            OFFICIAL_SHAPES[f"{_seq}.{_i}.num_batches_tracked"] = ()
        else:
            OFFICIAL_SHAPES[f"{_seq}.{_i}.weight"] = _shape
            OFFICIAL_SHAPES[f"{_seq}.{_i}.bias"] = (_shape[0],)


@pytest.fixture(scope="module")
def syncnet_file(tmp_path_factory):
    return make_syncnet_checkpoint(tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model", seed=3)


@pytest.fixture(scope="module")
def net(syncnet_file) -> SyncNet:
    return load_syncnet(syncnet_file, "cpu")


# ------------------------------------------------------------------------------------- weights
def test_module_matches_the_official_layout():
    own = {k: tuple(v.shape) for k, v in SyncNet().state_dict().items()}
    assert own == OFFICIAL_SHAPES
    floats = sum(math.prod(s) for k, s in OFFICIAL_SHAPES.items() if not k.endswith("num_batches_tracked"))
    stats = sum(s[0] for k, s in OFFICIAL_SHAPES.items() if k.endswith(("running_mean", "running_var")))
    assert sum(p.numel() for p in SyncNet().parameters()) == floats - stats == 13_631_616
    assert 52 * 2**20 < floats * 4 < 53 * 2**20  # the published file's size: about 52 MiB


def test_loads_through_the_users_path(syncnet_file, tmp_path, monkeypatch):
    """The file under its official name in the models directory, read with weights_only, every key used."""
    from models.loading import get_model

    (tmp_path / "syncnet_v2.model").write_bytes(syncnet_file.read_bytes())
    monkeypatch.setenv("WAV2LIP_HQ_MODELS_DIR", str(tmp_path))
    model, device = get_model("syncnet", "syncnet_v2.model", "cpu")
    saved = torch.load(syncnet_file, weights_only=True)
    assert isinstance(model, SyncNet) and not model.training and device.type == "cpu"
    assert set(model.state_dict()) == set(saved)
    for k, v in saved.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_files_without_batchnorm_counters_load(tmp_path):
    path = make_syncnet_checkpoint(tmp_path / "syncnet_v2.model", seed=3, counters=False)
    saved = torch.load(path, weights_only=True)
    assert not any(k.endswith("num_batches_tracked") for k in saved)
    loaded = load_syncnet(path).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())


@pytest.mark.parametrize("change, named", [
    (lambda sd: sd.__setitem__("netfclip.3.weights", sd.pop("netfclip.3.weight")),
     ["netfclip.3.weight", "netfclip.3.weights"]),
    (lambda sd: sd.pop("netcnnlip.19.running_var"), ["netcnnlip.19.running_var"]),
    (lambda sd: sd.__setitem__("netcnnaud.0.weight", torch.zeros(64, 1, 5, 5)), ["netcnnaud.0.weight"]),
])
def test_keys_that_do_not_fit_are_named(syncnet_file, tmp_path, change, named):
    sd = torch.load(syncnet_file, weights_only=True)
    change(sd)
    path = tmp_path / "syncnet_v2.model"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as err:
        load_syncnet(path)
    for key in named:
        assert key in str(err.value)


def test_a_pickled_module_is_refused(tmp_path):
    """torch.save(model) would run code on loading: it is refused, never unpickled."""
    path = tmp_path / "syncnet_v2.model"
    torch.save(SyncNet(), path)
    with pytest.raises(CheckpointError, match="not a plain tensor checkpoint"):
        load_syncnet(path)


# ------------------------------------------------------------------------------------- formulas
def reference_evaluate(net: SyncNet, faces: np.ndarray, wav: np.ndarray, vshift: int) -> tuple[dict, np.ndarray]:
    """SyncNetInstance.evaluate of the reference written out step by step: the whole clip as one
    (1, 3, N, 224, 224) tensor, one window at a time through the network, then distances, means and the
    median filter as plain loops in float64."""
    import python_speech_features

    im = np.transpose(np.expand_dims(np.stack(list(faces), axis=3), 0), (0, 3, 4, 1, 2))  # (1, 3, N, H, W)
    video = torch.from_numpy(im.astype(float)).float()
    cc = np.stack([np.array(c) for c in zip(*python_speech_features.mfcc(wav, 16000))])  # (13, T)
    audio = torch.from_numpy(cc[None, None].astype(float)).float()
    last = min(len(faces), math.floor(len(wav) / 640)) - 5
    with torch.no_grad():
        lips = [net.forward_lip(video[:, :, v:v + 5]).double().numpy()[0] for v in range(last)]
        sounds = [net.forward_aud(audio[:, :, :, v * 4:v * 4 + 20]).double().numpy()[0] for v in range(last)]
    dists = np.zeros((last, 2 * vshift + 1))
    for i in range(last):
        for j in range(2 * vshift + 1):
            k = i + j - vshift
            other = sounds[k] if 0 <= k < last else np.zeros(1024)
            dists[i, j] = math.sqrt(sum((a - b + 1e-6) ** 2 for a, b in zip(lips[i], other)))
    means = [sum(dists[:, j]) / last for j in range(2 * vshift + 1)]
    best = min(range(len(means)), key=lambda j: (means[j], j))
    median = sorted(means)[vshift]
    conf = [median - dists[i, best] for i in range(last)]
    padded = [0.0] * 4 + conf + [0.0] * 4
    framewise = np.array([sorted(padded[i:i + 9])[4] for i in range(last)])
    return {"offset": vshift - best, "lse_d": means[best], "lse_c": median - means[best]}, framewise


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Syllable-like int16 audio at 16 kHz: voiced harmonics under a 4 Hz envelope, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    voice = sum(np.sin(2 * np.pi * k * 140 * t) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, None)
    return np.clip(6000 * voice * envelope + 300 * rng.standard_normal(t.size), -32768, 32767).astype(np.int16)


def _faces(n: int, seed: int = 0) -> np.ndarray:
    """Face-sized frames with a mouth-like dark ellipse opening and closing."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 224, 224, 3), np.uint8)
    for i in range(n):
        img = np.full((224, 224, 3), (120, 150, 190), np.uint8)
        cv2.ellipse(img, (112, 150), (40, 4 + int(14 * abs(math.sin(i / 2)))), 0, 0, 360, (40, 30, 90), -1)
        out[i] = np.clip(img + rng.integers(-12, 12, img.shape), 0, 255).astype(np.uint8)
    return out


@pytest.mark.parametrize("n_frames, audio_seconds, vshift", [(14, 0.56, 15), (12, 0.60, 3), (16, 0.44, 4)])
def test_scores_equal_the_reference_evaluation(net, n_frames, audio_seconds, vshift):
    faces, wav = _faces(n_frames, seed=n_frames), _speech(audio_seconds, seed=n_frames)
    expected, framewise = reference_evaluate(net, faces, wav, vshift)
    got = sync_scores(net, faces, wav, vshift=vshift)
    assert set(got) == {"offset", "lse_d", "lse_c"} and isinstance(got["offset"], int)
    assert got["offset"] == expected["offset"]
    assert got["lse_d"] == pytest.approx(expected["lse_d"], abs=1e-4)
    assert got["lse_c"] == pytest.approx(expected["lse_c"], abs=1e-4)
    assert 3 < expected["lse_d"] < 100  # distances of a trained network's order, not degenerate
    full = evaluate_sync(net, faces, wav, vshift, batch_size=3)  # batching does not change anything
    np.testing.assert_allclose(full.framewise, framewise, atol=1e-4)
    assert full.summary()["lse_d"] == pytest.approx(got["lse_d"], abs=1e-5)


def test_audio_late_by_d_frames_gives_offset_minus_d():
    """Embeddings where audio window i + d matches lip window i (the sound comes d frames after the
    mouth moves): the best column is vshift + d, the offset -d, and LSE-C is the gap to the median."""
    rng = np.random.default_rng(0)
    n, d, vshift = 40, 3, 6
    lips = rng.standard_normal((n, 8))
    audio = np.roll(lips, d, axis=0) + 0.01 * rng.standard_normal((n, 8))
    dists = torch.cdist(torch.from_numpy(lips), torch.from_numpy(np.pad(audio, ((vshift, vshift), (0, 0)))))
    table = torch.stack([dists[i, i:i + 2 * vshift + 1] for i in range(n)])
    result = scores_from_distances(table.float(), vshift)
    means = table.mean(0)
    assert result.offset == -d
    assert result.lse_d == pytest.approx(float(means[vshift + d]), abs=1e-5)
    assert result.lse_c == pytest.approx(float(means.median() - means[vshift + d]), abs=1e-5)
    assert result.lse_c > 1.0 and len(result.framewise) == n


def test_inputs_are_checked(net):
    with pytest.raises(ValueError, match="uint8"):
        sync_scores(net, np.zeros((10, 224, 224, 3), np.float32), _speech(0.4))
    with pytest.raises(ValueError, match="int16"):
        sync_scores(net, _faces(10), _speech(0.4).astype(np.float32))
    with pytest.raises(ValueError, match="too short"):
        sync_scores(net, _faces(5), _speech(0.4))


# ---------------------------------------------------------------------------------------- crops
def test_iou():
    a = np.array([0, 0, 10, 10.0])
    assert iou(a[None], a[None])[0, 0] == 1.0
    assert iou(a[None], np.array([[5, 0, 15, 10.0]]))[0, 0] == pytest.approx(50 / 150)
    assert iou(a[None], np.array([[20, 20, 30, 30.0]]))[0, 0] == 0.0


def test_tracks_follow_overlap_fill_gaps_and_end_after_missed_frames():
    def left(i: int) -> np.ndarray:  # drifting right
        return np.array([10 + i, 20, 60 + i, 80.0])

    right = np.array([200, 20, 250, 80.0])
    dets = []
    for i in range(60):
        boxes = [right] if 5 <= i < 20 else []
        if not 10 <= i < 14 and i < 30:  # left face missed for 4 frames, then gone after 29
            boxes.insert(0, left(i))
        if i == 30 + MAX_MISSED:  # comes back too late: a new track
            boxes.append(left(i))
        dets.append(np.array(boxes).reshape(-1, 4))
    tracks = link_tracks(dets)
    assert [(t.first, len(t)) for t in tracks] == [(0, 30), (5, 15), (55, 1)]
    np.testing.assert_allclose(tracks[0].boxes[11], left(11))  # interpolated across the gap
    assert scorable(tracks) == tracks[:2] and scorable([]) == []  # 7 frames or more


def test_crops_of_several_tracks_in_one_pass_are_each_tracks_own():
    """Two tracks that overlap in time and one after them: one pass over the frames gives each the crops
    it gets alone."""
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (120, 200, 3), dtype=np.uint8) for _ in range(36)]
    tracks = [Track(2, np.array([[10 + i, 20, 60 + i, 80.0] for i in range(20)])),
              Track(0, np.array([[120, 10 + i / 2, 180, 70 + i / 2] for i in range(12)])),
              Track(26, np.array([[50, 50, 90, 95.0]] * 8))]
    outs = [np.zeros((len(t), 224, 224, 3), np.uint8) for t in tracks]
    crop_tracks(iter(frames), tracks, outs)
    for track, out in zip(tracks, outs):
        alone = np.zeros_like(out)
        crop_tracks(iter(frames), [track], [alone])
        windows = crop_windows(track)
        np.testing.assert_array_equal(out, alone)
        for k in (0, len(track) - 1):
            np.testing.assert_array_equal(out[k], crop_face(frames[track.first + k], *windows[k]))


def test_crop_windows_are_zero_padded_13_frame_medians():
    sizes = np.arange(10.0, 30.0)
    track = Track(0, np.stack([100 - sizes, 50 - sizes, 100 + sizes, 50 + sizes], axis=1))
    windows = crop_windows(track)
    padded = np.concatenate([np.zeros(6), sizes, np.zeros(6)])
    np.testing.assert_array_equal(windows[:, 2], [np.median(padded[i:i + 13]) for i in range(len(sizes))])
    assert windows[10].tolist() == [100, 50, 20]


@pytest.mark.parametrize("cx, cy, half", [(80.0, 60.0, 20.0), (5.5, 3.2, 30.7), (155.0, 118.0, 44.4),
                                          (80.0, 60.0, 90.0)])
def test_crop_equals_the_reference_crop_of_the_padded_frame(cx, cy, half):
    frame = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    pad = int(half * (1 + 2 * CROP_SCALE))
    padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), "constant", constant_values=(PAD_VALUE, PAD_VALUE))
    my, mx = cy + pad, cx + pad
    face = padded[int(my - half):int(my + half * (1 + 2 * CROP_SCALE)),
                  int(mx - half * (1 + CROP_SCALE)):int(mx + half * (1 + CROP_SCALE))]
    np.testing.assert_array_equal(crop_face(frame, cx, cy, half), cv2.resize(face, (224, 224)))


@requires_media
def test_crops_of_a_real_clip_frame_the_face():
    """Every frame of the 25 fps clip in one track; in the crop the face sits centred, its top near the
    crop's top and the chin margin below (the reference's framing)."""
    from core.media import iter_frames_at, probe_video
    from models.face_detection import CenterFaceDetector
    centerface = CenterFaceDetector()
    info = probe_video(str(media_file("talk_25fps_844.mp4")))
    frames = list(iter_frames_at(info, Fraction(25)))
    assert len(frames) == info.n_frames
    dets = [np.array([f.box for f in centerface(fr)], np.float64).reshape(-1, 4) for fr in frames[:40]]
    [track] = scorable(link_tracks(dets))
    assert (track.first, len(track)) == (0, 40)
    crops = np.empty((len(track), 224, 224, 3), np.uint8)
    crop_tracks(frames, [track], [crops])
    for k in (0, 20, 39):
        (face,) = centerface(crops[k])
        x1, y1, x2, y2 = face.box
        assert abs((x1 + x2) / 2 - 112) < 20, face.box
        assert 50 < (y1 + y2) / 2 < 110 and y2 < 190, face.box


@requires_media
def test_variable_rate_video_is_resampled_to_25_fps():
    from core.media import iter_frames_at, probe_video

    info = probe_video(str(media_file("talk_vfr_700.mp4")))
    assert info.vfr
    n = sum(1 for _ in iter_frames_at(info, Fraction(25)))
    assert abs(n - info.duration * 25) <= 1.5
