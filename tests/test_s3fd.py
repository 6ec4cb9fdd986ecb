"""Tests for models.s3fd: official weight layout, strict loading, box decoding, NMS and end-to-end detection."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError
from models.s3fd import (
    S3FD,
    decode_boxes,
    load_s3fd,
    make_priors,
    nms,
    preprocess,
    s3fd_detect,
)

# Key -> shape of the published s3fd-619a316812.pth, written out independently of the module under test.
_CONVS = {
    # name: (out, in, k)
    "conv1_1": (64, 3, 3), "conv1_2": (64, 64, 3),
    "conv2_1": (128, 64, 3), "conv2_2": (128, 128, 3),
    "conv3_1": (256, 128, 3), "conv3_2": (256, 256, 3), "conv3_3": (256, 256, 3),
    "conv4_1": (512, 256, 3), "conv4_2": (512, 512, 3), "conv4_3": (512, 512, 3),
    "conv5_1": (512, 512, 3), "conv5_2": (512, 512, 3), "conv5_3": (512, 512, 3),
    "fc6": (1024, 512, 3), "fc7": (1024, 1024, 1),
    "conv6_1": (256, 1024, 1), "conv6_2": (512, 256, 3),
    "conv7_1": (128, 512, 1), "conv7_2": (256, 128, 3),
    "conv3_3_norm_mbox_conf": (4, 256, 3), "conv3_3_norm_mbox_loc": (4, 256, 3),
    "conv4_3_norm_mbox_conf": (2, 512, 3), "conv4_3_norm_mbox_loc": (4, 512, 3),
    "conv5_3_norm_mbox_conf": (2, 512, 3), "conv5_3_norm_mbox_loc": (4, 512, 3),
    "fc7_mbox_conf": (2, 1024, 3), "fc7_mbox_loc": (4, 1024, 3),
    "conv6_2_mbox_conf": (2, 512, 3), "conv6_2_mbox_loc": (4, 512, 3),
    "conv7_2_mbox_conf": (2, 256, 3), "conv7_2_mbox_loc": (4, 256, 3),
}
OFFICIAL_SHAPES: dict[str, tuple[int, ...]] = {}
for _name, (_out, _in, _k) in _CONVS.items():
    OFFICIAL_SHAPES[f"{_name}.weight"] = (_out, _in, _k, _k)
    OFFICIAL_SHAPES[f"{_name}.bias"] = (_out,)
OFFICIAL_SHAPES.update({
    "conv3_3_norm.weight": (256,), "conv4_3_norm.weight": (512,), "conv5_3_norm.weight": (512,),
})
OFFICIAL_PARAM_COUNT = 22_459_110


def _official_random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.01 for k, s in OFFICIAL_SHAPES.items()}


@pytest.fixture(scope="module")
def net() -> S3FD:
    torch.manual_seed(1234)
    return S3FD().eval()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (240, 320, 3), dtype=np.uint8)


def test_official_layout_constants_are_consistent() -> None:
    assert len(OFFICIAL_SHAPES) == 65
    assert sum(math.prod(s) for s in OFFICIAL_SHAPES.values()) == OFFICIAL_PARAM_COUNT


def test_module_state_dict_matches_official_layout(net: S3FD) -> None:
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert own == OFFICIAL_SHAPES
    # The L2Norm scales start at the published values (10 / 8 / 5).
    fresh = S3FD()
    for name, scale in (("conv3_3_norm", 10.0), ("conv4_3_norm", 8.0), ("conv5_3_norm", 5.0)):
        assert torch.all(getattr(fresh, name).weight == scale)


def test_load_legacy_format_checkpoint_strictly(tmp_path) -> None:
    sd = _official_random_state_dict()
    path = tmp_path / "s3fd-legacy.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    loaded = load_s3fd(path, "cpu")
    assert isinstance(loaded, S3FD)
    assert not loaded.training
    assert sum(p.numel() for p in loaded.parameters()) == OFFICIAL_PARAM_COUNT
    got = loaded.state_dict()
    assert set(got) == set(sd)
    for key in ("conv1_1.weight", "conv3_3_norm.weight", "fc6.bias", "conv7_2_mbox_loc.weight"):
        assert torch.equal(got[key], sd[key]), key
    assert all(p.device.type == "cpu" for p in loaded.parameters())


def test_renamed_key_is_reported(tmp_path) -> None:
    sd = _official_random_state_dict()
    sd["fc7_mbox_confidence.weight"] = sd.pop("fc7_mbox_conf.weight")
    path = tmp_path / "s3fd-renamed.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as info:
        load_s3fd(path, "cpu")
    message = str(info.value)
    assert "fc7_mbox_conf.weight" in message
    assert "fc7_mbox_confidence.weight" in message


def test_decode_boxes_hand_computed() -> None:
    priors = torch.tensor([[100.0, 50.0, 16.0, 16.0], [10.0, 20.0, 64.0, 64.0]])
    loc = torch.tensor([[1.0, -2.0, 0.0, math.log(2.0) / 0.2], [0.0, 0.0, 0.0, 0.0]])
    # Box 1: centre (100 + 0.1*16, 50 - 0.2*16) = (101.6, 46.8), size (16, 32).
    # Box 2: the prior itself, 64x64 around (10, 20).
    expected = torch.tensor([[93.6, 30.8, 109.6, 62.8], [-22.0, -12.0, 42.0, 52.0]])
    got = decode_boxes(loc, priors, (0.1, 0.2))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # Leading batch dimensions broadcast against shared priors.
    batched = decode_boxes(loc.unsqueeze(0).repeat(3, 1, 1), priors.unsqueeze(0), (0.1, 0.2))
    assert batched.shape == (3, 2, 4)
    torch.testing.assert_close(batched[2], expected, atol=1e-4, rtol=0)


def test_make_priors_hand_computed() -> None:
    priors = make_priors(2, 3, 4)
    assert priors.shape == (6, 4)
    # Row-major: index = row * width + col; centre = stride/2 + index*stride; side = 4*stride.
    torch.testing.assert_close(priors[0], torch.tensor([2.0, 2.0, 16.0, 16.0]))
    torch.testing.assert_close(priors[2], torch.tensor([10.0, 2.0, 16.0, 16.0]))
    torch.testing.assert_close(priors[4], torch.tensor([6.0, 6.0, 16.0, 16.0]))
    torch.testing.assert_close(make_priors(1, 1, 128)[0], torch.tensor([64.0, 64.0, 512.0, 512.0]))


def test_nms_uses_inclusive_pixel_areas() -> None:
    boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9], [30, 30, 40, 40], [0, 0, 9, 9]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # Box 1 vs box 0: with +1 areas IoU = 50 / 150 = 1/3 > 0.3 (suppressed); without it would be 36/126 < 0.3.
    assert nms(boxes, scores, 0.3).tolist() == [3, 2]
    assert nms(boxes, scores, 0.34).tolist() == [3, 1, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.3).shape == (0,)


def test_preprocess_swaps_to_rgb_then_subtracts_mean() -> None:
    img = np.zeros((2, 3, 3), dtype=np.uint8)
    img[1, 2] = (10, 20, 30)  # B, G, R
    x = preprocess([img, img], "cpu")
    assert x.shape == (2, 3, 2, 3) and x.dtype == torch.float32
    assert x[1, :, 1, 2].tolist() == [30 - 104, 20 - 117, 10 - 123]
    assert x[0, :, 0, 0].tolist() == [-104, -117, -123]


def test_forward_shapes_and_background_max_out(net: S3FD) -> None:
    probe = copy.deepcopy(net)
    head = probe.conv3_3_norm_mbox_conf
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([1.0, 3.0, 2.0, -1.0]))
    with torch.inference_mode():
        outs = probe(torch.zeros(1, 3, 240, 320))
    assert len(outs) == 12
    sizes = [(60, 80), (30, 40), (15, 20), (11, 14), (6, 7), (3, 4)]
    for level, (h, w) in enumerate(sizes):
        assert outs[2 * level].shape == (1, 2, h, w)
        assert outs[2 * level + 1].shape == (1, 4, h, w)
    assert torch.all(outs[0][:, 0] == 3.0)  # max of the three background logits
    assert torch.all(outs[0][:, 1] == -1.0)  # face logit passes through


def _reference_style_detect(net: S3FD, img_bgr: np.ndarray, thr: float, iou: float) -> np.ndarray:
    """A slow, per-cell re-derivation of the reference pipeline, to cross-check the vectorised one."""
    x = torch.from_numpy(img_bgr[..., ::-1].astype(np.float64) - np.array([104, 117, 123]))
    x = x.permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        outs = net(x)
    cands = []
    for level in range(6):
        prob = torch.softmax(outs[2 * level], dim=1)[0, 1].numpy()
        reg = outs[2 * level + 1][0].numpy()
        stride = 2 ** (level + 2)
        for r, c in zip(*np.where(prob > 0.05)):
            acx, acy, side = stride / 2 + c * stride, stride / 2 + r * stride, 4.0 * stride
            dx, dy, dw, dh = (float(v) for v in reg[:, r, c])
            cx, cy = acx + dx * 0.1 * side, acy + dy * 0.1 * side
            w, h = side * math.exp(dw * 0.2), side * math.exp(dh * 0.2)
            cands.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, float(prob[r, c])])
    cands = sorted(cands, key=lambda b: -b[4])
    kept = []
    for b in cands:
        def overlap(a):
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
            inter = iw * ih
            area = lambda q: (q[2] - q[0] + 1) * (q[3] - q[1] + 1)  # noqa: E731
            return inter / (area(a) + area(b) - inter)
        if all(overlap(a) <= iou for a in kept):
            kept.append(b)
    out = np.array([b for b in kept if b[4] > thr], dtype=np.float64).reshape(-1, 5)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, img_bgr.shape[1])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, img_bgr.shape[0])
    return out


def test_detect_matches_per_cell_reference(net: S3FD) -> None:
    img = np.random.default_rng(3).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    expected = _reference_style_detect(net, img, 0.5, 0.3)
    (got,) = s3fd_detect(net, [img], "cpu")
    assert len(expected) > 0, "random net should yield candidates above 0.5 for this check to mean anything"
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-3, rtol=1e-5)


def test_detect_batch_of_three(net: S3FD, image: np.ndarray) -> None:
    other = np.ascontiguousarray(image[::-1])
    dets = s3fd_detect(net, [image, other, image], "cpu", score_threshold=0.5, nms_iou=0.3)
    assert len(dets) == 3
    h, w = image.shape[:2]
    for d in dets:
        assert d.dtype == np.float32 and d.ndim == 2 and d.shape[1] == 5
        assert d.shape[0] > 0
        assert np.all(d[:, 4] > 0.5) and np.all(d[:, 4] <= 1.0)
        assert np.all(np.diff(d[:, 4]) <= 0), "scores must be sorted descending"
        assert np.all(d[:, [0, 2]] >= 0) and np.all(d[:, [0, 2]] <= w)
        assert np.all(d[:, [1, 3]] >= 0) and np.all(d[:, [1, 3]] <= h)
        assert np.all(d[:, 2] >= d[:, 0]) and np.all(d[:, 3] >= d[:, 1])
    # Same image in one batch gives the same answer; a different image gives a different one.
    np.testing.assert_allclose(dets[0], dets[2], atol=1e-4)
    assert dets[0].shape != dets[1].shape or not np.allclose(dets[0], dets[1])

    # Stricter settings only remove boxes.
    strict = s3fd_detect(net, [image], "cpu", score_threshold=0.6, nms_iou=0.3)[0]
    assert np.all(strict[:, 4] > 0.6)
    assert len(strict) <= len(dets[0])


def test_mixed_sizes_keep_order_and_match_single_calls(net: S3FD, image: np.ndarray) -> None:
    small = np.ascontiguousarray(image[:96, :128])
    dets = s3fd_detect(net, [small, image, small], "cpu")
    assert [len(d) for d in dets] == [len(s3fd_detect(net, [im], "cpu")[0]) for im in (small, image, small)]
    np.testing.assert_allclose(dets[0], s3fd_detect(net, [small], "cpu")[0], atol=1e-4)
    assert np.all(dets[0][:, [0, 2]] <= 128) and np.all(dets[0][:, [1, 3]] <= 96)
    assert s3fd_detect(net, [], "cpu") == []


def test_no_face_gives_empty_array(net: S3FD) -> None:
    quiet = copy.deepcopy(net)
    with torch.no_grad():
        for name, module in quiet.named_children():
            if name.endswith("_mbox_conf"):
                module.weight.zero_()
                module.bias.fill_(-10.0)
                module.bias[0] = 10.0  # background logit dominates everywhere
    (d,) = s3fd_detect(quiet, [np.zeros((64, 64, 3), dtype=np.uint8)], "cpu")
    assert d.shape == (0, 5) and d.dtype == np.float32


def test_rejects_non_bgr_input(net: S3FD) -> None:
    with pytest.raises(ValueError, match="image 0"):
        s3fd_detect(net, [np.zeros((8, 8), dtype=np.uint8)], "cpu")
