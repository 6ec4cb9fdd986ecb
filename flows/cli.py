"""``wav2lip-hq``: run the pipeline, manage weights.

    wav2lip-hq run --audio speech.mp3 --video talk.mp4 -o out.mp4
    wav2lip-hq models fetch|list|verify [NAME ...]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from core.options import OptionError, add_cli_arguments, parse_options

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wav2lip-hq", description="Audio + talking-face video (or portrait) "
                                "-> high-quality lip-synced video (Wav2Lip, then GFPGAN on the faces).")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="lip-sync a video (or portrait) to an audio track",
                       description="Runs the lipsync_hq Prefect flow locally (no server needed). Stage "
                       "outputs are kept in a content-keyed work area: running the same job again reuses "
                       "them, and an interrupted job resumes where it stopped.")
    add_cli_arguments(r)

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
    if not names:  # verify with nothing present: nothing was verified, which is not a success
        print(f"error: {weights.models_dir()}: no weight files to verify; fetch them with: wav2lip-hq models fetch",
              file=sys.stderr)
        return 1
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
    from tasks.probe import check_inputs

    try:
        # fail fast, before the flow's local server starts: option values, bad inputs, missing weights
        inputs, opts = parse_options(args)
        check_inputs(inputs.audio, inputs.video, inputs.output, opts)
        require(opts.checkpoint)
        if opts.enhance:
            require(GFPGAN_FILES[opts.gfpgan_version])
        from flows.lipsync_hq import lipsync_hq

        out = lipsync_hq(**inputs.model_dump(), **opts.model_dump())
    except (InputError, OptionError) as exc:
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
