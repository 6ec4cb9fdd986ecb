"""The ``lipsync_hq`` flow: one audio + one video (or portrait) -> one high-quality lip-synced video.

It reads like the diagram: probe -> detect_faces -> lipsync -> (split_video -> enhance_chunk x N ->
combine_frames, extract_audio) -> final_mux. The single-stream stages run in the flow's process (all
its cores, or its GPU); enhancement is mapped over chunks on a Dask cluster (see flows/runners.py).
Its parameters are defined once, in core/options.py.
"""
from __future__ import annotations

from prefect import flow
from prefect.futures import as_completed

from core.options import RunOptions, flow_parameters
from core.products import Chunk, Product, SyncedVideo
from core.workarea import default_work_root
from flows import report
from flows.runners import enhancement_runner, enhancement_workers
from tasks import enhance_chunk
from tasks.combine_frames import combine_frames_task
from tasks.detect_faces import detect_faces_task
from tasks.enhance_chunk import enhance_chunk_task
from tasks.extract_audio import extract_audio_task
from tasks.final_mux import final_mux_task
from tasks.lipsync import lipsync_task
from tasks.probe import probe_task
from tasks.score_sync import score_output
from tasks.split_video import split_video_task


@flow(name="wav2lip-hq", log_prints=True)
@flow_parameters
def lipsync_hq(audio: str, video: str, output: str, **options) -> str:
    """Lip-sync a talking-face video (or portrait) to speech with Wav2Lip, restore the faces with
    GFPGAN, and write the result."""
    opts = RunOptions(**options)
    work, refresh = opts.work_dir or default_work_root(), opts.refresh

    job = probe_task(audio, video, output, opts)
    detections = detect_faces_task(job, opts, work, refresh)
    synced = lipsync_task(job, detections, opts, work, refresh)
    # auto chunks are sized to the workers that enhance them (explicit sizes need no count)
    workers = (enhancement_workers(opts.dask_address, opts.dask_workers)
               if opts.enhance and opts.chunk_frames == "auto" else 1)
    chunks = split_video_task(synced, opts, work, refresh, workers)
    audio_track = extract_audio_task(synced, work, refresh)
    stages: dict[str, Product | list[Product]] = {"detect_faces": detections, "lipsync": synced,
                                                  "split_video": chunks, "extract_audio": audio_track}
    frames = list(chunks.chunks)
    if opts.enhance:
        frames = enhance_chunks(frames, synced, opts, work, output)
        stages["enhance_chunk"] = frames
    silent = combine_frames_task(frames, synced, opts, work, refresh)
    final = final_mux_task(silent, audio_track, job, work, refresh)
    stages.update(combine_frames=silent, final_mux=final)

    sync = score_output(final.video, work, refresh, opts.device)  # None without syncnet_v2.model
    if sync:
        stages["score_sync"] = sync
    report.stage_table(stages, output)
    report.output_link(final.output, opts.enhance)
    report.faces_summary(detections, synced, output)
    frames_shown = report.quietly(report.middle_frames, video, synced, final.video)
    if frames_shown:
        frames, t = frames_shown
        labels = ["source", f"lip-synced (--mask {opts.mask})", "final" + (" (restored)" if opts.enhance else "")]
        image = report.quietly(report.side_by_side, frames, labels)
        if image is not None:
            report.before_after(image, f"frame at {t:.2f} s", output)
    if sync:
        report.sync_report(sync, output)
    return final.output


def enhance_chunks(chunks: list[Chunk], synced: SyncedVideo, opts: RunOptions, work: str, output: str
                   ) -> list[Chunk]:
    """Map enhancement over the chunks; the progress artifact moves as they finish.

    Chunks already finished in the work area resolve here at once; only the others go to the
    cluster, which is not even started when there are none (a finished job costs no cluster).
    """
    import dask

    progress = report.EnhanceProgress(len(chunks), output)
    results: dict[int, Chunk] = {}
    pending = []
    for c in chunks:
        if not opts.refresh and enhance_chunk.STAGE.finished(work, chunk=c, opts=opts) is not None:
            results[c.index] = enhance_chunk_task(c, synced, opts, work)
            progress.step()
        else:
            pending.append(c)
    if pending:
        runner, needs_gpu = enhancement_runner(opts.dask_address, opts.dask_workers)
        with runner:
            with dask.annotate(**({"resources": {"GPU": 1}} if needs_gpu else {})):
                futures = {runner.submit(enhance_chunk_task, {"chunk": c, "synced": synced, "opts": opts,
                                                              "work_root": work, "refresh": opts.refresh}): c.index
                           for c in pending}
            for future in as_completed(list(futures)):
                results[futures[future]] = future.result()
                progress.step()
    return [results[c.index] for c in chunks]
