"""What a person sees of a run in the Prefect UI: artifacts for progress, timings, a picture, the output."""
from __future__ import annotations

import base64

import cv2
import numpy as np

from core.products import Product
from core.progress import get_logger


def quietly(fn, *args, **kwargs):
    """Artifacts are a view of the run, never a reason for it to fail."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reporting must not break the job
        get_logger().warning("could not publish an artifact: %s", exc)
        return None


class EnhanceProgress:
    """A progress artifact that moves as enhancement chunks finish."""

    def __init__(self, total: int) -> None:
        from prefect.artifacts import create_progress_artifact

        self.total, self.done = max(1, total), 0
        self.id = quietly(create_progress_artifact, progress=0.0, key="enhancement-progress",
                        description=f"GFPGAN enhancement: chunks done of {total}")

    def step(self) -> None:
        from prefect.artifacts import update_progress_artifact

        self.done += 1
        if self.id is not None:
            quietly(update_progress_artifact, artifact_id=self.id, progress=100.0 * self.done / self.total)


def stage_table(stages: dict[str, Product | list[Product]]) -> None:
    """A table artifact: each stage's time, output size, and whether it was reused from the work area."""
    from prefect.artifacts import create_table_artifact

    rows = []
    for name, result in stages.items():
        items = result if isinstance(result, list) else [result]
        rows.append({
            "stage": name,
            "seconds": round(sum(r.seconds for r in items if not r.reused), 2),
            "MB": round(sum(r.bytes for r in items) / 1e6, 2),
            "reused": f"{sum(r.reused for r in items)}/{len(items)}",
        })
    quietly(create_table_artifact, table=rows, key="stage-timings",
          description="Stage times (this run's work only), output sizes, outputs reused from the work area")


def output_link(url: str) -> None:
    from prefect.artifacts import create_link_artifact

    quietly(create_link_artifact, link=url if "://" in url else f"file://{url}", link_text=url,
          key="output", description="The lip-synced, enhanced video")


def _thumb(frame: np.ndarray, width: int = 320) -> str:
    h, w = frame.shape[:2]
    small = cv2.resize(frame, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    ok, jpg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(jpg.tobytes()).decode()


def before_after(before: np.ndarray, after: np.ndarray, caption: str) -> None:
    """A markdown artifact with the same frame before (input) and after (output), side by side."""
    from prefect.artifacts import create_markdown_artifact

    md = (f"| before | after |\n|---|---|\n| ![before]({_thumb(before)}) | ![after]({_thumb(after)}) |\n\n"
          f"{caption}")
    quietly(create_markdown_artifact, markdown=md, key="before-after", description="One frame, before and after")


def middle_frames(video_url: str, output_path: str) -> tuple[np.ndarray, np.ndarray, float]:
    """The output's middle frame and the input frame shown at that time (or the portrait)."""
    from core.media import frame_at, probe_video
    from core.storage import local_copy

    with local_copy(output_path, "output") as o:
        out = probe_video(o)
        t = (out.n_frames // 2) / float(out.fps)
        after = frame_at(out, t)
    with local_copy(video_url, "video") as v:
        src = probe_video(v)
        before = frame_at(src, t % src.duration if not src.is_still else 0.0)
    return before, after, t
