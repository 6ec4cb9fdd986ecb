"""``wav2lip-hq``: run the pipeline, manage weights.

    wav2lip-hq run --audio speech.mp3 --video talk.mp4 -o out.mp4
    wav2lip-hq models fetch|list|verify [NAME ...]
    wav2lip-hq score --video out.mp4 [--audio speech.wav] [--json] [--plot sync.png]
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from core.options import OptionError, add_cli_arguments, parse_options
from flows import score

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
    score.add_parser(sub)
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
    # the temporary server's telemetry fails offline and logs ERROR lines on successful runs
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from core.errors import InputError
    from core.workarea import default_work_root
    from models.weights import GFPGAN_FILES, require
    from tasks.probe import check_inputs

    try:
        # fail fast, before the flow's local server starts: option values, bad inputs, missing weights
        inputs, opts = parse_options(args)
        check_inputs(inputs.audio, inputs.video, inputs.output, opts)
        require(opts.checkpoint)
        if opts.enhance:
            require(GFPGAN_FILES[opts.gfpgan_version])
    except (InputError, OptionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return run_in_own_session({**inputs.model_dump(), **opts.model_dump()}, opts.work_dir or default_work_root(),
                              inputs.output)


EXIT_INTERRUPTED = 130


def run_in_own_session(params: dict, work_root: str, output: str) -> int:
    """Run the flow in a child process with a session of its own, and stop it at once on Ctrl-C.

    Ctrl-C sends SIGINT to the terminal's whole process group: ffmpeg pipes, the temporary Prefect
    server and Dask workers would each die their own way, the dead pipes would look like transient
    failures and be retried, and the run would retry the stopped server for minutes. In its own
    session the run sees no signal; this process kills it whole, removes what it left (temporary
    files, the work area's unfinished directories, a partial output) and exits with one line.
    """
    import json
    import shutil
    import signal
    import subprocess
    import tempfile

    from core.stage import remove_abandoned
    from core.storage import is_remote

    scratch = tempfile.mkdtemp(prefix="wav2lip-hq-run-")  # every temporary file of the run, Dask workers' too
    child = subprocess.Popen([sys.executable, "-m", "flows.cli", "_flow"], stdin=subprocess.PIPE, text=True,
                             env={**os.environ, "TMPDIR": scratch}, start_new_session=True)

    def stop(signum, _frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child.pid, 0)  # not child.wait(): the interrupted main thread holds its lock
        shutil.rmtree(scratch, ignore_errors=True)
        if not is_remote(work_root):
            for stage_dir in Path(work_root).expanduser().glob("*"):
                remove_abandoned(stage_dir, "*")
        if not is_remote(output):
            dest = Path(output).expanduser()
            dest.with_name(f".{dest.name}.part").unlink(missing_ok=True)
        os.write(2, f"error: interrupted ({signal.Signals(signum).name}): stopped; nothing was written to "
                    f"{output} (the same command resumes)\n".encode())
        os._exit(EXIT_INTERRUPTED)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        child.stdin.write(json.dumps(params))
        child.stdin.close()
        return child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(scratch, ignore_errors=True)


def _flow_child() -> int:
    """The child of :func:`run_in_own_session`: the flow with the (validated) parameters on stdin."""
    import json

    from core.errors import InputError
    from flows.lipsync_hq import lipsync_hq

    try:
        out = lipsync_hq(**json.load(sys.stdin))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    # Prefect shows the run's logs; the HTTP client's per-request lines are noise
    logging.getLogger("httpx").setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["_flow"]:
        return _flow_child()
    args = build_parser().parse_args(argv)
    if args.command == "models":
        return _models(args)
    if args.command == "score":
        return score.run(args)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
