"""What a person sees of a run in the Prefect UI: artifacts for progress, timings, a picture, the output."""
from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import cv2
import numpy as np

from core.products import FaceDetections, Product, SyncedVideo, SyncScores
from core.progress import Progress, get_logger
from core.storage import is_remote, redact, url_to_fs


def quietly(fn, *args, **kwargs):
    """Artifacts are a view of the run, never a reason for it to fail."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reporting must not break the job
        get_logger().warning("could not publish an artifact: %s", exc)
        return None


def artifact_key(output: str, what: str) -> str:
    """A per-job artifact key (jobs of a batch must not overwrite each other's): the output's name,
    a short hash of its URL, and what the artifact shows."""
    stem = re.sub(r"[^a-z0-9]+", "-", Path(redact(output)).stem.lower()).strip("-")[:40] or "job"
    return f"{stem}-{hashlib.sha256(output.encode()).hexdigest()[:6]}-{what}"


class EnhanceProgress:
    """A progress artifact that moves as enhancement chunks finish, and one aggregate progress line in
    the log at a time interval (not one per chunk)."""

    def __init__(self, total: int, output: str) -> None:
        from prefect.artifacts import create_progress_artifact

        self.total, self.done = max(1, total), 0
        self.log = Progress("enhancement (GFPGAN)", total, unit="chunks", every=100.0)
        self.id = quietly(create_progress_artifact, progress=0.0, key=artifact_key(output, "enhancement-progress"),
                          description=f"Share of the {total} chunks whose faces GFPGAN has restored.")

    def step(self) -> None:
        from prefect.artifacts import update_progress_artifact

        self.done += 1
        self.log.update()
        if self.id is not None:
            quietly(update_progress_artifact, artifact_id=self.id, progress=100.0 * self.done / self.total)


def stage_table(stages: dict[str, Product | list[Product]], output: str) -> None:
    """A table artifact: each stage's wall time and work time (they differ where chunks ran in
    parallel), output size, and whether it was reused from the work area."""
    from prefect.artifacts import create_table_artifact

    rows = []
    for name, result in stages.items():
        items = result if isinstance(result, list) else [result]
        ran = [r for r in items if not r.reused]
        wall = max((r.started + r.seconds for r in ran), default=0.0) - min((r.started for r in ran), default=0.0)
        rows.append({"stage": name, "wall seconds": round(wall, 2),
                     "work seconds": round(sum(r.seconds for r in ran), 2),
                     "MB": round(sum(r.bytes for r in items) / 1e6, 3),
                     "reused": f"{len(items) - len(ran)}/{len(items)}"})
    quietly(create_table_artifact, table=rows, key=artifact_key(output, "stage-timings"),
            description="Each stage of this run: wall-clock and work seconds (chunks run in parallel, so their "
                        "work can exceed the wall time), output size, and outputs reused from the work area.")


def output_link(url: str, enhanced: bool) -> None:
    """Where the result is: a presigned HTTPS link for object storage, a copyable path for local files."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    what = "The lip-synced video, faces restored with GFPGAN" if enhanced else "The lip-synced video (no restoration)"
    key = artifact_key(url, "output")
    link = quietly(_presigned, url) if is_remote(url) else None
    if link:
        quietly(create_link_artifact, link=link, link_text=redact(url), key=key,
                description=f"{what}; the link works for 7 days.")
    else:
        quietly(create_markdown_artifact, markdown=f"{what}:\n\n`{redact(url)}`", key=key, description=what)


def _presigned(url: str, seconds: int = 7 * 24 * 3600) -> str:
    fs, path = url_to_fs(url)
    return fs.sign(path, expiration=seconds)


def _thumb(frame: np.ndarray, width: int = 320) -> str:
    h, w = frame.shape[:2]
    small = cv2.resize(frame, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    ok, jpg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(jpg.tobytes()).decode()


PANEL_MAX_HEIGHT = 1080


def side_by_side(panels: list[np.ndarray], labels: list[str]) -> np.ndarray:
    """Frames next to each other at one height (the tallest, at most 1080 px), each under its label:
    the preview's image and the run's before/after artifact."""
    height = min(PANEL_MAX_HEIGHT, max(p.shape[0] for p in panels))
    band = max(24, height // 20)
    out = []
    for panel, label in zip(panels, labels):
        h, w = panel.shape[:2]
        scaled = cv2.resize(panel, (max(1, round(w * height / h)), height),
                            interpolation=cv2.INTER_AREA if h > height else cv2.INTER_LANCZOS4)
        head = np.full((band, scaled.shape[1], 3), 24, np.uint8)
        cv2.putText(head, label, (8, int(band * 0.72)), cv2.FONT_HERSHEY_SIMPLEX, band / 40, (255, 255, 255),
                    max(1, band // 24), cv2.LINE_AA)
        out.append(np.vstack([head, scaled]))
    gap = np.full((height + band, 4, 3), 255, np.uint8)
    return np.hstack([x for panel in out for x in (panel, gap)][:-1])


def before_after(image: np.ndarray, caption: str, output: str) -> None:
    """A markdown artifact with one output frame beside its source and lip-synced versions (the
    preview's rendering)."""
    from prefect.artifacts import create_markdown_artifact

    md = f"![source, lip-synced, final]({_thumb(image, width=960)})\n\n{caption}"
    quietly(create_markdown_artifact, markdown=md, key=artifact_key(output, "before-after"),
            description="One frame of the output beside the source and the lip-synced frame at the same time.")


def middle_frames(video_url: str, synced: SyncedVideo, output_path: str) -> tuple[list[np.ndarray], float]:
    """The output's middle frame and, at that time, the input frame (or the portrait) and the lip-synced
    frame."""
    from core.media import frame_at, probe_video
    from core.storage import local_copy
    from models.face_track import source_index

    with local_copy(output_path, "output") as o:
        out = probe_video(o)
        i = out.n_frames // 2
        after = frame_at(out, i / float(out.fps))
    with local_copy(synced.video, "lip-synced video") as s:
        lip_synced = frame_at(probe_video(s), i / float(out.fps))
    with local_copy(video_url, "video") as v:
        src = probe_video(v)
        before = frame_at(src, source_index(i, synced.n_source, synced.loop) / float(src.fps))
    return [before, lip_synced, after], i / float(out.fps)


def faces_summary(detections: FaceDetections, synced: SyncedVideo, output: str) -> None:
    """A markdown artifact: faces found, face tracks, shot cuts, and frames without a face to lip-sync."""
    from prefect.artifacts import create_markdown_artifact

    md = (f"| faces detected | face tracks | shot cuts | source frames without a face to lip-sync |\n"
          f"|---|---|---|---|\n| {detections.faces} | {synced.tracks} | {detections.cuts} | "
          f"{synced.frames_without_face} of {synced.n_source} |\n\n"
          f"Per-frame tracks, boxes and landmarks: `wav2lip-hq faces --video ... -o faces.json`.")
    quietly(create_markdown_artifact, markdown=md, key=artifact_key(output, "faces"),
            description="The faces of the video and how many frames had none to lip-sync.")


def sync_report(scores: SyncScores, output: str) -> None:
    """The output's lip-sync scores (a table) and its framewise confidence over time (a picture)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from flows.score import plot_png
    from models.syncnet import FPS

    quietly(create_table_artifact, table=[{**scores.summary(), "scored from (s)": round(scores.first_frame / FPS, 2),
                                           "face tracks scored": len(scores.tracks)}],
            key=artifact_key(output, "sync-scores"),
            description="SyncNet's verdict on the output's face track in best sync: offset in frames (0 = in sync), LSE-D (distance, lower "
                        "is better) and LSE-C (confidence, higher is better); Wav2Lip on LRS2 scores about 6.4 / 7.8.")
    png = quietly(plot_png, scores)
    if png:
        quietly(create_markdown_artifact, key=artifact_key(output, "sync-plot"),
                markdown=f"![framewise sync confidence](data:image/png;base64,{base64.b64encode(png).decode()})\n\n"
                         "Framewise confidence over time: red where sync drops.",
                description="Where lip sync holds and where it drops: SyncNet's confidence per frame.")
