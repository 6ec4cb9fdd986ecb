"""The combine_frames stage: the chunks' frames in order -> one silent H.264 video at the exact source
rate."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

from core.media import FrameWriter, read_video_file_frames
from core.options import RunOptions
from core.products import Chunk, SilentVideo, SyncedVideo
from core.progress import Progress
from core.stage import Stage
from core.storage import local_copy


def combine_frames(chunks: Iterable[Chunk], width: int, height: int, fps: Fraction, out_path: str | Path,
                   crf: int, preset: str, total: int | None = None, sar: Fraction = Fraction(1)) -> str:
    """Encode the chunks' frames (local paths), in the order given (which must be frame order), as one
    H.264 (yuv420p) stream at ``fps``.

    Frames are re-timed here from their order and ``fps``, so the intermediates' own timestamps
    (millisecond-rounded in Matroska) never reach the output.
    """
    progress = Progress("encode", total or 1)
    expected = 0
    with FrameWriter(out_path, width, height, fps, codec="h264", crf=crf, preset=preset, sar=sar) as writer:
        for c in chunks:
            if c.start != expected:
                raise ValueError(f"chunks are not contiguous: frame {expected} missing before {c.path}")
            for frame in read_video_file_frames(c.path, width, height):
                writer.write(frame)
                progress.update()
            expected += c.n_frames
            if writer.count != expected:
                raise RuntimeError(f"{c.path}: gave {writer.count - expected + c.n_frames} frames, "
                                   f"expected {c.n_frames}")
    return str(out_path)


def _key_inputs(chunks: list[Chunk], opts: RunOptions) -> dict:
    return {"chunks": [c.key for c in sorted(chunks, key=lambda c: c.start)], "crf": opts.crf,
            "preset": opts.preset}


STAGE = Stage("combine_frames", version="2", product=SilentVideo, key_inputs=_key_inputs)


@STAGE.task
def combine_frames_task(chunks: list[Chunk], synced: SyncedVideo, opts: RunOptions, work_root: str,
                        refresh: bool = False) -> SilentVideo:
    """Content-keyed on the chunks it encodes (enhanced or not, which also fixes the frame size)."""
    scale = opts.upscale if opts.enhance else 1

    def produce(out_dir: Path) -> SilentVideo:
        path = combine_frames(_local_chunks(chunks), synced.width * scale, synced.height * scale, synced.fps,
                              out_dir / "video.mp4", opts.crf, opts.preset, total=synced.n_frames,
                              sar=Fraction(synced.sar_num, synced.sar_den))
        return SilentVideo(video=path)

    return STAGE.run(work_root, produce, refresh, chunks=chunks, opts=opts)


def _local_chunks(chunks: list[Chunk]) -> Iterator[Chunk]:
    """Chunks at local paths, fetched one at a time when the work area is remote."""
    for c in sorted(chunks, key=lambda c: c.start):
        with local_copy(c.path, "chunk") as path:
            yield c.model_copy(update={"path": path})
