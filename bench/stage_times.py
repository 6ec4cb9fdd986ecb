"""Time each stage of the pipeline on one clip looped to a length (``bench.pipeline.run_ours``: the
flow's stages through their plain functions, no Prefect).

    .venv/bin/python -m bench.stage_times --audio speech.wav --video talk.mp4 [--seconds 10] [--precision bf16]
        [--engine auto|torch|openvino] [--upscale 2]

Without real weights in the models directory, random-weight files in the official layout are made in a
temporary directory: the compute is the same as with the published weights.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.common import loop_to, weights_available
from bench.pipeline import run_ours
from models.engines import ENGINES


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--audio", required=True)
    p.add_argument("--video", required=True)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--chunk-frames", default="auto", help="a number, or auto")
    p.add_argument("--engine", default="auto", choices=ENGINES, help="Wav2Lip's and GFPGAN's engine")
    p.add_argument("--upscale", type=int, default=1, choices=[1, 2])
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp, weights_available() as kind:
        tmp = Path(tmp)
        audio = loop_to(args.audio, args.seconds, tmp / "audio.wav", audio=True)
        video = loop_to(args.video, args.seconds, tmp / "video.mp4", audio=False)
        res = run_ours(audio, video, tmp / "final.mp4", tmp, args.precision, args.chunk_frames,
                       engine=args.engine, upscale=args.upscale)
    for name, seconds in res["times"].items():
        print(f"{name:16s} {seconds:8.2f} s")
    w, h = res["size"]
    print(f"{'total':16s} {res['total']:8.2f} s  ({res['frames']} frames {w}x{h}, {res.get('faces', '?')} faces, "
          f"{args.precision}, engine {args.engine}, x{args.upscale}, weights: {kind})")
    if args.json:
        Path(args.json).write_text(json.dumps({k: res[k] for k in ("times", "frames", "size", "precision")},
                                              indent=1))


if __name__ == "__main__":
    main()
