"""The enhance_chunk stage: GFPGAN on the faces of every frame of one chunk; the rest of the frame is
untouched. Mapped over the chunks, each keyed on its own: a resumed job redoes only unfinished chunks."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.media import FrameWriter, read_video_file_frames
from core.options import RunOptions
from core.products import Chunk, SyncedVideo
from core.progress import Progress
from core.stage import Stage
from core.storage import local_copy
from models.batching import default_batch
from models.face_track import FaceTrack, source_index
from models.restorer import MIN_EYE_DISTANCE, align_face, eye_distance, paste_back, restore_faces


def enhance_chunk(chunk: Chunk, face_track: str, synced: SyncedVideo, out_dir: str | Path,
                  opts: RunOptions = RunOptions(), face_batch: int = 0) -> Chunk:
    """Restore the faces of ``chunk``'s frames (at a local path) with the smoothed landmarks of
    ``face_track`` (all of them, or the speaker's with ``restore=speaker``); write the enhanced chunk
    (lossless) to ``out_dir``. ``synced`` is the video the chunk was cut from.

    ``face_batch``: faces per network call; 0: 1 on CPU (fastest, half the memory), 8 on CUDA.
    """
    from models.loading import get_restorer

    net, device = get_restorer(opts.gfpgan, opts.device, opts.engine, opts.precision)
    track = FaceTrack.load(face_track)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / Path(chunk.path).name
    u, width, height = opts.upscale, synced.width, synced.height
    face_batch = face_batch or default_batch("gfpgan", device)
    # the flow logs the chunks' aggregate progress; a chunk's own line comes at its end (or every 30 s)
    progress = Progress(f"enhance chunk {chunk.index}", chunk.n_frames, every=100.0)
    pending: list[tuple[np.ndarray, list]] = []  # frames waiting for their faces' batch
    with FrameWriter(out_path, width * u, height * u, fps=25, codec="lossless") as writer:
        for j, frame in enumerate(read_video_file_frames(chunk.path, width, height)):
            src = source_index(chunk.start + j, synced.n_source, synced.loop)
            pending.append((frame, aligned_faces(frame, track, src, opts.restore)))
            if sum(len(a) for _, a in pending) >= face_batch:
                writer.write_all(restore_frames(net, device, pending, opts))
                progress.update(len(pending))
                pending = []
        if pending:
            writer.write_all(restore_frames(net, device, pending, opts))
            progress.update(len(pending))
    if writer.count != chunk.n_frames:
        raise RuntimeError(f"{chunk.path}: enhanced {writer.count} frames, expected {chunk.n_frames}")
    return Chunk(path=str(out_path), index=chunk.index, start=chunk.start, n_frames=chunk.n_frames)


def restore_frames(net, device, pending: list[tuple[np.ndarray, list]], opts: RunOptions) -> list[np.ndarray]:
    """Frames with their aligned faces (:func:`align_face` results) -> the frames at ``opts.upscale``
    with every face restored in one network batch and pasted back."""
    crops = [crop for _, aligned in pending for crop, _ in aligned]
    restored = iter(restore_faces(net, crops, device, opts.blend, opts.precision))
    return [paste_back(frame, [next(restored) for _ in aligned], [m for _, m in aligned], opts.upscale)
            for frame, aligned in pending]


def aligned_faces(frame: np.ndarray, track: FaceTrack, src: int, restore: str) -> list:
    """The faces of source frame ``src`` to restore (all, or the speaker's), aligned for GFPGAN."""
    return [align_face(frame, lm) for lm in track.faces_at(src, restore == "speaker")
            if eye_distance(lm) >= MIN_EYE_DISTANCE]


KEY_OPTIONS = ("blend", "upscale", "restore", "precision", "device")


def _key_inputs(chunk: Chunk, opts: RunOptions) -> dict:
    from models.loading import network_key

    return {"chunk": chunk.key, "opts": opts.model_dump(include=set(KEY_OPTIONS)),
            **network_key(opts.gfpgan, "--gfpgan", opts.device, opts.engine, opts.precision)}


STAGE = Stage("enhance_chunk", version="5", product=Chunk, key_inputs=_key_inputs)


@STAGE.task(task_run_name="enhance_chunk-{chunk.index}")
def enhance_chunk_task(chunk: Chunk, synced: SyncedVideo, opts: RunOptions, work_root: str,
                       refresh: bool = False) -> Chunk:
    def produce(out_dir: Path) -> Chunk:
        with local_copy(chunk.path, "chunk") as path, local_copy(synced.face_track, "face track") as faces:
            return enhance_chunk(chunk.model_copy(update={"path": path}), faces, synced, out_dir, opts)

    return STAGE.run(work_root, produce, refresh, chunk=chunk, opts=opts)
