"""Media I/O through ffmpeg: probing, streaming frames in and out, audio decode, muxing.

Frames are numpy uint8 arrays in BGR order (OpenCV's), shape (H, W, 3). Nothing here holds a whole
video in memory: frames stream through ffmpeg pipes.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from core.errors import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MAX_NOMINAL_FPS = 60


@functools.cache
def ffmpeg_exe() -> str:
    """The ffmpeg binary: ``WAV2LIP_HQ_FFMPEG``, else the one the imageio-ffmpeg wheel ships, else PATH's."""
    env = os.environ.get("WAV2LIP_HQ_FFMPEG")
    if env:
        return env
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        found = shutil.which("ffmpeg")
        if found:
            return found
    raise RuntimeError("no ffmpeg binary found: install imageio-ffmpeg or put ffmpeg on PATH")


def run_ffmpeg(args: list[str], what: str) -> None:
    """Run ffmpeg with ``args``; on failure raise with the tail of its log."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip()[-800:]
        raise RuntimeError(f"ffmpeg failed while {what}: {tail}")


# ---------------------------------------------------------------------------------------------- probe
@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know about a video (or still image) input."""

    path: str
    width: int
    height: int
    fps: Fraction          # the constant rate frames are delivered at
    n_frames: int          # frames delivered at ``fps`` (for a still image: 1)
    is_still: bool
    vfr: bool              # the source has variable frame rate and is resampled to ``fps``
    has_audio: bool

    @property
    def duration(self) -> float:
        return float(self.n_frames / self.fps)


@dataclass(frozen=True)
class AudioInfo:
    path: str
    sample_rate: int
    channels: int
    duration: float


def _open(path: str | Path, role: str):
    import av

    path = str(path)
    if not os.path.exists(path):
        raise InputError(f"{role} {path}: file not found")
    if os.path.isdir(path):
        raise InputError(f"{role} {path}: is a directory, not a media file")
    try:
        return av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise InputError(f"{role} {path}: not a media file ffmpeg can read ({exc})") from exc


def probe_audio(path: str | Path, role: str = "audio") -> AudioInfo:
    """Check that ``path`` has a non-empty audio stream and describe it."""
    with _open(path, role) as c:
        if not c.streams.audio:
            raise InputError(f"{role} {path}: has no audio stream")
        s = c.streams.audio[0]
        if s.duration is not None and s.time_base is not None:
            duration = float(s.duration * s.time_base)
        elif c.duration is not None:
            duration = c.duration / 1_000_000
        else:
            duration = 0.0
        return AudioInfo(str(path), int(s.rate or 0), int(s.channels or 0), duration)


def probe_video(path: str | Path, fps: float | None = None, still_fps: float = 25.0,
                role: str = "video") -> VideoInfo:
    """Describe a video or still image. VFR sources get a constant rate (see :func:`choose_rate`).

    ``fps`` forces the delivered rate (frames are resampled by their timestamps).
    """
    path = str(path)
    is_still = Path(path).suffix.lower() in IMAGE_SUFFIXES
    with _open(path, role) as c:
        if not c.streams.video:
            raise InputError(f"{role} {path}: has no video stream")
        s = c.streams.video[0]
        has_audio = bool(c.streams.audio)
        is_still = is_still or c.format.name in {"image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "webp_pipe"}
        pts = [] if is_still else sorted(p.pts for p in c.demux(s) if p.pts is not None)
        nominal = s.base_rate or s.guessed_rate or s.average_rate
        time_base = s.time_base
    if is_still:
        h, w = _first_frame_size(path, role, still=True)
        rate = Fraction(fps or still_fps).limit_denominator(1001)
        return VideoInfo(path, w, h, rate, 1, True, False, has_audio)
    if not pts:
        raise InputError(f"{role} {path}: its video stream has no frames")
    vfr, rate = choose_rate(pts, time_base, nominal)
    if fps:
        rate = Fraction(fps).limit_denominator(1001)
    resampled = vfr or bool(fps)
    if resampled:
        span = float((pts[-1] - pts[0]) * time_base) + float(1 / rate)
        n_frames = max(1, round(span * float(rate)))
    else:
        n_frames = len(pts)
    h, w = _first_frame_size(path, role, still=False)
    return VideoInfo(path, w, h, rate, n_frames, False, resampled, has_audio)


def choose_rate(pts: list[int], time_base: Fraction, nominal: Fraction | None) -> tuple[bool, Fraction]:
    """Decide whether timestamps are variable-rate, and the constant rate to deliver frames at.

    CFR: the rate the timestamps show. VFR: the stream's nominal rate (its shortest regular frame
    interval, ffmpeg's r_frame_rate) up to 60 fps, so no motion is dropped and every frame keeps its
    time; beyond that, the average rate.
    """
    if len(pts) < 2:
        return False, Fraction(nominal or 25)
    d = np.diff(np.asarray(pts, dtype=np.int64))
    d = d[d > 0]
    med = float(np.median(d))
    vfr = bool(d.size) and (d.max() - d.min()) > max(1.0, 0.02 * med)
    average = Fraction(len(pts) - 1) / (Fraction(int(pts[-1] - pts[0])) * time_base)
    if not vfr:
        rate = Fraction(1) / (Fraction(med).limit_denominator(1 << 20) * time_base)
        # Snap to the nominal rate when it agrees (e.g. 30000/1001 instead of a rounded fraction).
        if nominal and abs(float(rate) - float(nominal)) < 0.01 * float(nominal):
            rate = Fraction(nominal)
        return False, rate.limit_denominator(1001)
    if nominal and float(nominal) <= MAX_NOMINAL_FPS:
        return True, Fraction(nominal).limit_denominator(1001)
    return True, average.limit_denominator(1001)


def _first_frame_size(path: str, role: str, still: bool) -> tuple[int, int]:
    """Size of the frames as our decoder delivers them (after rotation metadata is applied)."""
    if still:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(f"{role} {path}: not an image that can be decoded")
        return img.shape[:2]
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", path,
           "-map", "0:v:0", "-frames:v", "1", "-f", "image2pipe", "-c:v", "png", "-"]
    proc = subprocess.run(cmd, capture_output=True)
    img = cv2.imdecode(np.frombuffer(proc.stdout, np.uint8), cv2.IMREAD_COLOR) if proc.stdout else None
    if proc.returncode != 0 or img is None:
        tail = proc.stderr.decode(errors="replace").strip()[-300:]
        raise InputError(f"{role} {path}: its video stream cannot be decoded ({tail})")
    return img.shape[:2]


# ------------------------------------------------------------------------------------------- frames
def read_still(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"video {path}: not an image that can be decoded")
    return img


def iter_frames(info: VideoInfo) -> Iterator[np.ndarray]:
    """Stream the frames of ``info`` as BGR arrays, at ``info.fps`` (resampled by timestamps if VFR)."""
    if info.is_still:
        yield read_still(info.path)
        return
    args = ["-i", info.path, "-map", "0:v:0"]
    if info.vfr:
        args += ["-vf", f"fps={info.fps.numerator}/{info.fps.denominator}"]
    # passthrough: never let the raw muxer drop or duplicate frames behind our back
    args += ["-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "bgr24", "-"]
    yield from _read_raw(args, info.width, info.height, info.path)


def _read_raw(args: list[str], width: int, height: int, what: str) -> Iterator[np.ndarray]:
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *args]
    frame_bytes = width * height * 3
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=frame_bytes)
    try:
        while True:
            buf = proc.stdout.read(frame_bytes)
            if len(buf) < frame_bytes:
                break
            yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        code = proc.wait() if proc.poll() is None else proc.returncode
    if code not in (0, None) and not err.strip().endswith("Broken pipe"):
        raise RuntimeError(f"ffmpeg failed while decoding {what}: {err.strip()[-500:]}")


def read_video_file_frames(path: str | Path, width: int, height: int) -> Iterator[np.ndarray]:
    """Every frame of one of our own intermediate files, in order, exactly as stored."""
    yield from _read_raw(["-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough",
                          "-f", "rawvideo", "-pix_fmt", "bgr24", "-"], width, height, str(path))


def frame_at(info: VideoInfo, seconds: float) -> np.ndarray:
    """The frame shown at ``seconds`` (a fast seek: no decoding from the start)."""
    if info.is_still:
        return read_still(info.path)
    args = ["-ss", f"{max(0.0, seconds):.3f}", "-i", info.path, "-map", "0:v:0", "-frames:v", "1"]
    if info.vfr:
        args += ["-vf", f"fps={info.fps.numerator}/{info.fps.denominator}"]
    frames = list(_read_raw([*args, "-f", "rawvideo", "-pix_fmt", "bgr24", "-"], info.width, info.height,
                            info.path))
    if not frames:
        raise InputError(f"video {info.path}: no frame at {seconds:.2f} s")
    return frames[0]


def count_frames(path: str | Path) -> int:
    """Number of video frames in a file (by demuxing, no decode)."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return sum(1 for p in c.demux(s) if p.pts is not None)


class FrameWriter:
    """Pipe BGR frames into ffmpeg; the file appears at ``path`` only when closed without error.

    ``codec="ffv1"`` is lossless (our intermediates); ``"h264"`` is the final yuv420p encode.
    ``audio`` (a file) is muxed in as-is when given, re-encoded with ``audio_codec``.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: Fraction, codec: str = "ffv1",
                 crf: int = 18, preset: str = "medium", audio: str | Path | None = None,
                 audio_codec: str = "flac") -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.stem}.part{self.path.suffix}")
        self.width, self.height, self.count = width, height, 0
        fps = Fraction(fps)
        args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}",
                "-framerate", f"{fps.numerator}/{fps.denominator}", "-i", "-"]
        if audio is not None:
            args += ["-i", str(audio), "-map", "0:v:0", "-map", "1:a:0", "-c:a", audio_codec]
        args += video_codec_args(codec, crf, preset, width, height)
        args += ["-fps_mode", "passthrough", str(self.tmp)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame {frame.shape} {frame.dtype} != ({self.height}, {self.width}, 3) uint8")
        try:
            self.proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        except BrokenPipeError:
            self._fail()
        self.count += 1

    def _fail(self) -> None:
        err = self.proc.stderr.read().decode(errors="replace")
        self.proc.wait()
        self.tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg failed while writing {self.path}: {err.strip()[-500:]}")

    def close(self) -> Path:
        self.proc.stdin.close()
        if self.proc.wait() != 0:
            self._fail()
        self.proc.stderr.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.kill()
        self.proc.wait()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "FrameWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def video_codec_args(codec: str, crf: int, preset: str, width: int, height: int) -> list[str]:
    if codec == "ffv1":
        # bgr0 keeps our BGR pixels bit-exact; slices let ffmpeg use both cores
        return ["-c:v", "ffv1", "-level", "3", "-g", "1", "-slices", "4", "-pix_fmt", "bgr0"]
    if codec == "h264":
        pad = [] if width % 2 == 0 and height % 2 == 0 else ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
        return [*pad, "-c:v", "libx264", "-crf", str(crf), "-preset", preset, "-pix_fmt", "yuv420p",
                "-movflags", "+faststart"]
    raise ValueError(f"unknown codec {codec!r}")


# -------------------------------------------------------------------------------------------- audio
def decode_audio(path: str | Path, sample_rate: int = 16000, role: str = "audio") -> np.ndarray:
    """Decode the first audio stream of any file ffmpeg reads to mono float32 at ``sample_rate``.

    Channels are averaged, as librosa (the reference's loader) does; ffmpeg's own ``-ac 1`` downmix
    would make stereo 3 dB louder and shift every mel value.
    """
    info = probe_audio(path, role)
    channels = max(1, info.channels)
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path),
           "-map", "0:a:0", "-vn", "-f", "f32le", "-acodec", "pcm_f32le", "-ac", str(channels),
           "-ar", str(sample_rate), "-"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip()[-300:]
        raise InputError(f"{role} {path}: its audio cannot be decoded ({tail})")
    samples = np.frombuffer(proc.stdout, np.float32)
    if samples.size < channels:
        raise InputError(f"{role} {path}: audio stream has zero length")
    samples = samples[: samples.size - samples.size % channels].reshape(-1, channels)
    return samples.mean(axis=1, dtype=np.float32)


def write_audio_track(src: str | Path, dst: str | Path, codec: str = "flac") -> Path:
    """Copy the first audio stream of ``src`` to ``dst`` re-encoded losslessly (``flac``) or as ``aac``."""
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.stem}.part{dst.suffix}")
    run_ffmpeg(["-i", str(src), "-map", "0:a:0", "-vn", "-c:a", codec, str(tmp)], f"extracting audio of {src}")
    os.replace(tmp, dst)
    return dst


def mux(video: str | Path, audio: str | Path, dst: str | Path, audio_codec: str = "aac",
        audio_bitrate: str = "192k") -> Path:
    """Copy the video stream of ``video`` and encode the audio of ``audio`` into ``dst`` (atomic)."""
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.stem}.part{dst.suffix}")
    args = ["-i", str(video), "-i", str(audio), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
            "-c:a", audio_codec]
    if audio_codec == "aac":
        args += ["-b:a", audio_bitrate]
    if dst.suffix.lower() in {".mp4", ".mov", ".m4v"}:
        args += ["-movflags", "+faststart"]
    try:
        run_ffmpeg([*args, str(tmp)], f"muxing {dst.name}")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dst)
    return dst
