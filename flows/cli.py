"""``wav2lip-hq``: run the pipeline, manage weights.

    wav2lip-hq run --audio speech.mp3 --video talk.mp4 -o out.mp4
    wav2lip-hq preview --audio speech.mp3 --video talk.mp4 --at 3.5 -o preview.png
    wav2lip-hq faces --video talk.mp4 -o faces.json
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

from core.options import PARAMETERS, OptionError, add_cli_arguments, parse_options
from flows import score

EXIT_BAD_INPUT = 2


# options that only a run uses (preview renders one frame in its own process; nothing is cached)
FLOW_ONLY = ("crf", "preset", "chunk_frames", "work_dir", "refresh", "dask_address", "dask_workers")
FACES_OPTIONS = ("detector", "face", "smooth", "still_fps", "device")


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``error: <option>: <problem>`` (exit 2), like every other
    refusal; ``-h`` still shows the usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"error: {message.removeprefix('argument ')}; see {self.prog} -h\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="wav2lip-hq", description="Audio + talking-face video (or portrait) "
                                "-> high-quality lip-synced video (Wav2Lip, then GFPGAN on the faces).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    r = sub.add_parser("run", help="lip-sync a video (or portrait) to an audio track",
                       description="Runs the lipsync_hq Prefect flow locally (no server needed). Stage "
                       "outputs are kept in a content-keyed work area: running the same job again reuses "
                       "them, and an interrupted job resumes where it stopped.")
    add_cli_arguments(r)

    pv = sub.add_parser("preview", help="render one output frame (source, lip-synced, restored) in seconds",
                        description="Takes the options of run and renders the output frame at --at seconds "
                        "beside its source and lip-synced versions, to tune settings before a long run. No "
                        "Prefect run, no Dask cluster, nothing cached.")
    pv.add_argument("--at", type=float, required=True, help="time in the output, in seconds")
    add_cli_arguments(pv, [n for n in PARAMETERS if n not in FLOW_ONLY],
                      help={"output": "Where the preview image is written: a .png or .jpg path or URL."})

    fc = sub.add_parser("faces", help="write the face tracks of a video as JSON",
                        description="Per frame: each face's track id, score, box and 5 landmarks, raw and "
                        "smoothed, and the speaker --face chooses; the shot cuts; frames without a face.")
    add_cli_arguments(fc, ["video", "output", *FACES_OPTIONS],
                      help={"output": "Where the face tracks are written as JSON: a path or URL."})

    m = sub.add_parser("models", help="list, fetch or verify the weight files",
                       description="Weight files live in $WAV2LIP_HQ_MODELS_DIR (default: the user cache).")
    msub = m.add_subparsers(dest="action", required=True, parser_class=Parser)
    f = msub.add_parser("fetch", help="download weights (default set: wav2lip_gan.pth, GFPGANv1.4.pth)")
    f.add_argument("names", nargs="*", help="file names; 'all' for every known file")
    f.add_argument("--force", action="store_true", help="download again even when present and valid")
    msub.add_parser("list", help="show known weight files, where they go and whether they are present")
    v = msub.add_parser("verify", help="check present files against the manifest (size, SHA-256); files not "
                        "in it are reported as custom")
    v.add_argument("names", nargs="*", help="file names or paths (default: the ones present)")
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
        for name in weights.custom_files():
            print(f"  {name:22s} custom   downloaded from a URL given to --checkpoint or --gfpgan")
        return 0
    names = args.names or (list(weights.DEFAULT_SET) if args.action == "fetch" else
                           [n for n in weights.MANIFEST if weights.weight_path(n).is_file()] + weights.custom_files())
    if names == ["all"]:
        names = list(weights.MANIFEST)
    if not names:  # verify with nothing present: nothing was verified, which is not a success
        print(f"error: {weights.models_dir()}: no weight files to verify; fetch them with: wav2lip-hq models fetch",
              file=sys.stderr)
        return 1
    # verify also takes a user's own checkpoints (reported as custom); fetch knows only the manifest
    unknown = [n for n in names if n not in weights.MANIFEST and args.action == "fetch"]
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
    from tasks.probe import check_inputs

    try:
        # fail fast, before the flow's local server starts: option values, bad inputs, missing weights
        inputs, opts = parse_options(args)
        check_inputs(inputs.audio, inputs.video, inputs.output, opts)
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


def _preview(args: argparse.Namespace) -> int:
    from core.errors import InputError
    from flows.preview import check_image_output, preview, write_image

    try:
        inputs, opts = parse_options(args)
        check_image_output(inputs.output, [inputs.audio, inputs.video])
        image = preview(inputs.audio, inputs.video, args.at, opts)
        print(write_image(image, inputs.output))
    except (InputError, OptionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _faces(args: argparse.Namespace) -> int:
    from core.errors import InputError
    from flows.faces import faces

    try:
        _, opts = parse_options(args)
        data = faces(args.video, args.output, opts)
    except (InputError, OptionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{args.output}: {data['faces']} faces in {len(data['tracks'])} tracks over {data['n_frames']} frames; "
          f"speaker track(s) {', '.join(map(str, data['speakers'])) or 'none'}; {data['frames_without_face']} frames "
          f"without a face; {len(data['cuts'])} shot cuts")
    return 0


def main(argv: list[str] | None = None) -> int:
    # Prefect shows the run's logs; the HTTP client's per-request lines are noise
    logging.getLogger("httpx").setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["_flow"]:
        return _flow_child()
    args = build_parser().parse_args(argv)
    commands = {"models": _models, "preview": _preview, "faces": _faces, "score": score.run, "run": _run}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
