"""One output frame, rendered in seconds with the options of a run: source, lip-synced and restored side
by side, so settings can be tuned before a long job.

The same stage functions as a run, on a small slice of the work: detection over the frames around the
chosen one (enough for the smoothing window and the speaker choice; from the first frame with a
numbered ``--face``, whose track ids count from there), Wav2Lip on that frame with its own mel window,
GFPGAN on its faces. No Prefect run, no Dask cluster.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.media import decode_audio, iter_frames, read_still
from core.options import RunOptions
from core.storage import check_output, local_copy, publish_bytes
from flows.report import side_by_side
from models.audio import frame_count, mel_windows, melspectrogram
from models.face_track import build_plan, parse_face, source_index, track_faces
from tasks.detect_faces import DETECT_MAX_SIDE, detect_faces
from tasks.enhance_chunk import aligned_faces, restore_frames
from tasks.lipsync import sync_frames
from tasks.probe import check_regions, check_checkpoints, probe_media

IMAGE_TYPES = (".png", ".jpg", ".jpeg")


def preview(audio: str, video: str, at: float, opts: RunOptions = RunOptions()) -> np.ndarray:
    """The source, lip-synced and (with ``opts.enhance``) restored frame shown at ``at`` seconds of the
    output, side by side."""
    from models.loading import get_restorer, get_wav2lip

    audio_info, info = probe_media(audio, video, opts)
    check_regions(opts, info)
    check_checkpoints(opts)
    with local_copy(audio, "audio") as a:
        wav = decode_audio(a, channels=audio_info.channels)
    n_out = frame_count(len(wav), info.fps)
    i = int(at * float(info.fps))
    if not 0 <= i < n_out:
        raise InputError(f"--at: {at:g} s is outside the output, which lasts {n_out / float(info.fps):.2f} s "
                         f"(the audio's length)")
    window = mel_windows(melspectrogram(wav), n_out, info.fps)
    src = source_index(i, info.n_frames, opts.loop) if not info.is_still else 0

    with local_copy(video, "video") as v:
        local = info.at(v)
        reach = max(1, round(float(info.fps)))  # a second each side: the smoothing window and the speaker
        first = 0 if isinstance(parse_face(opts.face), int) else max(0, src - reach)
        last = min(local.n_frames, src + reach + 1)
        clip = local.model_copy(update={"n_frames": last - first})
        frames = [read_still(v)] if info.is_still else list(itertools.islice(iter_frames(local), first, last))
        dets = detect_faces(clip, opts.detector, DETECT_MAX_SIDE, opts.device, frames=frames)
    tracks = track_faces(dets, float(info.fps), opts.smooth)
    plan = build_plan(tracks, clip, pads=opts.pads, face=opts.face, smooth=opts.smooth, on_no_face="pass",
                      box=opts.box)
    k = src - first
    source = frames[k]
    model, device = get_wav2lip(opts.checkpoint, opts.device, opts.engine, opts.precision)
    synced = sync_frames(model, device, [(source, i, k)], plan, window, opts)[0]
    panels, labels = [source, synced], ["source", f"lip-synced (--mask {opts.mask})"]
    if opts.enhance:
        net, device = get_restorer(opts.gfpgan, opts.device, opts.engine, opts.precision)
        panels.append(restore_frames(net, device, [(synced, aligned_faces(synced, plan, k, opts.restore))], opts)[0])
        labels.append(f"restored (GFPGAN {opts.gfpgan}, x{opts.upscale})")
    return side_by_side(panels, labels)


def check_image_output(output: str, inputs: list[str]) -> None:
    """``output`` can take the preview image: .png or .jpg, writable, not an input."""
    if Path(output).suffix.lower() not in IMAGE_TYPES:
        raise InputError(f"output {output}: the preview is an image; use one of {', '.join(IMAGE_TYPES)}")
    check_output(output, inputs)


def write_image(image: np.ndarray, output: str) -> str:
    """Encode ``image`` and publish it to ``output`` (a path or URL) whole."""
    import cv2

    ok, data = cv2.imencode(Path(output).suffix.lower(), image)
    if not ok:
        raise RuntimeError(f"output {output}: the image could not be encoded")
    return publish_bytes(data.tobytes(), output)
