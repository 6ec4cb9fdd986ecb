"""``wav2lip-hq faces``: the face tracks of a video as JSON, per frame raw and smoothed, with the
speaker that ``--face`` chooses: the data behind the lip-sync box and the restored faces."""
from __future__ import annotations

import json
from pathlib import Path

from core.errors import InputError
from core.options import RunOptions
from core.storage import check_output, local_copy, publish_bytes
from models.face_track import choose_speaker, track_faces, tracks_json
from tasks.detect_faces import DETECT_MAX_SIDE, detect_faces
from tasks.probe import check_regions, probe_media


def faces(video: str, output: str, opts: RunOptions = RunOptions()) -> dict:
    """Detect, track and smooth the faces of ``video`` as a run does; write the JSON to ``output``."""
    if Path(output).suffix.lower() != ".json":
        raise InputError(f"output {output}: the face tracks are JSON; give a .json file name")
    _, info = probe_media(None, video, opts)
    check_regions(opts, info)
    check_output(output, [video])
    with local_copy(video, "video") as v:
        dets = detect_faces(info.at(v), opts.detector, DETECT_MAX_SIDE, opts.device)
    tracks = track_faces(dets, float(info.fps), opts.smooth)
    data = tracks_json(tracks, choose_speaker(tracks, opts.face, info.width, info.height), info)
    publish_bytes(json.dumps(data).encode(), output)
    return data
