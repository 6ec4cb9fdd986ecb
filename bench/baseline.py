"""The seed's pipeline -- its Colab notebook -- rebuilt step by step for comparison (bench only).

1. Wav2Lip's official ``inference.py``: every frame read into memory with cv2; the mel of the audio;
   S3FD on the full-resolution frames in batches of 16; boxes padded (0, 10, 0, 0) and smoothed over
   5 frames; the generator (fp32) in batches of 128, each 96x96 prediction resized into its frame,
   frames written to a DIVX avi with cv2.VideoWriter; then ``ffmpeg -i audio -i result.avi -strict -2
   -q:v 1 result.mp4`` (x264 + AAC).
2. The notebook reads result.mp4 with cv2 and writes every frame as a JPG.
3. GFPGAN's ``inference_gfpgan.py -v 1.3 -s 2 --only_center_face --bg_upsampler None``: for each JPG,
   the released ``GFPGANer.enhance`` itself (the installed ``gfpgan`` package): facexlib's
   RetinaFace-ResNet50 on the full frame, alignment, GFPGANv1Clean (v1.3 file, fp32, fresh noise per
   call as released), the ParseNet face-parsing mask for the paste-back, the frame upscaled 2x with
   Lanczos; then the script's writes: cropped face, restored face and side-by-side PNGs, and the
   restored frame as JPG.
4. The notebook reads the restored JPGs back in batches of 300 frames, writes each batch to a DIVX avi
   with cv2.VideoWriter at a hard-coded 30 fps, joins them with ``ffmpeg -f concat -c copy`` and muxes
   the audio (``-map 0 -map 1:a -c:v copy -shortest``).

S3FD, RetinaFace and ParseNet cannot load their published weights here (facexlib downloads its own at
run time): they are built in their official layouts with random weights -- the same compute -- and run
on every frame as the seed runs them. A random detector finds nothing, so their score heads are biased
to "background" (their post-processing then keeps no candidate) and after each detector call the true
faces of that frame are substituted: our CenterFace's, found on the source frames before the clock
starts. Wav2Lip and GFPGAN are the same networks and weight files as our pipeline's. Model loading is
not timed (the same for ours in benchmark 1's plain run; its flow run pays for its loads).

    .venv/bin/python -m bench.baseline --audio speech.wav --video talk.mp4 -o seed.avi
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from facexlib.detection.retinaface import RetinaFace

DETECT_BATCH = 16       # inference.py --face_det_batch_size
WAV2LIP_BATCH = 128     # inference.py --wav2lip_batch_size
PADS = (0, 10, 0, 0)    # inference.py --pads
SMOOTH_WINDOW = 5
UPSCALE = 2             # inference_gfpgan.py -s 2
GFPGAN_FILE = "GFPGANv1.3.pth"  # inference_gfpgan.py -v 1.3
AVI_BATCH = 300         # the notebook's frames per avi
AVI_FPS = 30            # the notebook's hard-coded rate
BACKGROUND_BIAS = 8.0   # score-head logits: face probability ~e^-16, no candidate passes any threshold


# ------------------------------------------------------------------------ networks with random weights
def _background_only(head: torch.nn.Conv2d, face_channels: slice | list[int]) -> None:
    """Make a random score head answer "background" everywhere (a trained head does so almost everywhere;
    a random one scores ~0.5 and floods the post-processing with candidates). Same compute."""
    with torch.no_grad():
        head.weight.mul_(1e-4)
        head.bias.fill_(BACKGROUND_BIAS)
        head.bias[face_channels] = -BACKGROUND_BIAS


def random_s3fd(seed: int = 11):
    """S3FD in the layout of ``s3fd-619a316812.pth`` (models/s3fd.py) with random weights."""
    from models.s3fd import S3FD
    from tests.checkpoints import _randomize

    net = S3FD()
    net.load_state_dict(_randomize(net, seed), strict=True)
    for name, module in net.named_modules():
        if name.endswith("_mbox_conf"):
            _background_only(module, [module.out_channels - 1])  # the last channel is "face"
    return net.eval()


class SeedRetinaFace(RetinaFace):
    """facexlib's RetinaFace whose ``detect_faces`` runs in full (transform, forward, prior decoding,
    NMS) and then answers with ``truth``: the true faces of the frame being restored, in facexlib's row
    layout (box, score, 5 landmarks), set before each call."""

    truth = np.zeros((0, 15), np.float32)

    def detect_faces(self, image, conf_threshold=0.8, nms_threshold=0.4, use_origin_size=True):
        found = super().detect_faces(image, conf_threshold, nms_threshold, use_origin_size)
        if len(found):
            raise RuntimeError("the background-biased RetinaFace found a face: the bias no longer holds")
        return self.truth


def random_retinaface(seed: int = 12) -> SeedRetinaFace:
    """RetinaFace-ResNet50 in the layout of ``detection_Resnet50_Final.pth`` with random weights."""
    from tests.checkpoints import _randomize

    net = SeedRetinaFace(network_name="resnet50", half=False, device=torch.device("cpu"))
    net.load_state_dict(_randomize(net, seed), strict=True)
    for head in net.ClassHead:
        _background_only(head.conv1x1, slice(1, None, 2))  # (background, face) per anchor
    return net.eval()


def random_parsenet(seed: int = 13):
    """facexlib's ParseNet (the layout of ``parsing_parsenet.pth``) with random weights."""
    from facexlib.parsing.parsenet import ParseNet

    from tests.checkpoints import _randomize

    net = ParseNet(in_size=512, out_size=512, parsing_ch=19)
    net.load_state_dict(_randomize(net, seed), strict=True)
    return net.eval()


@dataclass
class SeedModels:
    wav2lip: torch.nn.Module
    s3fd: torch.nn.Module
    restorer: object            # gfpgan.GFPGANer
    retinaface: SeedRetinaFace
    parsenet: torch.nn.Module

    def networks(self) -> dict[str, torch.nn.Module]:
        """Each network by name, for timing their forward passes."""
        return {"s3fd": self.s3fd, "wav2lip": self.wav2lip, "retinaface": self.retinaface,
                "gfpgan": self.restorer.gfpgan, "parsenet": self.parsenet}


def load_seed_models() -> SeedModels:
    """Every network the seed loads; GFPGANer built by the released class, its helper given our
    random-weight RetinaFace and ParseNet where facexlib would download theirs."""
    import facexlib.utils.face_restoration_helper as helper

    from models.loading import get_model
    from models.restorer import _import_gfpgan_arch
    from models.weights import require

    _import_gfpgan_arch()  # basicsr's torchvision import, before gfpgan imports basicsr
    from gfpgan import GFPGANer

    retinaface, parsenet = random_retinaface(), random_parsenet()
    saved = helper.init_detection_model, helper.init_parsing_model
    helper.init_detection_model = lambda *a, **k: retinaface
    helper.init_parsing_model = lambda *a, **k: parsenet
    try:
        restorer = GFPGANer(model_path=str(require(GFPGAN_FILE)), upscale=UPSCALE, arch="clean",
                            channel_multiplier=2, bg_upsampler=None, device=torch.device("cpu"))
    finally:
        helper.init_detection_model, helper.init_parsing_model = saved
    wav2lip, _ = get_model("wav2lip", "wav2lip_gan.pth", "cpu")
    return SeedModels(wav2lip, random_s3fd(), restorer, retinaface, parsenet)


# ------------------------------------------------------------------------------------ the true faces
def true_faces(video: str) -> list[list]:
    """Every source frame's faces (CenterFace at full resolution), found before the clock starts."""
    from models.face_detection import CenterFaceDetector

    detector = CenterFaceDetector(max_side=1 << 16)
    return [detector(frame) for frame in read_all_frames(video)[0]]


def as_retinaface_rows(faces: list) -> np.ndarray:
    """Faces in facexlib's detection layout: x1, y1, x2, y2, score, then the 5 landmarks' x, y."""
    rows = [np.concatenate([f.box, [f.score], np.asarray(f.landmarks).reshape(-1)]) for f in faces]
    return np.asarray(rows, np.float32).reshape(-1, 15)


# ------------------------------------------------------------------------------------ 1: inference.py
def read_all_frames(video: str) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(video)
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames, fps


def detect_boxes(frames: list[np.ndarray], s3fd, truth: list[list]) -> list[tuple[int, int, int, int]]:
    """S3FD on every full-resolution frame in batches of 16; each frame's true main face then stands in
    for its (empty) detections; padded and smoothed as inference.py does."""
    from models.face_detection import main_face, pad_box
    from models.s3fd import s3fd_detect

    boxes = []
    for a in range(0, len(frames), DETECT_BATCH):
        s3fd_detect(s3fd, frames[a:a + DETECT_BATCH], "cpu")
        for i in range(a, min(a + DETECT_BATCH, len(frames))):
            k = main_face(truth[i], frames[i].shape)
            if k is None:  # inference.py stops here too
                raise ValueError(f"Face not detected in frame {i}! Ensure the video contains a face in all "
                                 "the frames.")
            boxes.append(pad_box(np.trunc(truth[i][k].box), PADS, frames[i].shape))
    smoothed = smooth_boxes(np.asarray(boxes, np.int64), SMOOTH_WINDOW)
    return [tuple(int(v) for v in b) for b in smoothed]


def smooth_boxes(boxes: np.ndarray, window: int) -> np.ndarray:
    """inference.py's box smoothing: box i becomes the mean of the ``window`` boxes from i (the last ones
    share the final window), updated in place so those final windows see smoothed boxes; integer boxes
    truncate each mean. ``boxes`` itself is not modified."""
    out = boxes.copy()
    n = len(out)
    for i in range(n):
        j = i if i + window <= n else max(0, n - window)
        out[i] = out[j:j + window].mean(axis=0)
    return out


def lipsync_to_avi(frames: list[np.ndarray], boxes: list, windows: np.ndarray, model, fps: float,
                   avi: Path) -> int:
    """inference.py's generator loop: output frame i is source frame i mod n with the predicted mouth,
    written to a DIVX avi as each batch of 128 comes out."""
    from models.wav2lip import FACE_SIZE

    def face(i: int) -> np.ndarray:
        x1, y1, x2, y2 = boxes[i]
        return cv2.resize(frames[i][y1:y2, x1:x2], (FACE_SIZE, FACE_SIZE))

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"DIVX"), fps, (w, h))
    n = len(frames)
    for a in range(0, len(windows), WAV2LIP_BATCH):
        idx = range(a, min(a + WAV2LIP_BATCH, len(windows)))
        out = [frames[i % n].copy() for i in idx]
        crops = np.stack([face(i % n) for i in idx])
        masked = crops.copy()
        masked[:, FACE_SIZE // 2:] = 0
        img = torch.FloatTensor(np.transpose(np.concatenate((masked, crops), axis=3) / 255.0, (0, 3, 1, 2)))
        mel = torch.FloatTensor(windows[list(idx)][:, None])
        with torch.no_grad():
            pred = model(mel, img).cpu().numpy().transpose(0, 2, 3, 1) * 255.0
        for frame, p, i in zip(out, pred, idx):
            x1, y1, x2, y2 = boxes[i % n]
            frame[y1:y2, x1:x2] = cv2.resize(p.astype(np.uint8), (x2 - x1, y2 - y1))
            writer.write(frame)
    writer.release()
    return len(windows)


def seed_ffmpeg(*args: str) -> None:
    """One of the seed's ffmpeg command lines (our ffmpeg binary)."""
    from core.media import ffmpeg_exe

    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *args],
                          capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)}: {proc.stderr.decode(errors='replace')[-600:]}")


# ------------------------------------------------------------------------------------ 2-4: the notebook
def video_to_jpgs(video: Path, folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(video))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    for k in range(n):
        _, image = cap.read()
        cv2.imwrite(str(folder / f"{k:04d}.jpg"), image)
    cap.release()
    return n


def restore_jpgs(folder: Path, out: Path, models: SeedModels, truth: Callable[[int], list]) -> int:
    """inference_gfpgan.py over ``folder``; ``truth(k)``: the true faces of the k-th frame. Returns the
    number of faces restored."""
    from basicsr.utils import imwrite

    faces = 0
    for k, path in enumerate(sorted(folder.glob("*"))):
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        models.retinaface.truth = as_retinaface_rows(truth(k))
        cropped, restored, restored_img = models.restorer.enhance(img, has_aligned=False, only_center_face=True,
                                                                  paste_back=True)
        for idx, (c, r) in enumerate(zip(cropped, restored)):
            imwrite(c, str(out / "cropped_faces" / f"{path.stem}_{idx:02d}.png"))
            imwrite(r, str(out / "restored_faces" / f"{path.stem}_{idx:02d}.png"))
            imwrite(np.concatenate((c, r), axis=1), str(out / "cmp" / f"{path.stem}_{idx:02d}.png"))
        faces += len(restored)
        if restored_img is not None:
            imwrite(restored_img, str(out / "restored_imgs" / f"{path.stem}{path.suffix}"))
    return faces


def jpgs_to_avi_batches(folder: Path, out: Path) -> list[str]:
    """The notebook's writer: batches of 300 JPGs, each read into a list, then one DIVX avi at 30 fps."""
    names = sorted(p.name for p in folder.iterdir())
    batches = []
    for b, start in enumerate(range(0, len(names), AVI_BATCH)):
        images = [img for img in (cv2.imread(str(folder / n)) for n in names[start:start + AVI_BATCH])
                  if img is not None]
        h, w = images[0].shape[:2]
        name = f"batch_{b:04d}.avi"
        writer = cv2.VideoWriter(str(out / name), cv2.VideoWriter_fourcc(*"DIVX"), AVI_FPS, (w, h))
        for img in images:
            writer.write(img)
        writer.release()
        batches.append(name)
    return batches


# ------------------------------------------------------------------------------------ the whole job
class Clock:
    """Seconds per step, in the order the steps ran."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t


# the steps as benchmark 1 compares them with our stages
GROUPS = {"lipsync": ("read_frames_audio", "s3fd", "wav2lip_avi", "ffmpeg_x264_mux"),
          "enhance": ("frames_to_jpg", "gfpgan_script"),
          "encode+mux": ("jpg_to_avi_batches", "ffmpeg_concat_mux")}


def run_baseline(audio: str, video: str, out: str | Path, tmp: str | Path, models: SeedModels | None = None) -> dict:
    """The seed's whole job on ``audio`` + ``video``, its final avi copied to ``out``; returns the
    seconds of each step, the step groups, frames, faces restored and output size."""
    from core.media import decode_audio
    from models.audio import frame_count, mel_windows, melspectrogram

    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    models = models or load_seed_models()
    truth = true_faces(video)
    clock = Clock()
    with clock.step("read_frames_audio"):
        frames, fps = read_all_frames(video)
        wav = decode_audio(audio)
        windows = mel_windows(melspectrogram(wav), frame_count(len(wav), fps), fps)
        frames = frames[:len(windows)]  # as inference.py: a longer video is cut to the audio
    with clock.step("s3fd"):
        boxes = detect_boxes(frames, models.s3fd, truth)
    with clock.step("wav2lip_avi"):
        n_out = lipsync_to_avi(frames, boxes, windows, models.wav2lip, fps, tmp / "result.avi")
        h, w = frames[0].shape[:2]
        n_src = len(frames)
        del frames
    with clock.step("ffmpeg_x264_mux"):
        seed_ffmpeg("-y", "-i", audio, "-i", str(tmp / "result.avi"), "-strict", "-2", "-q:v", "1",
                    str(tmp / "result.mp4"))
    with clock.step("frames_to_jpg"):
        n_jpg = video_to_jpgs(tmp / "result.mp4", tmp / "frames")
    with clock.step("gfpgan_script"):
        faces = restore_jpgs(tmp / "frames", tmp / "gfpgan", models, lambda k: truth[k % n_src])
    with clock.step("jpg_to_avi_batches"):
        batches = jpgs_to_avi_batches(tmp / "gfpgan" / "restored_imgs", tmp)
    with clock.step("ffmpeg_concat_mux"):
        (tmp / "concat.txt").write_text("".join(f"file {b}\n" for b in batches))
        seed_ffmpeg("-y", "-f", "concat", "-i", str(tmp / "concat.txt"), "-c", "copy",
                    str(tmp / "concated_output.avi"))
        seed_ffmpeg("-y", "-i", str(tmp / "concated_output.avi"), "-i", audio, "-map", "0", "-map", "1:a",
                    "-c:v", "copy", "-shortest", str(out))
    times = clock.times
    return {"times": times, "groups": {g: sum(times[s] for s in steps) for g, steps in GROUPS.items()},
            "total": sum(times.values()), "frames": n_out, "jpg_frames": n_jpg, "faces": faces,
            "size": [w, h], "out_size": [w * UPSCALE, h * UPSCALE]}


def main() -> None:
    from bench.common import weights_available
    from bench.pipeline import instrument

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--audio", required=True)
    p.add_argument("--video", required=True)
    p.add_argument("-o", "--output", required=True, help="the seed's final video (an .avi)")
    p.add_argument("--work", help="where its frames and intermediates go (default: a temporary directory)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-seed-") as d, weights_available() as kind:
        models = load_seed_models()
        with instrument(models.networks()) as inside:
            res = run_baseline(args.audio, args.video, args.output, args.work or d, models)
        res["inside"] = {k: v for k, v in inside.items() if not k.startswith("detect")}  # CenterFace: untimed truth
    res["weights"] = kind
    print("BENCH_RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
