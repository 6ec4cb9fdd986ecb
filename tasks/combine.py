"""Stage 5: enhanced chunks in order -> H.264 video at the exact source rate, then the audio muxed in."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from core.media import FrameWriter, mux, read_video_file_frames
from core.prefect_task import stage_task
from core.progress import Progress
from core.storage import publish
from core.workarea import WorkArea, run_stage
from tasks.split import Chunk


def combine_frames(chunks: list[Chunk], width: int, height: int, fps: Fraction, out_path: str | Path,
                   crf: int = 18, preset: str = "medium") -> str:
    """Encode the chunks' frames, in chunk order, as one H.264 (yuv420p) stream at ``fps``.

    Frames are re-timed here from their order and ``fps``, so the intermediates' own timestamps
    (millisecond-rounded in Matroska) never reach the output.
    """
    ordered = sorted(chunks, key=lambda c: c.start)
    expected = 0
    for c in ordered:
        if c.start != expected:
            raise ValueError(f"chunks are not contiguous: frame {expected} missing before {c.path}")
        expected += c.n_frames
    progress = Progress("encode", expected)
    with FrameWriter(out_path, width, height, fps, codec="h264", crf=crf, preset=preset) as writer:
        for c in ordered:
            for frame in read_video_file_frames(c.path, width, height):
                writer.write(frame)
                progress.update()
    if writer.count != expected:
        raise RuntimeError(f"encoded {writer.count} frames, expected {expected}")
    return str(out_path)


def final_mux(video: str, audio: str, out_path: str | Path) -> str:
    """The silent H.264 video + the audio as AAC, written under a temporary name then moved."""
    return str(mux(video, audio, out_path, audio_codec="aac"))


VERSION = "1"


@stage_task("combine_frames")
def combine_frames_task(chunks: list[dict], synced: dict, upscale: int, crf: int, preset: str,
                        work_root: str) -> dict:
    """Enhanced chunks -> silent H.264 video (content-keyed on the chunks it encodes)."""
    parts = {"chunks": [c["key"] for c in sorted(chunks, key=lambda c: c["start"])], "crf": crf,
             "preset": preset}
    objs = [Chunk(c["path"], c["index"], c["start"], c["n_frames"]) for c in chunks]
    fps = Fraction(synced["fps_num"], synced["fps_den"])

    def produce(out_dir: Path) -> dict:
        path = combine_frames(objs, synced["width"] * upscale, synced["height"] * upscale, fps,
                              out_dir / "video.mp4", crf, preset)
        return {"video": path}

    return run_stage(WorkArea(work_root), "combine", VERSION, parts, produce)


@stage_task("final_mux")
def final_mux_task(video: dict, audio: dict, output: str, work_root: str) -> str:
    """Mux into the work area, then publish to the output URL in one atomic step."""
    parts = {"video": video["key"], "audio": audio["key"]}
    suffix = Path(output).suffix or ".mp4"

    def produce(out_dir: Path) -> dict:
        return {"video": final_mux(video["video"], audio["audio"], out_dir / f"final{suffix}")}

    done = run_stage(WorkArea(work_root), "mux", VERSION, parts, produce)
    return publish(done["video"], output)
