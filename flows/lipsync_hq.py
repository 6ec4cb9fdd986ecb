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
from tasks.lipsync import LipsyncOptions, lipsync_task
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
    audio: Annotated[str, Field(title="Audio", description="Speech to lip-sync to: a path or URL "
                                "(wav, mp3, m4a, aac, flac, or a video whose audio track is used).")],
    video: Annotated[str, Field(title="Video or portrait", description="Talking-face video or a still "
                                "portrait image (jpg/png): a path or URL.")],
    output: Annotated[str, Field(title="Output", description="Where the final video is written (path or "
                                 "URL, e.g. out.mp4). Written only when complete.")],
    checkpoint: Annotated[Literal["wav2lip_gan.pth", "wav2lip.pth"], Field(
        title="Wav2Lip weights", description="wav2lip_gan.pth: sharper (GAN); wav2lip.pth: sync expert only."
    )] = "wav2lip_gan.pth",
    gfpgan_version: Annotated[Literal["1.4", "1.3"], Field(
        title="GFPGAN version", description="Face restorer weights: GFPGANv1.4 (default) or v1.3.")] = "1.4",
    blend: Annotated[float, Field(ge=0.0, le=1.0, title="Restoration strength", description=
                                  "1 = restored face only, 0 = the lip-synced face unchanged.")] = 1.0,
    upscale: Annotated[Literal[1, 2], Field(title="Upscale", description="Output size factor; the "
                                            "background is upscaled with Lanczos.")] = 1,
    enhance: Annotated[bool, Field(title="Enhance faces", description="Run GFPGAN on the faces; off "
                                   "gives the plain Wav2Lip result re-encoded.")] = True,
    still_fps: Annotated[float, Field(gt=0, le=120, title="Frame rate for a still portrait",
                                      description="Frames per second when the video is one image.")] = 25.0,
    on_no_face: Annotated[Literal["pass", "fail"], Field(
        title="Frames without a face", description="pass: keep such frames unchanged; fail: stop with "
        "an error naming the first one.")] = "pass",
    pads: Annotated[tuple[int, int, int, int], Field(
        title="Face box padding", description="Pixels added to the detected box: top, bottom, left, "
        "right (bottom 10 includes the chin).")] = (0, 10, 0, 0),
    smooth: Annotated[bool, Field(title="Smooth face boxes", description="Average boxes over 5 frames "
                                  "(steadier mouth region).")] = True,
    detector: Annotated[Literal["centerface", "s3fd"], Field(
        title="Face detector", description="centerface (ships with the package) or s3fd (the reference's; "
        "needs s3fd-619a316812.pth).")] = "centerface",
    crf: Annotated[int, Field(ge=0, le=51, title="H.264 quality (CRF)", description="Lower is better "
                              "quality and bigger files; 18 is visually lossless.")] = 18,
    preset: Annotated[Literal["ultrafast", "veryfast", "fast", "medium", "slow"], Field(
        title="H.264 preset", description="Encoder speed/size trade-off.")] = "medium",
    chunk_frames: Annotated[int, Field(ge=1, title="Frames per chunk", description="Enhancement works "
                                       "on chunks of this many frames, in parallel where workers allow.")] = 50,
    batch_size: Annotated[int, Field(ge=1, le=512, title="Wav2Lip batch", description="Frames per "
                                     "generator call.")] = 32,
    precision: Annotated[Literal["fp32", "bf16", "fp16"], Field(
        title="Precision", description="fp32 (exact), or bf16/fp16 autocast (faster).")] = "fp32",
    device: Annotated[str, Field(title="Device", description="auto (CUDA when present), cpu, cuda, "
                                 "cuda:1, ...")] = "auto",
    work_dir: Annotated[str | None, Field(title="Work area", description="Where stage outputs are kept "
                                          "for reuse: a path or URL such as s3://bucket/work (default: "
                                          "$WAV2LIP_HQ_WORK_DIR or the user cache).")] = None,
    refresh: Annotated[bool, Field(title="Ignore cached stages", description="Recompute every stage even "
                                   "when its output is already in the work area.")] = False,
    dask_address: Annotated[str | None, Field(title="Dask scheduler", description="tcp://host:8786 of an "
                                              "existing cluster (default: $WAV2LIP_HQ_DASK_ADDRESS, else a "
                                              "local cluster sized to the machine).")] = None,
    dask_workers: Annotated[int | None, Field(ge=0, title="Local Dask workers", description="Workers of "
                                              "the local cluster (default: one per core or GPU; 0: no Dask)."
                                              )] = None,
) -> str:
    """Lip-sync ``video`` to ``audio`` with Wav2Lip, restore the faces with GFPGAN, write ``output``."""
    work = work_dir or default_work_root()
    lip_opts = LipsyncOptions(checkpoint=checkpoint, still_fps=still_fps, pads=tuple(pads), smooth=smooth,
                              on_no_face=on_no_face, batch_size=batch_size, detector=detector,
                              precision=precision, device=device)
    enh_opts = EnhanceOptions(gfpgan_version=gfpgan_version, blend=blend, upscale=upscale,
                              precision=precision, device=device)

    job = probe_task(audio, video, output, still_fps)
    synced = lipsync_task(job, lip_opts, work, refresh)
    chunks = split_task(synced, chunk_frames, work, refresh)
    track = extract_audio_task(synced, work, refresh)
    stages = {"lipsync": synced, "split_video": chunks, "extract_audio": track}
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
