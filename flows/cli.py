"""``wav2lip-hq``: run the pipeline, manage weights.

    wav2lip-hq run --audio speech.mp3 --video talk.mp4 -o out.mp4
    wav2lip-hq models fetch|list|verify [NAME ...]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

EXIT_BAD_INPUT = 2


def _pads(text: str) -> tuple[int, int, int, int]:
    parts = [int(p) for p in text.replace(",", " ").split()]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError("pads take four integers: top bottom left right")
    return tuple(parts)  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wav2lip-hq", description="Audio + talking-face video (or portrait) "
                                "-> high-quality lip-synced video (Wav2Lip, then GFPGAN on the faces).")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="lip-sync a video (or portrait) to an audio track",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Runs the lipsync_hq Prefect flow locally (no server needed). Stage "
                       "outputs are kept in a content-keyed work area: running the same job again reuses "
                       "them, and an interrupted job resumes where it stopped.")
    r.add_argument("--audio", required=True, help="speech: wav, mp3, m4a, aac, flac, or a video's audio (path or URL)")
    r.add_argument("--video", required=True, help="talking-face video, or a still portrait jpg/png (path or URL)")
    r.add_argument("-o", "--output", required=True, help="output video path or URL (e.g. out.mp4)")
    r.add_argument("--checkpoint", default="wav2lip_gan.pth", choices=["wav2lip_gan.pth", "wav2lip.pth"],
                   help="Wav2Lip weights: GAN (sharper) or sync-expert only")
    r.add_argument("--gfpgan", dest="gfpgan_version", default="1.4", choices=["1.4", "1.3"],
                   help="GFPGAN weights version")
    r.add_argument("--blend", type=float, default=1.0,
                   help="restoration strength 0..1 (1: restored face only, 0: the lip-synced face)")
    r.add_argument("--upscale", type=int, default=1, choices=[1, 2],
                   help="output size factor (background upscaled with Lanczos)")
    r.add_argument("--no-enhance", dest="enhance", action="store_false",
                   help="skip GFPGAN: plain Wav2Lip output, re-encoded")
    r.add_argument("--fps", dest="still_fps", type=float, default=25.0,
                   help="frame rate used when --video is a still image")
    r.add_argument("--on-no-face", default="pass", choices=["pass", "fail"],
                   help="frames without a face: keep unchanged, or stop with an error naming the first")
    r.add_argument("--pads", type=_pads, default=(0, 10, 0, 0), metavar="'T B L R'",
                   help="pixels added to the face box: top bottom left right")
    r.add_argument("--no-smooth", dest="smooth", action="store_false",
                   help="do not average face boxes over 5 frames")
    r.add_argument("--detector", default="centerface", choices=["centerface", "s3fd"],
                   help="face detector; s3fd needs s3fd-619a316812.pth in the models directory")
    r.add_argument("--crf", type=int, default=18, help="H.264 quality (0-51, lower is better)")
    r.add_argument("--preset", default="medium", choices=["ultrafast", "veryfast", "fast", "medium", "slow"],
                   help="H.264 encoder preset")
    r.add_argument("--chunk-frames", type=int, default=50, help="frames per enhancement chunk")
    r.add_argument("--batch-size", type=int, default=0,
                   help="frames per Wav2Lip generator call (0: automatic, 16 on CPU, 128 on CUDA)")
    r.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 on CPUs with bf16 instructions, fp16 on CUDA, else fp32 (exact)")
    r.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    r.add_argument("--work-dir", default=None,
                   help="work area for stage outputs, a path or URL such as s3://bucket/work "
                   "(default: $WAV2LIP_HQ_WORK_DIR or the user cache)")
    r.add_argument("--refresh", action="store_true",
                   help="ignore finished stages in the work area and recompute everything")
    r.add_argument("--dask-address", default=None,
                   help="tcp://host:8786 of an existing Dask scheduler whose workers import this project "
                   "(default: $WAV2LIP_HQ_DASK_ADDRESS, else a local cluster sized to the machine)")
    r.add_argument("--dask-workers", type=int, default=None,
                   help="workers of the local Dask cluster (default: one per core, or per GPU; 0: no Dask)")

    m = sub.add_parser("models", help="list, fetch or verify the weight files",
                       description="Weight files live in $WAV2LIP_HQ_MODELS_DIR (default: the user cache).")
    msub = m.add_subparsers(dest="action", required=True)
    f = msub.add_parser("fetch", help="download weights (default set: wav2lip_gan.pth, GFPGANv1.4.pth)")
    f.add_argument("names", nargs="*", help="file names; 'all' for every known file")
    f.add_argument("--force", action="store_true", help="download again even when present and valid")
    msub.add_parser("list", help="show known weight files, where they go and whether they are present")
    v = msub.add_parser("verify", help="check present files against the manifest (size, SHA-256)")
    v.add_argument("names", nargs="*", help="file names (default: the ones present)")
    return p


def _models(args: argparse.Namespace) -> int:
    from models import weights

    if args.action == "list":
        print(f"models directory: {weights.models_dir()}")
        for w in weights.MANIFEST.values():
            here = "present" if weights.weight_path(w.name).is_file() else "missing"
            default = " (default)" if w.name in weights.DEFAULT_SET else ""
            print(f"  {w.name:22s} {here:8s} {w.purpose}{default}")
        return 0
    names = args.names or (list(weights.DEFAULT_SET) if args.action == "fetch" else
                           [n for n in weights.MANIFEST if weights.weight_path(n).is_file()])
    if names == ["all"]:
        names = list(weights.MANIFEST)
    unknown = [n for n in names if n not in weights.MANIFEST]
    if unknown:
        print(f"error: unknown weight file(s) {', '.join(unknown)}; known: {', '.join(weights.MANIFEST)}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    failed = 0
    for name in names:
        if args.action == "fetch":
            try:
                path = weights.fetch(name, force=args.force)
                print(f"{name}: {path}")
            except ConnectionError as exc:
                print(f"error: {exc}", file=sys.stderr)
                failed += 1
        else:
            ok, msg = weights.verify(name)
            print(msg)
            failed += not ok
    return 1 if failed else 0


def _run(args: argparse.Namespace) -> int:
    # the local (ephemeral) Prefect server needs more than its default 20 s to start on small machines
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from core.errors import InputError
    from models.weights import GFPGAN_FILES, require
    from tasks.probe import validate_job

    params = {k: v for k, v in vars(args).items() if k not in {"command"}}
    try:
        # fail fast, before the flow's local server starts: bad inputs and missing weights
        validate_job(args.audio, args.video, args.output, args.still_fps)
        require(args.checkpoint)
        if args.enhance:
            require(GFPGAN_FILES[args.gfpgan_version])
        from flows.lipsync_hq import lipsync_hq

        out = lipsync_hq(**params)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Prefect shows the run's logs; the HTTP client's per-request lines are noise
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.command == "models":
        return _models(args)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
