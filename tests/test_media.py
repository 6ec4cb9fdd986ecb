"""Media I/O: probing and its errors, constant-rate delivery of VFR video, lossless intermediates, chunks."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from core.errors import InputError
from core.media import (FrameWriter, choose_rate, count_frames, decode_audio, iter_frames, probe_audio,
                        probe_video, read_video_file_frames)
from tasks.split_video import chunk_bounds, split_video
from tests.conftest import SHARED_MEDIA, ffmpeg, needs_media


def index_frames(n: int, h: int = 64, w: int = 96) -> list[np.ndarray]:
    """Frames whose content encodes their index (robust to lossy coding: big flat blocks)."""
    out = []
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[:, :, 0] = (i * 37) % 256
        f[:, :, 1] = (i * 11) % 256
        f[: h // 2, :, 2] = 255
        out.append(f)
    return out


def frame_index(frame: np.ndarray, n: int) -> int:
    ref = np.array([[(i * 37) % 256, (i * 11) % 256] for i in range(n)], float)
    got = frame[:, :, :2].reshape(-1, 2).mean(0)
    return int(np.argmin(np.abs(ref - got).sum(1)))


@pytest.mark.parametrize("size", [(48, 80), (1, 1), (5, 3), (333, 591), (590, 590)])
def test_intermediate_is_lossless(tmp_path, size):
    """Noise, the hardest content to code, comes back bit-exact at odd and even sizes (Ut Video's decoder
    rejected it at the last two)."""
    h, w = size
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(7)]
    path = tmp_path / "x.mkv"
    with FrameWriter(path, w, h, Fraction(30000, 1001)) as writer:
        for f in frames:
            writer.write(f)
    back = list(read_video_file_frames(path, w, h))
    assert len(back) == 7 and all(np.array_equal(a, b) for a, b in zip(frames, back))


def test_writer_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "y.mkv"
    with pytest.raises(RuntimeError):
        with FrameWriter(path, 32, 32, Fraction(25)) as w:
            w.write(np.zeros((32, 32, 3), np.uint8))
            raise RuntimeError("stage crashed")
    assert list(tmp_path.iterdir()) == []


def test_split_is_frame_exact(tmp_path):
    frames = index_frames(23)
    src = tmp_path / "synced.mkv"
    with FrameWriter(src, 96, 64, Fraction(25)) as w:
        for f in frames:
            w.write(f)
    chunks = split_video(str(src), 23, tmp_path / "chunks", n_chunks=5)
    assert [(c.start, c.n_frames) for c in chunks] == [(0, 5), (5, 5), (10, 5), (15, 4), (19, 4)]
    back = [f for c in chunks for f in read_video_file_frames(c.path, 96, 64)]
    assert len(back) == 23 and all(np.array_equal(a, b) for a, b in zip(frames, back))
    assert chunk_bounds(4, 1) == [(0, 4)]


def make_vfr(path, fps_runs: list[tuple[int, int]]) -> list[float]:
    """An mp4 whose frames come at changing rates; returns each frame's timestamp."""
    frames = index_frames(sum(n for n, _ in fps_runs))
    times, t = [], 0.0
    for n, fps in fps_runs:
        for _ in range(n):
            times.append(t)
            t += 1.0 / fps
    raw = path.with_suffix(".bgr")
    raw.write_bytes(b"".join(f.tobytes() for f in frames))
    ticks = [round(x * 1000) for x in times]
    expr = "+".join(f"eq(N,{i})*{tk}" for i, tk in enumerate(ticks))
    ffmpeg("-f", "rawvideo", "-pix_fmt", "bgr24", "-s", "96x64", "-r", "1000", "-i", str(raw),
           "-vf", f"setpts='({expr})'", "-fps_mode", "vfr", "-c:v", "libx264", "-crf", "0",
           "-pix_fmt", "yuv444p", "-video_track_timescale", "1000", str(path))
    raw.unlink()
    return times


def test_vfr_is_delivered_at_a_constant_rate_by_timestamps(tmp_path):
    path = tmp_path / "vfr.mp4"
    times = make_vfr(path, [(10, 30), (6, 15), (10, 30)])  # nominal 30 fps with a slow stretch
    info = probe_video(path)
    assert info.vfr and info.fps == 30
    frames = list(iter_frames(info))
    assert len(frames) == info.n_frames
    span = times[-1] + 1 / 30
    assert abs(len(frames) - span * 30) <= 1
    n_src = len(times)
    for k, frame in enumerate(frames):
        t = k / 30
        expected = max(i for i, ts in enumerate(times) if ts <= t + 1e-6)
        assert frame_index(frame, n_src) == expected, f"output frame {k} at {t:.3f}s"


def test_choose_rate():
    tb = Fraction(1, 15360)
    assert choose_rate(list(range(0, 512 * 50, 512)), tb, Fraction(30)) == (False, Fraction(30))
    vfr_pts = [0, 512, 1024, 2048, 3072, 3584]
    assert choose_rate(vfr_pts, tb, Fraction(30)) == (True, Fraction(30))
    assert choose_rate(vfr_pts, tb, Fraction(240))[0] is True
    assert float(choose_rate(vfr_pts, tb, Fraction(240))[1]) < 60


@needs_media
def test_real_vfr_clip():
    info = probe_video(SHARED_MEDIA / "talk_vfr_700.mp4")
    assert info.vfr and info.fps == 30 and (info.width, info.height) == (700, 700)
    assert abs(info.duration - 6.1) < 0.1
    assert sum(1 for _ in iter_frames(info)) == info.n_frames
    cfr = probe_video(SHARED_MEDIA / "talk_25fps_844.mp4")
    assert not cfr.vfr and cfr.fps == 25 and cfr.n_frames == 125


# ------------------------------------------------------------------------------ bad input
def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"video .*nope\.mp4: file not found"):
        probe_video(tmp_path / "nope.mp4")


def test_not_media(tmp_path):
    p = tmp_path / "notes.mp4"
    p.write_text("this is not a video\n" * 50)
    with pytest.raises(InputError, match="notes.mp4: not a media file"):
        probe_video(p)
    with pytest.raises(InputError, match="notes.mp4: not a media file"):
        probe_audio(p)


def test_video_without_video_stream(tmp_path, speech):
    with pytest.raises(InputError, match="has no video stream"):
        probe_video(speech)


def test_audio_without_audio_stream(tmp_path):
    silent = tmp_path / "silent.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=64x64:d=1", "-c:v", "libx264", str(silent))
    with pytest.raises(InputError, match="silent.mp4: has no audio stream"):
        decode_audio(silent)


def test_zero_length_audio(tmp_path):
    empty = tmp_path / "empty.wav"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "0", str(empty))
    with pytest.raises(InputError, match="empty.wav: .*zero length"):
        decode_audio(empty)


def test_frame_count_demux(tmp_path):
    path = tmp_path / "c.mkv"
    with FrameWriter(path, 32, 32, Fraction(25)) as w:
        for f in index_frames(9, 32, 32):
            w.write(f)
    assert count_frames(path) == 9


def test_lossless_intermediates_hold_frames_above_20_megapixels(tmp_path):
    """8K video, 24 MP photos, 4K upscaled 2x: the intermediates' encoder must accept them (FFV1 with a
    fixed slice count refused them above ~19 MP) and keep every pixel."""
    rng = np.random.default_rng(3)
    frame = np.zeros((4000, 6000, 3), np.uint8)
    frame[::97, ::89] = rng.integers(0, 255, frame[::97, ::89].shape, np.uint8)
    with FrameWriter(tmp_path / "big.mkv", 6000, 4000, Fraction(25), codec="lossless") as w:
        w.write(frame)
    (back,) = list(read_video_file_frames(tmp_path / "big.mkv", 6000, 4000))
    assert np.array_equal(back, frame)


def test_an_encoder_that_refuses_its_settings_is_not_retried(tmp_path):
    from core.errors import EncoderError, is_retryable

    with pytest.raises(EncoderError) as err:
        with FrameWriter(tmp_path / "odd.mp4", 64, 64, Fraction(25), codec="h264", preset="nonexistent") as w:
            w.write(np.zeros((64, 64, 3), np.uint8))
    assert not is_retryable(err.value)
