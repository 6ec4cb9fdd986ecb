"""The ``lipsync_hq`` flow: one audio + one video (or portrait) -> one high-quality lip-synced video.

It reads like the diagram: probe -> lipsync -> (split_video -> enhance_chunk x N -> combine_frames,
extract_audio) -> final_mux. The single-stream stages run in the flow's process (all its cores, or
its GPU); enhancement is mapped over chunks on a Dask cluster (see flows/runners.py).
"""
from __future__ import annotations

import os
from typing import Annotated, Literal

from prefect import flow
from prefect.futures import as_completed
from pydantic import Field

from flows import report
from flows.runners import enhancement_runner

from tasks.audio import extract_audio_task
from tasks.combine import combine_frames_task, final_mux_task
from tasks.enhance import EnhanceOptions, enhance_task, is_finished
from tasks.lipsync import LipsyncOptions, detect_faces_task, lipsync_task
from tasks.probe import probe_task
from tasks.split import split_task


def default_work_root() -> str:
    """``WAV2LIP_HQ_WORK_DIR`` or ``<user cache>/wav2lip-hq/work``."""
    env = os.environ.get("WAV2LIP_HQ_WORK_DIR")
    if env:
        return env
    from platformdirs import user_cache_dir

    return os.path.join(user_cache_dir("wav2lip-hq"), "work")


@flow(name="wav2lip-hq", log_prints=True)
def lipsync_hq(
    audio: str,
    video: str,
    output: str,
    checkpoint: Literal["wav2lip_gan.pth", "wav2lip.pth"] = "wav2lip_gan.pth",
    gfpgan_version: Literal["1.4", "1.3"] = "1.4",
    blend: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0,
    upscale: Literal[1, 2] = 1,
    enhance: bool = True,
    still_fps: Annotated[float, Field(gt=0, le=120)] = 25.0,
    on_no_face: Literal["pass", "fail"] = "pass",
    pads: tuple[int, int, int, int] = (0, 10, 0, 0),
    smooth: bool = True,
    detector: Literal["centerface", "s3fd"] = "centerface",
    crf: Annotated[int, Field(ge=0, le=51)] = 18,
    preset: Literal["ultrafast", "veryfast", "fast", "medium", "slow"] = "medium",
    chunk_frames: Annotated[int, Field(ge=1)] = 50,
    batch_size: Annotated[int, Field(ge=0, le=512)] = 0,
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto",
    device: str = "auto",
    work_dir: str | None = None,
    refresh: bool = False,
    dask_address: str | None = None,
    dask_workers: Annotated[int | None, Field(ge=0)] = None,
) -> str:
    """Lip-sync a talking-face video (or portrait) to speech with Wav2Lip, restore the faces with
    GFPGAN, and write the result.

    Args:
        audio: Speech to lip-sync to: a path or URL (wav, mp3, m4a, aac, flac, or a video whose audio
            track is used).
        video: Talking-face video, or a still portrait image (jpg/png): a path or URL.
        output: Where the final video is written (path or URL, e.g. s3://bucket/out.mp4); it appears
            only when complete.
        checkpoint: Wav2Lip weights: wav2lip_gan.pth (sharper, GAN-trained) or wav2lip.pth (sync
            expert only).
        gfpgan_version: Face restorer weights: GFPGAN v1.4 (default) or v1.3.
        blend: Restoration strength: 1 = restored face only, 0 = the lip-synced face unchanged.
        upscale: Output size factor (1 or 2); the background is upscaled with Lanczos.
        enhance: Run GFPGAN on the faces; off gives the plain Wav2Lip result, re-encoded.
        still_fps: Frames per second when the video is a single image.
        on_no_face: Frames without a face: pass keeps them unchanged, fail stops with an error naming
            the first one.
        pads: Pixels added to the detected face box: top, bottom, left, right (bottom 10 keeps the chin).
        smooth: Average face boxes over 5 frames (a steadier mouth region).
        detector: Face detector: centerface (ships with the package) or s3fd (the reference's; needs
            s3fd-619a316812.pth).
        crf: H.264 quality of the final encode, 0-51: lower is better and bigger; 18 looks lossless.
        preset: H.264 encoder speed/size trade-off.
        chunk_frames: Frames per enhancement chunk; chunks run in parallel on the Dask workers.
        batch_size: Frames per Wav2Lip generator call; 0 = automatic (16 on CPU, 128 on CUDA).
        precision: auto (bf16 on CPUs with bf16 instructions, fp16 on CUDA, else fp32), fp32 (exact),
            or bf16 / fp16 autocast; restored faces stay within 4/255 of fp32 (99.9% of pixels within 2).
        device: auto (CUDA when present), cpu, cuda, cuda:1, ...
        work_dir: Where stage outputs are kept for reuse: a path or URL such as s3://bucket/work
            (default: $WAV2LIP_HQ_WORK_DIR or the user cache).
        refresh: Recompute every stage even when its output is already in the work area.
        dask_address: tcp://host:8786 of an existing Dask scheduler (default: $WAV2LIP_HQ_DASK_ADDRESS,
            else a local cluster sized to the machine).
        dask_workers: Workers of the local Dask cluster (default: one per core or GPU; 0: no Dask).
    """
    work = work_dir or default_work_root()
    lip_opts = LipsyncOptions(checkpoint=checkpoint, still_fps=still_fps, pads=tuple(pads), smooth=smooth,
                              on_no_face=on_no_face, batch_size=batch_size, detector=detector,
                              precision=precision, device=device)
    enh_opts = EnhanceOptions(gfpgan_version=gfpgan_version, blend=blend, upscale=upscale,
                              precision=precision, device=device)

    job = probe_task(audio, video, output, still_fps)
    faces = detect_faces_task(job, lip_opts, work, refresh)
    synced = lipsync_task(job, faces, lip_opts, work, refresh)
    chunks = split_task(synced, chunk_frames, work, refresh)
    track = extract_audio_task(synced, work, refresh)
    stages = {"detect_faces": faces, "lipsync": synced, "split_video": chunks, "extract_audio": track}
    if enhance:
        chunks = enhance_chunks(chunks, synced, enh_opts, work, refresh, dask_address, dask_workers)
        stages["enhance_chunk"] = chunks
    silent = combine_frames_task(chunks, synced, upscale if enhance else 1, crf, preset, work, refresh)
    final = final_mux_task(silent, track, output, work, refresh)
    stages.update(combine_frames=silent, final_mux=final)

    report.stage_table(stages)
    report.output_link(final["output"])
    frames = report._safe(report.middle_frames, video, final["video"])
    if frames:
        report.before_after(frames[0], frames[1], f"frame at {frames[2]:.2f} s")
    return final["output"]


def enhance_chunks(chunks: list[dict], synced: dict, opts: EnhanceOptions, work: str, refresh: bool,
                   dask_address: str | None, dask_workers: int | None) -> list[dict]:
    """Map enhancement over the chunks; the progress artifact moves as they finish.

    Chunks already finished in the work area resolve here at once; only the others go to the
    cluster, which is not even started when there are none (a finished job costs no cluster).
    """
    import dask

    progress = report.EnhanceProgress(len(chunks))
    results: dict[int, dict] = {}
    pending = []
    for c in chunks:
        if not refresh and is_finished(c, opts, work):
            results[c["index"]] = enhance_task(c, synced, opts, work, refresh)
            progress.step()
        else:
            pending.append(c)
    if pending:
        runner, needs_gpu = enhancement_runner(dask_address, dask_workers)
        with runner:
            with dask.annotate(**({"resources": {"GPU": 1}} if needs_gpu else {})):
                futures = {runner.submit(enhance_task, {"chunk": c, "synced": synced, "opts": opts,
                                                        "work_root": work, "refresh": refresh}): c["index"]
                           for c in pending}
            for future in as_completed(list(futures)):
                results[futures[future]] = future.result()
                progress.step()
    return [results[c["index"]] for c in chunks]
