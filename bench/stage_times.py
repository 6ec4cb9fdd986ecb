"""Time each stage of the pipeline on one clip, as plain function calls (no Prefect).

    .venv/bin/python -m bench.stage_times --audio speech.wav --video talk.mp4 [--seconds 10] [--precision bf16]

Without real weights in the models directory, random-weight files in the official layout are made in a
temporary directory: the compute is the same as with the published weights.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

from core.media import ffmpeg_exe, run_ffmpeg


def loop_to(src: str, seconds: float, dst: Path, audio: bool) -> str:
    """``src`` looped and cut to ``seconds`` (re-encoded: a real clip of the wanted length)."""
    codec = ["-c:a", "pcm_s16le"] if audio else ["-an", "-c:v", "libx264", "-crf", "12", "-preset", "veryfast"]
    run_ffmpeg(["-stream_loop", "-1", "-i", src, "-t", str(seconds), *codec, str(dst)], f"looping {src}")
    return str(dst)


@contextmanager
def weights_available():
    from models.weights import weight_path

    if weight_path("wav2lip_gan.pth").is_file() and weight_path("GFPGANv1.4.pth").is_file():
        yield "published"
        return
    from tests.checkpoints import make_gfpgan_checkpoint, make_wav2lip_checkpoint

    with tempfile.TemporaryDirectory(prefix="bench-models-") as d:
        make_wav2lip_checkpoint(Path(d) / "wav2lip_gan.pth")
        make_gfpgan_checkpoint(Path(d) / "GFPGANv1.4.pth")
        old = os.environ.get("WAV2LIP_HQ_MODELS_DIR")
        os.environ["WAV2LIP_HQ_MODELS_DIR"] = d
        try:
            yield "random (official layout)"
        finally:
            if old is None:
                os.environ.pop("WAV2LIP_HQ_MODELS_DIR")
            else:
                os.environ["WAV2LIP_HQ_MODELS_DIR"] = old


def main() -> None:
    from tasks.audio import extract_audio
    from tasks.combine import combine_frames, final_mux
    from tasks.enhance import EnhanceOptions, enhance_chunk
    from tasks.lipsync import LipsyncOptions, lipsync
    from tasks.split import split_video

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--audio", required=True)
    p.add_argument("--video", required=True)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--chunk-frames", type=int, default=50)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    ffmpeg_exe()

    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp, weights_available() as kind:
        tmp = Path(tmp)
        audio = loop_to(args.audio, args.seconds, tmp / "audio.wav", audio=True)
        video = loop_to(args.video, args.seconds, tmp / "video.mp4", audio=False)

        def timed(name, fn, *a, **kw):
            t = time.perf_counter()
            out = fn(*a, **kw)
            times[name] = time.perf_counter() - t
            print(f"{name:16s} {times[name]:8.2f} s", flush=True)
            return out

        synced = timed("lipsync", lipsync, audio, video, tmp / "lipsync", LipsyncOptions(precision=args.precision))
        chunks = timed("split_video", split_video, synced.video, synced.n_frames, tmp / "chunks", args.chunk_frames)
        track = timed("extract_audio", extract_audio, synced.video, tmp / "audio")
        opts = EnhanceOptions(precision=args.precision)
        t = time.perf_counter()
        enhanced = [enhance_chunk(c, synced.faces, synced.n_source, synced.width, synced.height,
                                  tmp / "enhanced", opts) for c in chunks]
        times["enhance"] = time.perf_counter() - t
        print(f"{'enhance':16s} {times['enhance']:8.2f} s", flush=True)
        silent = timed("combine_frames", combine_frames, enhanced, synced.width, synced.height,
                       Fraction(synced.fps_num, synced.fps_den), tmp / "silent.mp4")
        timed("final_mux", final_mux, silent, track, tmp / "final.mp4")
        total = sum(times.values())
        print(f"{'total':16s} {total:8.2f} s  ({synced.n_frames} frames {synced.width}x{synced.height}, "
              f"{args.precision}, weights: {kind})")
        if args.json:
            Path(args.json).write_text(json.dumps({"times": times, "frames": synced.n_frames,
                                                   "size": [synced.width, synced.height],
                                                   "precision": args.precision}, indent=1))


if __name__ == "__main__":
    main()
