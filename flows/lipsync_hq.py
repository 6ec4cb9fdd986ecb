"""The ``lipsync_hq`` flow: one audio + one video (or portrait) -> one high-quality lip-synced video.

It reads like the diagram: probe -> lipsync -> (split_video -> enhance_chunk x N -> combine_frames,
extract_audio) -> final_mux.
"""
from __future__ import annotations

import os
from typing import Annotated, Literal

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from tasks.audio import extract_audio_task
from tasks.combine import combine_frames_task, final_mux_task
from tasks.enhance import EnhanceOptions, enhance_task
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


@flow(name="wav2lip-hq", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
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
                                          "for reuse (default: the user cache).")] = None,
) -> str:
    """Lip-sync ``video`` to ``audio`` with Wav2Lip, restore the faces with GFPGAN, write ``output``."""
    work = work_dir or default_work_root()
    lip_opts = LipsyncOptions(checkpoint=checkpoint, still_fps=still_fps, pads=tuple(pads), smooth=smooth,
                              on_no_face=on_no_face, batch_size=batch_size, detector=detector,
                              precision=precision, device=device)
    enh_opts = EnhanceOptions(gfpgan_version=gfpgan_version, blend=blend, upscale=upscale,
                              precision=precision, device=device)

    job = probe_task(audio, video, output, still_fps)
    synced = lipsync_task(job, lip_opts, work)
    chunks = split_task(synced, chunk_frames, work)
    track = extract_audio_task(synced, work)
    if enhance:
        chunks = enhance_task.map(chunks, unmapped(synced), unmapped(enh_opts), unmapped(work)).result()
        scale = upscale
    else:
        scale = 1
    silent = combine_frames_task(chunks, synced, scale, crf, preset, work)
    return final_mux_task(silent, track, output, work)
