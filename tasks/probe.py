"""The probe stage: validate a job's inputs before any model work and learn, once, what later stages
need of them (media facts, content hashes)."""
from __future__ import annotations

from pathlib import Path

from core.errors import InputError
from core.media import AudioInfo, VideoInfo, check_frame_size, probe_audio, probe_video
from core.options import RunOptions
from core.products import Job
from core.stage import pipeline_task
from core.storage import (StorageUnreachableError, check_output, local_copy, redact, refuse_credentials_in_url,
                          refuse_special_input)
from core.workarea import check_work_area, content_sha256, default_work_root


CONTAINERS = (".mp4", ".m4v", ".mov", ".mkv")  # hold H.264 video and AAC audio


def check_inputs(audio: str, video: str, output: str, opts: RunOptions = RunOptions()
                 ) -> tuple[AudioInfo, VideoInfo]:
    """Everything that can be known wrong before model work: the inputs, the output location, the work
    area, the device, the weights and the options that depend on the video. Returns the inputs' media
    facts, naming them as given. Storage that cannot be reached is reported here once, not retried."""
    refuse_credentials_in_url(output, "output")
    suffix = Path(output).suffix.lower()
    if suffix and suffix not in CONTAINERS:
        raise InputError(f"output {redact(output)}: a {suffix} file cannot hold the H.264 video and AAC audio; "
                         f"use one of {', '.join(CONTAINERS)}")
    audio_info, video_info = probe_media(audio, video, opts)
    try:
        check_output(output, [audio, video])
    except StorageUnreachableError as exc:
        raise InputError(str(exc)) from exc
    check_regions(opts, video_info)
    check_checkpoints(opts)
    scale = opts.upscale if opts.enhance else 1
    check_frame_size(video_info.width * scale, video_info.height * scale, f"output {redact(output)} (--upscale {scale})")
    return audio_info, video_info


def probe_media(audio: str | None, video: str, opts: RunOptions) -> tuple[AudioInfo | None, VideoInfo]:
    """The inputs can be read and are media (no audio: the video alone); the work area and the device
    are usable."""
    for role, url in (("audio", audio), ("video", video), ("work_dir", opts.work_dir)):
        if url:
            refuse_credentials_in_url(url, role)
    for role, url in (("audio", audio), ("video", video)):
        if url:
            refuse_special_input(url, role)
    check_device(opts)
    audio_info = None
    try:
        check_work_area(opts.work_dir or default_work_root())
        if audio:
            with local_copy(audio, "audio") as a:
                audio_info = probe_audio(a, "audio").model_copy(update={"path": audio})
            if audio_info.duration <= 0:
                raise InputError(f"audio {redact(audio)}: audio stream has zero length")
        with local_copy(video, "video") as v:
            video_info = probe_video(v, still_fps=opts.still_fps)
    except StorageUnreachableError as exc:
        raise InputError(str(exc)) from exc
    return audio_info, video_info.at(video)


def check_regions(opts: RunOptions, video: VideoInfo) -> None:
    """``--box`` and a ``--face X,Y`` point lie inside the frame."""
    from models.face_track import parse_face

    w, h = video.width, video.height
    if opts.box is not None:
        top, bottom, left, right = opts.box
        if bottom > h or right > w:
            raise InputError(f"--box: {top} {bottom} {left} {right} (top bottom left right) reaches outside the "
                             f"{w}x{h} frame")
    choice = parse_face(opts.face)
    if isinstance(choice, tuple) and not (0 <= choice[0] < w and 0 <= choice[1] < h):
        raise InputError(f"--face: the point {opts.face} is outside the {w}x{h} frame")


def check_checkpoints(opts: RunOptions) -> None:
    """The weights the job needs are here (or downloadable), and a user's own checkpoints fit the networks."""
    from models.loading import check_layout
    from models.weights import checkpoint_file

    needed = [("wav2lip", opts.checkpoint, "--checkpoint")]
    if opts.enhance:
        needed.append(("gfpgan", opts.gfpgan, "--gfpgan"))
    for kind, value, option in needed:
        checkpoint_file(value, option)
        check_layout(kind, value, option)


def check_device(opts: RunOptions) -> None:
    """The device exists here, and the precision and engine are ones it runs."""
    import torch

    from models.checkpoint import resolve_device
    from models.engines import resolve_engine
    from models.precision import resolve_precision

    try:
        device = resolve_device(opts.device)
    except RuntimeError:
        raise InputError(f"device {opts.device}: not a device name (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise InputError(f"device {opts.device}: no such CUDA device here ({torch.cuda.device_count()} visible); "
                         f"use auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"device {opts.device}: only cpu and cuda devices are supported")
    try:
        resolve_precision(opts.precision, device)
        resolve_engine(opts.engine, device)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def probe(audio: str, video: str, output: str, opts: RunOptions = RunOptions()) -> Job:
    """:func:`check_inputs` plus the inputs' content hashes (the root of every stage's key).

    Stages read the facts instead of probing again, each on its own local copy of the input.
    """
    audio_info, video_info = check_inputs(audio, video, output, opts)
    try:
        hashes = content_sha256(audio, "audio"), content_sha256(video, "video")
    except StorageUnreachableError as exc:
        raise InputError(str(exc)) from exc
    return Job(audio=audio, video=video, output=output, audio_sha256=hashes[0], video_sha256=hashes[1],
               audio_info=audio_info, video_info=video_info)


@pipeline_task("probe")
def probe_task(audio: str, video: str, output: str, opts: RunOptions) -> Job:
    return probe(audio, video, output, opts)
