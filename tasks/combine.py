"""Stage 5: enhanced chunks in order -> H.264 video at the exact source rate, then the audio muxed in."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

from core.media import FrameWriter, mux, read_video_file_frames
from core.prefect_task import stage_task
from core.progress import Progress
from core.storage import local_copy, publish
from core.workarea import WorkArea, run_stage
from tasks.split import Chunk


def combine_frames(chunks: Iterable[Chunk], width: int, height: int, fps: Fraction, out_path: str | Path,
                   crf: int = 18, preset: str = "medium", total: int | None = None) -> str:
    """Encode the chunks' frames, in the order given (which must be frame order), as one H.264
    (yuv420p) stream at ``fps``.

    Frames are re-timed here from their order and ``fps``, so the intermediates' own timestamps
    (millisecond-rounded in Matroska) never reach the output.
    """
    progress = Progress("encode", total or 1)
    expected = 0
    with FrameWriter(out_path, width, height, fps, codec="h264", crf=crf, preset=preset) as writer:
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


def final_mux(video: str, audio: str, out_path: str | Path) -> str:
    """The silent H.264 video + the audio as AAC, written under a temporary name then moved."""
    return str(mux(video, audio, out_path, audio_codec="aac"))


VERSION = "1"


def _combine_parts(chunks: list[dict], crf: int, preset: str, **_) -> dict:
    return {"chunks": [c["key"] for c in sorted(chunks, key=lambda c: c["start"])], "crf": crf,
            "preset": preset}


@stage_task("combine_frames", stage="combine", version=VERSION, parts=_combine_parts)
def combine_frames_task(chunks: list[dict], synced: dict, upscale: int, crf: int, preset: str,
                        work_root: str, refresh: bool = False) -> dict:
    """Enhanced chunks -> silent H.264 video (content-keyed on the chunks it encodes)."""
    fps = Fraction(synced["fps_num"], synced["fps_den"])

    def produce(out_dir: Path) -> dict:
        path = combine_frames(_local_chunks(chunks), synced["width"] * upscale, synced["height"] * upscale,
                              fps, out_dir / "video.mp4", crf, preset, total=synced["n_frames"])
        return {"video": path}

    return run_stage(WorkArea(work_root), "combine", VERSION, _combine_parts(chunks, crf, preset), produce,
                     refresh)


def _local_chunks(chunks: list[dict]) -> Iterator[Chunk]:
    """Chunks with local paths, fetched one at a time when the work area is remote."""
    for c in sorted(chunks, key=lambda c: c["start"]):
        with local_copy(c["path"], "chunk") as path:
            yield Chunk(path, c["index"], c["start"], c["n_frames"])


def _mux_parts(video: dict, audio: dict, **_) -> dict:
    return {"video": video["key"], "audio": audio["key"]}


@stage_task("final_mux")
def final_mux_task(video: dict, audio: dict, output: str, work_root: str, refresh: bool = False) -> dict:
    """Mux into the work area (reused when finished), then publish to the output URL in one atomic step.

    Not cached by Prefect: publishing depends on the output URL, and must happen on every run (two
    jobs with the same content and different outputs each get their file)."""
    suffix = Path(output).suffix or ".mp4"

    def produce(out_dir: Path) -> dict:
        with local_copy(video["video"], "video") as v, local_copy(audio["audio"], "audio") as a:
            return {"video": final_mux(v, a, out_dir / f"final{suffix}")}

    done = run_stage(WorkArea(work_root), "mux", VERSION, _mux_parts(video, audio), produce, refresh)
    with local_copy(done["video"], "final video") as path:
        done["output"] = publish(path, output)
    return done
