"""The seed's way, as the pipelines people use today do it (our own code, for comparison only):

1. decode every frame of the video into a list in memory (cv2.VideoCapture);
2. lip-sync the way the reference inference script does: detect the face in every in-memory frame,
   pad and smooth the boxes over 5 frames, then Wav2Lip in batches of 128 (fp32), pasting each
   96x96 prediction back with a resize;
3. write every synced frame as a PNG file;
4. for each PNG: read it, detect faces on the whole frame, and restore through the released GFPGAN
   helper path -- facexlib's ``FaceRestoreHelper``: ``align_warp_face``, the GFPGAN network on each
   cropped face exactly as ``GFPGANer.enhance`` calls it (batch of one, fp32, basicsr's
   ``img2tensor``/``tensor2img``), ``add_restored_face``, ``get_inverse_affine``,
   ``paste_faces_to_input_image`` (whole-frame warps and masks); write the restored PNG;
5. encode the PNGs with ffmpeg (libx264, same CRF/preset as ours), then mux the audio (AAC).

The helper's own detector (RetinaFace) downloads its weights at run time, which is not possible
here, so the 5 landmarks come from CenterFace run on the full-resolution frame (the helper detects on
the full frame too) and are injected as ``helper.all_landmarks_5``. With random-weight Wav2Lip the
synced mouth is noise and the detector misses the face; the source frame's landmarks are then used,
so both pipelines restore the same faces (the detection is still run, and timed, on every frame). The parsing network is not used
(``use_parse=False``, the square-mask paste): its weights are unavailable too, and leaving it out only
makes the baseline faster. Same Wav2Lip and GFPGAN networks and weight files as our pipeline.

    .venv/bin/python -m bench.baseline --audio speech.wav --video talk.mp4 -o out.mp4
"""
from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import ffmpeg
import numpy as np
import torch

from core.media import decode_audio, mux, run_ffmpeg

REFERENCE_BATCH = 128  # the reference's wav2lip_batch_size
PADS = (0, 10, 0, 0)


def decode_all(video: str) -> tuple[list[np.ndarray], float]:
    """Every frame in memory, as the reference reads them."""
    cap = cv2.VideoCapture(video)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    if not frames:
        raise RuntimeError(f"{video}: no frames decoded")
    return frames, fps


def detect_boxes(frames: list[np.ndarray], max_side: int = 640) -> tuple[list, list]:
    """Main-face box of every in-memory frame, padded and smoothed over 5 frames like the reference;
    and every face's 5 landmarks per frame."""
    from models.face_detection import (
        CenterFaceDetector,
        main_face,
        pad_box,
        smooth_forward,
    )

    det = CenterFaceDetector(max_side=max_side)
    boxes, present, landmarks = [], [], []
    for f in frames:
        faces = det(f)
        landmarks.append([x.landmarks for x in faces])
        k = main_face(faces, f.shape)
        present.append(k is not None)
        boxes.append(pad_box(np.trunc(faces[k].box), PADS, f.shape) if k is not None else np.zeros(4))
    present_a = np.asarray(present)
    smoothed = smooth_forward(np.trunc(np.asarray(boxes)).astype(np.int64), present_a, window=5)
    return [tuple(int(v) for v in b) if p and b[2] - b[0] >= 2 and b[3] - b[1] >= 2 else None
            for b, p in zip(smoothed, present_a)], landmarks


def lipsync_in_memory(frames: list[np.ndarray], boxes: list, windows: np.ndarray, model,
                      batch_size: int = REFERENCE_BATCH) -> list[np.ndarray]:
    """Reference-style generator loop: output frame i shows source frame i mod n (all in memory)."""
    from models.wav2lip import FACE_SIZE

    out: list[np.ndarray] = []
    n = len(frames)
    for a in range(0, len(windows), batch_size):
        idx = list(range(a, min(a + batch_size, len(windows))))
        frames_b = [frames[i % n].copy() for i in idx]
        work = [k for k, i in enumerate(idx) if boxes[i % n] is not None]
        if work:
            crops = []
            for k in work:
                x1, y1, x2, y2 = boxes[idx[k] % n]
                crops.append(cv2.resize(frames_b[k][y1:y2, x1:x2], (FACE_SIZE, FACE_SIZE)))
            faces = np.stack(crops)
            masked = faces.copy()
            masked[:, FACE_SIZE // 2:] = 0
            img = np.concatenate((masked, faces), axis=3) / 255.0
            img_t = torch.FloatTensor(np.transpose(img, (0, 3, 1, 2)))
            mel_t = torch.FloatTensor(windows[[idx[k] for k in work]][:, None])
            with torch.no_grad():
                pred = model(mel_t, img_t)
            pred = pred.cpu().numpy().transpose(0, 2, 3, 1) * 255.0
            for k, p in zip(work, pred):
                x1, y1, x2, y2 = boxes[idx[k] % n]
                frames_b[k][y1:y2, x1:x2] = cv2.resize(p.astype(np.uint8), (x2 - x1, y2 - y1))
        out.extend(frames_b)
    return out


@contextmanager
def _no_helper_models():
    """Build facexlib's helper without its detector/parser (their weights download at run time)."""
    import facexlib.utils.face_restoration_helper as frh

    saved = frh.init_detection_model, frh.init_parsing_model
    frh.init_detection_model = lambda *a, **k: None
    frh.init_parsing_model = lambda *a, **k: None
    try:
        yield frh.FaceRestoreHelper
    finally:
        frh.init_detection_model, frh.init_parsing_model = saved


def make_helper(upscale: int = 1):
    from models.restorer import _import_gfpgan_arch

    _import_gfpgan_arch()  # basicsr/torchvision alias before facexlib/basicsr imports
    with _no_helper_models() as FaceRestoreHelper:
        return FaceRestoreHelper(upscale, face_size=512, crop_ratio=(1, 1), det_model="retinaface_resnet50",
                                 save_ext="png", use_parse=False, device=torch.device("cpu"))


def restore_frame_helper(helper, net, detector, img: np.ndarray, fallback: list[np.ndarray],
                         weight: float = 0.5) -> tuple[np.ndarray, int]:
    """One whole frame through the helper path, the network called as GFPGANer.enhance calls it.

    Faces are detected on the whole (lip-synced) frame; when none is found there -- with random-weight
    Wav2Lip the mouth region is noise and the detector misses the face -- the landmarks found on the
    source frame (``fallback``) are used, so both pipelines restore the same faces.
    """
    from basicsr.utils import img2tensor, tensor2img
    from torchvision.transforms.functional import normalize

    helper.clean_all()
    helper.read_image(img)
    found = [f.landmarks for f in detector(img)] or fallback  # helper.get_face_landmarks_5's work
    for lm in found:
        lm = np.asarray(lm, np.float64)
        if np.linalg.norm(lm[0] - lm[1]) < 5:  # eye_dist_threshold=5
            continue
        helper.all_landmarks_5.append(lm)
    helper.align_warp_face()
    for cropped in helper.cropped_faces:
        t = img2tensor(cropped / 255.0, bgr2rgb=True, float32=True)
        normalize(t, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), inplace=True)
        t = t.unsqueeze(0)
        with torch.no_grad():
            output = net(t, return_rgb=False, weight=weight)[0]
        restored = tensor2img(output.squeeze(0), rgb2bgr=True, min_max=(-1, 1))
        helper.add_restored_face(restored.astype("uint8"))
    helper.get_inverse_affine(None)
    return helper.paste_faces_to_input_image(upsample_img=None), len(helper.cropped_faces)


def run_baseline(audio: str, video: str, out: str | Path, tmp: str | Path, crf: int = 18,
                 preset: str = "medium") -> dict:
    """The whole seed-style job; returns per-step times (s), frames and faces restored."""
    from models.audio import frame_count, mel_windows, melspectrogram
    from models.face_detection import CenterFaceDetector
    from models.loading import get_model

    tmp = Path(tmp)
    times: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        times[name] = times.get(name, 0.0) + now - clock[0]
        clock[0] = now

    w2l, _ = get_model("wav2lip", "wav2lip_gan.pth", "cpu")
    gfpgan, _ = get_model("gfpgan", "GFPGANv1.4.pth", "cpu")
    lap("load_models")
    frames, fps = decode_all(video)
    lap("decode_all")
    wav = decode_audio(audio)
    windows = mel_windows(melspectrogram(wav), frame_count(len(wav), fps), fps)
    boxes, landmarks = detect_boxes(frames)
    n_src = len(frames)
    lap("detect")
    synced = lipsync_in_memory(frames, boxes, windows, w2l)
    del frames
    lap("wav2lip")
    png_in, png_out = tmp / "frames", tmp / "restored"
    png_in.mkdir(parents=True, exist_ok=True)
    png_out.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(synced):
        cv2.imwrite(str(png_in / f"{i:06d}.png"), f)
    h, w = synced[0].shape[:2]
    n_frames = len(synced)
    del synced
    lap("write_png")
    helper = make_helper()
    detector = CenterFaceDetector(max_side=1 << 16)  # the helper detects on the full-resolution frame
    n_faces = 0
    for i in range(n_frames):
        img = cv2.imread(str(png_in / f"{i:06d}.png"), cv2.IMREAD_COLOR)
        restored, k = restore_frame_helper(helper, gfpgan, detector, img, landmarks[i % n_src])
        n_faces += k
        cv2.imwrite(str(png_out / f"{i:06d}.png"), restored)
    lap("enhance_png")
    silent = tmp / "silent.mp4"
    pngs = ffmpeg.input(str(png_out / "%06d.png"), framerate=f"{fps:g}")["v:0"]
    if w % 2 or h % 2:
        pngs = pngs.filter("pad", "ceil(iw/2)*2", "ceil(ih/2)*2")
    run_ffmpeg(pngs.output(str(silent), **{"c:v": "libx264", "crf": crf, "preset": preset, "pix_fmt": "yuv420p"}),
               "encoding PNGs")
    lap("encode")
    mux(silent, audio, out, audio_codec="aac")
    lap("mux")
    del times["load_models"]
    # the same three groups the pipeline's stages fall into
    groups = {"lipsync": times["decode_all"] + times["detect"] + times["wav2lip"] + times["write_png"],
              "enhance": times["enhance_png"], "encode+mux": times["encode"] + times["mux"]}
    return {"times": times, "groups": groups, "total": sum(times.values()), "frames": n_frames,
            "faces": n_faces, "size": [w, h]}


def main() -> None:
    from bench.common import weights_available
    from core.media import ffmpeg_exe

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--audio", required=True)
    p.add_argument("--video", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--work", default=None, help="where the PNGs go (default: a temporary directory)")
    args = p.parse_args()
    ffmpeg_exe()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as d, weights_available() as kind:
        res = run_baseline(args.audio, args.video, args.output, args.work or d)
    res["weights"] = kind
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
