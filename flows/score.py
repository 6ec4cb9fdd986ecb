"""``wav2lip-hq score``: is a video in sync? SyncNet's offset, LSE-D and LSE-C, and a plot of where
sync holds and where it drops (the framewise confidence over time).

    wav2lip-hq score --video out.mp4 [--audio speech.wav] [--json] [--plot sync.png]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from core.products import SyncScores

PLOT_SUFFIXES = (".png", ".jpg", ".jpeg")


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("score", help="measure lip sync: SyncNet's offset, LSE-D and LSE-C of a video",
                       description="Scores every face track of a video (of 7 frames or more) against its audio "
                       "(or another track) as Wav2Lip's evaluation does, and reports the one in best sync. Needs "
                       "syncnet_v2.model (wav2lip-hq models fetch syncnet_v2.model).")
    s.add_argument("--video", required=True, help="the video to score: a path or URL")
    s.add_argument("--audio", help="speech to score the lips against (default: the video's own audio track)")
    s.add_argument("--json", action="store_true", help="print the scores and the framewise confidence as JSON")
    s.add_argument("--plot", help="write the framewise confidence over time to this image (.png or .jpg)")
    s.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ... "
                                                    "(default: auto)")


def run(args: argparse.Namespace) -> int:
    """The ``score`` command: bad input, a missing weight file or an unusable plot path exit 2 before
    any decoding; nothing is written unless the scores are complete."""
    from core.errors import InputError
    from core.options import RunOptions
    from core.storage import (
        local_copy,
        redact,
        refuse_credentials_in_url,
        refuse_special_input,
    )
    from flows.cli import EXIT_BAD_INPUT
    from models.weights import require
    from tasks.probe import check_device
    from tasks.score_sync import SYNCNET_FILE, score_video

    try:
        for role, url in (("video", args.video), ("audio", args.audio)):
            if url:
                refuse_credentials_in_url(url, role)
                refuse_special_input(url, role)
        if args.plot:
            check_plot_path(args.plot, [u for u in (args.video, args.audio) if u])
        check_device(RunOptions(device=args.device))
        require(SYNCNET_FILE)
        with local_copy(args.video, "video") as video:
            if args.audio:
                with local_copy(args.audio, "audio") as audio:
                    scores = score_video(video, audio, device=args.device)
            else:
                scores = score_video(video, device=args.device)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.plot:
        write_plot(scores, args.plot)
    shown = {"video": redact(args.video), "audio": redact(args.audio) if args.audio else None}
    print(json.dumps({**shown, **scores_json(scores)}, indent=1) if args.json else describe(scores, shown))
    return 0


def window_seconds(scores: SyncScores, index: int) -> float:
    """Time of the middle of lip window ``index`` of ``scores``."""
    from models.syncnet import FPS, WINDOW

    return (scores.first_frame + index + WINDOW / 2) / FPS


def scores_json(scores: SyncScores) -> dict:
    """The scores as the JSON of ``score --json``: offset, LSE-D, LSE-C, and the framewise confidence
    with the time of its first window, of the track in best sync; and every scored track's scores."""
    return {**scores.summary(), "first_window_seconds": window_seconds(scores, 0),
            "framewise_confidence": list(scores.framewise), "face_tracks": [t.model_dump() for t in scores.tracks]}


def describe(scores: SyncScores, shown: dict) -> str:
    """Lines for a person: the numbers, what they mean, and the second where sync is weakest."""
    from models.syncnet import FPS

    weakest = int(np.argmin(scores.framewise))
    faces = ([f"faces:  {len(scores.tracks)} face tracks scored; below, the one in best sync (from "
              f"{scores.first_frame / FPS:.2f} s)"] if len(scores.tracks) > 1 else [])
    return "\n".join([
        f"video:  {shown['video']} (audio: {shown['audio'] or 'its own track'})",
        *faces,
        (f"offset: {scores.offset:+d} frames ({1000 * scores.offset / FPS:+.0f} ms; 0 = in sync, "
         f"negative = audio late)"),
        f"LSE-D:  {scores.lse_d:.3f} (distance, lower is better; Wav2Lip on LRS2: about 6.4)",
        f"LSE-C:  {scores.lse_c:.3f} (confidence, higher is better; Wav2Lip on LRS2: about 7.8)",
        f"weakest: {window_seconds(scores, weakest):.2f} s (framewise confidence {scores.framewise[weakest]:.2f})",
    ])


# ------------------------------------------------------------------------------------------ the plot
def check_plot_path(path: str, inputs: list[str]) -> None:
    """A plot path that can be written: a known image type, an existing writable folder, not a device,
    not one of the ``inputs``."""
    from core.errors import InputError
    from core.storage import check_output

    if "://" in path:
        raise InputError(f"plot {path}: give a local file path")
    if Path(path).suffix.lower() not in PLOT_SUFFIXES:
        raise InputError(f"plot {path}: give a file name ending in {' or '.join(PLOT_SUFFIXES)}")
    check_output(path, inputs, role="plot")


def write_plot(scores: SyncScores, path: str) -> Path:
    """Encode :func:`confidence_plot` and write it to ``path`` whole."""
    from core.storage import publish_bytes

    dest = Path(path).expanduser()
    ok, data = cv2.imencode(dest.suffix.lower(), confidence_plot(scores))
    if not ok:
        raise RuntimeError(f"could not encode the plot as {dest.suffix}")
    return Path(publish_bytes(data.tobytes(), str(dest)))


def plot_png(scores: SyncScores) -> bytes:
    ok, data = cv2.imencode(".png", confidence_plot(scores))
    if not ok:
        raise RuntimeError("could not encode the plot as PNG")
    return data.tobytes()


_INK, _GRID, _CURVE, _LOW = (60, 60, 60), (225, 225, 225), (170, 90, 20), (40, 40, 220)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _step(span: float, most: int) -> float:
    """A round tick step giving at most ``most`` ticks over ``span``."""
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600):
        if span / step <= most:
            return step
    return span / most


def confidence_plot(scores: SyncScores, width: int = 720, height: int = 220) -> np.ndarray:
    """The framewise confidence over time as a BGR image: positive where the lips match the audio at
    the clip's offset better than at a typical wrong one; the stretches at or below zero (red) are
    where sync drops. The dashed line is the clip's LSE-C."""
    conf = np.asarray(scores.framewise, np.float64)
    t = np.array([window_seconds(scores, i) for i in range(len(conf))])
    t0, t1 = (t[0], t[-1]) if len(t) > 1 else (t[0] - 0.5, t[0] + 0.5)
    lo, hi = min(0.0, conf.min()), max(1.0, conf.max(), scores.lse_c)
    lo, hi = lo - 0.08 * (hi - lo), hi + 0.08 * (hi - lo)
    left, right, top, bottom = 44, 12, 26, 30
    img = np.full((height, width, 3), 255, np.uint8)

    def px(x: float, y: float) -> tuple[int, int]:
        return (round(left + (x - t0) / (t1 - t0) * (width - left - right)),
                round(top + (hi - y) / (hi - lo) * (height - top - bottom)))

    ystep = _step(hi - lo, 5)
    for y in np.arange(np.ceil(lo / ystep) * ystep, hi, ystep):
        cv2.line(img, px(t0, y), px(t1, y), _GRID, 1)
        cv2.putText(img, f"{y:g}", (4, px(t0, y)[1] + 4), _FONT, 0.35, _INK, 1, cv2.LINE_AA)
    xstep = _step(t1 - t0, 10)
    for x in np.arange(np.ceil(t0 / xstep) * xstep, t1 + 1e-9, xstep):
        cv2.line(img, px(x, lo), (px(x, lo)[0], px(x, lo)[1] + 4), _INK, 1)
        cv2.putText(img, f"{x:g}s", (px(x, lo)[0] - 10, height - 10), _FONT, 0.35, _INK, 1, cv2.LINE_AA)
    cv2.line(img, px(t0, 0.0), px(t1, 0.0), _INK, 1)
    for x in np.arange(t0, t1, (t1 - t0) / 60):
        cv2.line(img, px(x, scores.lse_c), px(min(t1, x + (t1 - t0) / 120), scores.lse_c), _CURVE, 1)
    points = [px(x, y) for x, y in zip(t, conf)]
    for (a, b), y in zip(zip(points, points[1:] or points), conf):
        cv2.line(img, a, b, _LOW if y <= 0 else _CURVE, 2, cv2.LINE_AA)
    cv2.putText(img, f"sync confidence per frame   offset {scores.offset:+d}   LSE-D {scores.lse_d:.2f}   "
                     f"LSE-C {scores.lse_c:.2f} (dashed)", (left, 17), _FONT, 0.42, _INK, 1, cv2.LINE_AA)
    return img
