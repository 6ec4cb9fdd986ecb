"""Our pipeline as the flow runs it, stage by stage through the tasks' plain functions (no Prefect),
timed per stage; shared by the benchmarks.

As a program it is the child process of the memory benchmark: it runs the pipeline once on the given
(already looped) clip and prints one JSON line with stage times and peak memory.

    .venv/bin/python -m bench.pipeline --audio a.wav --video v.mp4 --out out.mp4 [--enhance-chunks N]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def count_faces(synced, n_frames: int, restore: str = "all") -> int:
    """Faces the enhancer restores over the first ``n_frames`` output frames of ``synced`` (a
    SyncedVideo; same rule as tasks.enhance_chunk)."""
    from models.face_track import FaceTrack, source_index
    from models.restorer import MIN_EYE_DISTANCE, eye_distance

    track = FaceTrack.load(synced.face_track)
    per_src = np.array([sum(eye_distance(lm) >= MIN_EYE_DISTANCE for lm in track.faces_at(i, restore == "speaker"))
                        for i in range(track.n_frames)])
    return int(sum(per_src[source_index(i, synced.n_source, synced.loop)] for i in range(n_frames)))


@contextmanager
def instrument(models: dict):
    """Accumulate time spent inside each model's forward (``models``: name -> nn.Module, via hooks),
    inside GFPGAN and Wav2Lip compiled for OpenVINO (counted as ``gfpgan`` and ``wav2lip``) and inside
    CenterFace detection (the classes' ``__call__`` wrapped) in this process; yields
    {"<name>_s": seconds, "<name>_calls": n}. Product code is not changed, only observed."""
    from models.engines import OpenVINOGFPGAN, OpenVINOWav2Lip
    from models.face_detection import CenterFaceDetector

    acc: dict = defaultdict(float)
    handles = []
    for name, m in models.items():
        def pre(_m, _a, name=name):
            acc[f"_{name}_t0"] = time.perf_counter()

        def post(_m, _a, _o, name=name):
            acc[f"{name}_s"] += time.perf_counter() - acc[f"_{name}_t0"]
            acc[f"{name}_calls"] += 1

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]

    def timed(original, key: str):
        def call(self, *args):
            t = time.perf_counter()
            try:
                return original(self, *args)
            finally:
                acc[f"{key}_s"] += time.perf_counter() - t
                acc[f"{key}_calls"] += 1
        return call

    wrapped = {CenterFaceDetector: "detect", OpenVINOGFPGAN: "gfpgan", OpenVINOWav2Lip: "wav2lip"}
    own = {cls: cls.__dict__.get("__call__") for cls in wrapped}  # None: inherited
    for cls, key in wrapped.items():
        cls.__call__ = timed(cls.__call__, key)
    try:
        yield acc
    finally:
        for cls, original in own.items():
            if original is None:
                del cls.__call__
            else:
                cls.__call__ = original
        for h in handles:
            h.remove()
        for k in [k for k in acc if k.startswith("_")]:
            del acc[k]


def loaded_models(gfpgan: bool = True) -> dict:
    """The networks as the stages get them (models.loading caches one per process)."""
    from models.loading import get_model

    models = {"wav2lip": get_model("wav2lip", "wav2lip_gan.pth", "cpu")[0]}
    if gfpgan:
        models["gfpgan"] = get_model("gfpgan", "GFPGANv1.4.pth", "cpu")[0]
    return models


def run_ours(audio: str, video: str, out: str | Path, tmp: str | Path, precision: str = "fp32",
             chunk_frames: int | str = "auto", enhance_chunks: int = -1, crf: int = 18, preset: str = "medium",
             batch_size: int = 0, **options) -> dict:
    """The flow's stages in its order, each through its task's plain function (no Prefect), in a new
    work area under ``tmp``; the final video is published to ``out``.

    ``enhance_chunks``: -1 enhances every chunk, N the first N only (the others go to combine_frames
    as lip-synced), 0 none. ``options``: other :class:`RunOptions` fields (``upscale``, ...). Chunks are
    enhanced one after another, as by one worker (``auto`` sizes them so). Returns {"times": {stage: s}, "frames", "faces", "size", ...}.
    """
    from core.options import RunOptions
    from tasks.combine_frames import combine_frames_task
    from tasks.detect_faces import detect_faces_task
    from tasks.enhance_chunk import enhance_chunk_task
    from tasks.extract_audio import extract_audio_task
    from tasks.final_mux import final_mux_task
    from tasks.lipsync import lipsync_task
    from tasks.probe import probe_task
    from tasks.split_video import split_video_task

    opts = RunOptions(precision=precision, chunk_frames=chunk_frames, batch_size=batch_size, crf=crf,
                      preset=preset, enhance=enhance_chunks != 0, device="cpu", dask_workers=0, **options)
    work, refresh = str(Path(tmp) / "work"), False
    times: dict[str, float] = {}
    hwm: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any], *args: Any) -> Any:
        t = time.perf_counter()
        result = fn(*args)
        times[name] = time.perf_counter() - t
        hwm[name] = peak_rss_mib()["python_mib"]
        if getattr(result, "reused", False):  # a finished output found in the work area: nothing was timed
            raise RuntimeError(f"{name}: reused a finished output in {work}; give run_ours a new tmp")
        return result

    job = timed("probe", probe_task.fn, audio, video, str(out), opts)
    detections = timed("detect_faces", detect_faces_task.fn, job, opts, work, refresh)
    synced = timed("lipsync", lipsync_task.fn, job, detections, opts, work, refresh)
    chunks = timed("split_video", split_video_task.fn, synced, opts, work, refresh).chunks
    audio_track = timed("extract_audio", extract_audio_task.fn, synced, work, refresh)
    n_enh = len(chunks) if enhance_chunks < 0 else min(enhance_chunks, len(chunks))
    frames = timed("enhance_chunk", lambda: [enhance_chunk_task.fn(c, synced, opts, work, refresh)
                                             if c.index < n_enh else c for c in chunks])
    silent = timed("combine_frames", combine_frames_task.fn, frames, synced, opts, work, refresh)
    timed("final_mux", final_mux_task.fn, silent, audio_track, job, work, refresh)
    enhanced_frames = sum(c.n_frames for c in chunks[:n_enh])
    return {"times": times, "total": sum(times.values()), "frames": synced.n_frames,
            "enhanced_frames": enhanced_frames,
            "faces": count_faces(synced, enhanced_frames, opts.restore),
            "size": [synced.width, synced.height], "precision": precision, "chunks": len(chunks),
            "enhanced_chunks": n_enh, "peak_after_stage_mib": hwm}


def peak_rss_mib() -> dict:
    """This process's peak resident set (VmHWM, exact), MiB."""
    hwm = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return {"python_mib": hwm}


class TreeSampler:
    """Peak of the summed RSS of this process and all its descendants (the ffmpeg pipes), sampled
    every ``interval`` s in a thread. (getrusage's RUSAGE_CHILDREN is no use here: a forked ffmpeg
    starts with the parent's RSS on its books; so does a child between fork and exec, which is skipped.)"""

    def __init__(self, interval: float = 0.1) -> None:
        import threading

        self.interval, self.peak, self.ffmpeg_peak = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        name = me.name()
        while not self._stop.is_set():
            total = kids = 0
            try:
                total = me.memory_info().rss
                for c in me.children(recursive=True):
                    try:
                        if c.name() != name:  # a fork not yet exec'd still shows the parent's pages
                            kids += c.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            self.peak = max(self.peak, total + kids)
            self.ffmpeg_peak = max(self.ffmpeg_peak, kids)
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--audio", required=True)
    p.add_argument("--video", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--chunk-frames", default="auto", help="a number, or auto")
    p.add_argument("--enhance-chunks", type=int, default=-1)
    p.add_argument("--preset", default="medium")
    p.add_argument("--instrument", action="store_true", help="also time model forwards and detection "
                   "(loads both models before the run)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipe-") as tmp, TreeSampler() as tree:
        if args.instrument:
            with instrument(loaded_models(gfpgan=args.enhance_chunks != 0)) as acc:
                res = run_ours(args.audio, args.video, args.out, tmp, args.precision, args.chunk_frames,
                               enhance_chunks=args.enhance_chunks, preset=args.preset)
            res["inside"] = dict(acc)
        else:
            res = run_ours(args.audio, args.video, args.out, tmp, args.precision, args.chunk_frames,
                           enhance_chunks=args.enhance_chunks, preset=args.preset)
    res["peak"] = {**peak_rss_mib(), "tree_mib": tree.peak / 2**20, "ffmpeg_mib": tree.ffmpeg_peak / 2**20}
    print("BENCH_RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
