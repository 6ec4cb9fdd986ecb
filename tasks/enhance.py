"""Stage 4: GFPGAN on the faces of every frame of one chunk; the rest of the frame is untouched."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from core.media import FrameWriter, read_video_file_frames
from core.prefect_task import stage_task
from core.progress import Progress
from core.storage import local_copy
from core.workarea import WorkArea, run_stage
from models.precision import PRECISIONS
from models.restorer import MIN_EYE_DISTANCE, align_face, eye_distance, paste_face, restore_faces
from models.weights import GFPGAN_FILES
from tasks.faces import FaceTrack
from tasks.split import Chunk


@dataclass(frozen=True)
class EnhanceOptions:
    gfpgan_version: str = "1.4"
    blend: float = 1.0          # 1: restored face only; 0: original face
    upscale: int = 1            # 1 or 2 (background upscaled with Lanczos)
    face_batch: int = 0         # faces per network call; 0: 1 on CPU (fastest, half the memory), 8 on CUDA
    precision: str = "auto"     # see models.precision
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.gfpgan_version not in GFPGAN_FILES:
            raise ValueError(f"gfpgan_version must be one of {sorted(GFPGAN_FILES)}")
        if not 0.0 <= self.blend <= 1.0:
            raise ValueError("blend must be between 0 and 1")
        if self.upscale not in (1, 2):
            raise ValueError("upscale must be 1 or 2")
        if self.face_batch < 0:
            raise ValueError("face_batch must be 0 (automatic) or more")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")


def enhance_chunk(chunk: Chunk, faces_path: str, n_source: int, width: int, height: int,
                  out_dir: str | Path, opts: EnhanceOptions = EnhanceOptions()) -> Chunk:
    """Restore every face of ``chunk``'s frames; write the enhanced chunk (lossless) to ``out_dir``."""
    from models.loading import get_model

    net, _, device = get_model("gfpgan", GFPGAN_FILES[opts.gfpgan_version], opts.device)
    track = FaceTrack.load(faces_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / Path(chunk.path).name
    u = opts.upscale
    face_batch = opts.face_batch or (8 if device.type == "cuda" else 1)
    progress = Progress(f"enhance chunk {chunk.index}", chunk.n_frames)
    pending: list[tuple[np.ndarray, list]] = []  # frames waiting for their faces' batch
    with FrameWriter(out_path, width * u, height * u, fps=25, codec="ffv1") as writer:
        for j, frame in enumerate(read_video_file_frames(chunk.path, width, height)):
            src = (chunk.start + j) % n_source
            aligned = [align_face(frame, lm) for lm in track.faces_at(src) if eye_distance(lm) >= MIN_EYE_DISTANCE]
            pending.append((frame, aligned))
            if sum(len(a) for _, a in pending) >= face_batch:
                _flush(net, device, pending, writer, opts)
                progress.update(len(pending))
                pending = []
        if pending:
            _flush(net, device, pending, writer, opts)
            progress.update(len(pending))
    if writer.count != chunk.n_frames:
        raise RuntimeError(f"{chunk.path}: enhanced {writer.count} frames, expected {chunk.n_frames}")
    return Chunk(str(out_path), chunk.index, chunk.start, chunk.n_frames)


def _flush(net, device, pending: list, writer: FrameWriter, opts: EnhanceOptions) -> None:
    crops = [crop for _, aligned in pending for crop, _ in aligned]
    restored = iter(restore_faces(net, crops, device, opts.blend, opts.precision))
    for frame, aligned in pending:
        canvas = frame if opts.upscale == 1 else cv2.resize(
            frame, None, fx=opts.upscale, fy=opts.upscale, interpolation=cv2.INTER_LANCZOS4)
        canvas = canvas.copy()
        for _, m in aligned:
            paste_face(canvas, next(restored), m, opts.upscale)
        writer.write(canvas)


VERSION = "1"


def _parts(chunk: dict, opts: EnhanceOptions, **_) -> dict:
    from models.checkpoint import resolve_device
    from models.precision import resolve_precision
    from models.weights import require, sha256_file

    device = resolve_device(opts.device)
    return {"chunk": chunk["key"], "opts": asdict(opts), "device": device.type,
            "precision": resolve_precision(opts.precision, device),
            "weights": sha256_file(require(GFPGAN_FILES[opts.gfpgan_version]))}


def is_finished(chunk: dict, opts: EnhanceOptions, work_root: str) -> bool:
    """Whether the work area already holds this chunk's enhanced output."""
    from core.workarea import stage_key

    return WorkArea(work_root).finished("enhance", stage_key("enhance", VERSION, **_parts(chunk, opts))) is not None


@stage_task("enhance_chunk", stage="enhance", version=VERSION, parts=_parts,
            task_run_name="enhance_chunk-{chunk[index]}")
def enhance_task(chunk: dict, synced: dict, opts: EnhanceOptions, work_root: str, refresh: bool = False) -> dict:
    """One chunk's enhancement, content-keyed per chunk: a resumed job redoes only unfinished chunks."""
    def produce(out_dir: Path) -> dict:
        with local_copy(chunk["path"], "chunk") as path, local_copy(synced["faces"], "face track") as faces:
            src = Chunk(path, chunk["index"], chunk["start"], chunk["n_frames"])
            done = enhance_chunk(src, faces, synced["n_source"], synced["width"], synced["height"],
                                 out_dir, opts)
        return done.to_dict()

    return run_stage(WorkArea(work_root), "enhance", VERSION, _parts(chunk, opts), produce, refresh)
