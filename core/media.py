"""Media I/O through ffmpeg: probing, streaming frames in and out, audio decode, muxing.

Frames are numpy uint8 arrays in BGR order (OpenCV's), shape (H, W, 3). Nothing here holds a whole
video in memory: frames stream through ffmpeg pipes. Every ffmpeg invocation is built here, with
ffmpeg-python, and run through :func:`ffmpeg_exe`.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import ffmpeg
import numpy as np
from pydantic import BaseModel, ConfigDict

from core.errors import EncoderError, InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# the largest frames accepted (inputs, and outputs after --upscale): 8192 x 8192, any side up to 16384
MAX_FRAME_PIXELS = 8192 * 8192
MAX_SIDE = 16384
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


GLOBAL_ARGS = ("-hide_banner", "-nostdin", "-loglevel", "error")


def ffmpeg_command(stream, overwrite: bool = False) -> list[str]:
    """The command line of an ffmpeg-python stream spec, for our binary, quiet."""
    stream = stream.global_args(*GLOBAL_ARGS)
    if overwrite:
        stream = stream.overwrite_output()
    return stream.compile(cmd=ffmpeg_exe())


def run_ffmpeg(stream, what: str) -> None:
    """Run an ffmpeg-python stream spec to its end (overwriting its output); on failure raise with the
    start and the end of ffmpeg's log (the cause is often in its first lines)."""
    proc = subprocess.run(ffmpeg_command(stream, overwrite=True), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed while {what}: {ffmpeg_log(proc.stderr)}")


def ffmpeg_log(stderr: bytes, limit: int = 800) -> str:
    text = stderr.decode(errors="replace").strip()
    if len(text) <= limit:
        return text
    return f"{text[:limit // 2]} [...] {text[-limit // 2:]}"


# ---------------------------------------------------------------------------------------------- probe
class VideoInfo(BaseModel):
    """What the pipeline needs to know about a video (or still image) input."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    width: int
    height: int
    fps_num: int           # the constant rate frames are delivered at
    fps_den: int
    n_frames: int          # frames delivered at ``fps`` (for a still image: 1)
    is_still: bool
    vfr: bool              # the source has variable frame rate and is resampled to ``fps``
    sar_num: int = 1       # sample (pixel) aspect ratio: not square in anamorphic video
    sar_den: int = 1

    @property
    def fps(self) -> Fraction:
        return Fraction(self.fps_num, self.fps_den)

    @property
    def duration(self) -> float:
        return float(self.n_frames / self.fps)

    def at(self, path: str | Path) -> "VideoInfo":
        """The same facts for a copy of the file at ``path``."""
        return self.model_copy(update={"path": str(path)})


class AudioInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

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
        return AudioInfo(path=str(path), sample_rate=int(s.rate or 0), channels=int(s.channels or 0),
                         duration=duration)


def probe_video(path: str | Path, still_fps: float | None = None, role: str = "video") -> VideoInfo:
    """Describe a video or still image. VFR sources get a constant rate (see :func:`choose_rate`); a
    still image is delivered at ``still_fps`` (default: the ``still_fps`` option's)."""
    path = str(path)
    is_still = Path(path).suffix.lower() in IMAGE_SUFFIXES
    with _open(path, role) as c:
        if not c.streams.video:
            raise InputError(f"{role} {path}: has no video stream")
        s = c.streams.video[0]
        check_frame_size(s.codec_context.width, s.codec_context.height, f"{role} {path}")
        is_still = is_still or c.format.name in {"image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "webp_pipe"}
        pts = [] if is_still else sorted(p.pts for p in c.demux(s) if p.pts is not None)
        nominal = s.base_rate or s.guessed_rate or s.average_rate
        time_base = s.time_base
        sar = s.sample_aspect_ratio or s.codec_context.sample_aspect_ratio
        sar = {"sar_num": sar.numerator, "sar_den": sar.denominator} if sar and sar > 0 else {}
    if is_still:
        h, w = _first_frame_size(path, role, still=True)
        if still_fps is None:
            from core.options import RunOptions

            still_fps = RunOptions.model_fields["still_fps"].default
        rate = Fraction(still_fps).limit_denominator(1001)
        return VideoInfo(path=path, width=w, height=h, fps_num=rate.numerator, fps_den=rate.denominator,
                         n_frames=1, is_still=True, vfr=False, **sar)
    if not pts:
        raise InputError(f"{role} {path}: its video stream has no frames")
    vfr, rate = choose_rate(pts, time_base, nominal)
    if vfr:
        span = float((pts[-1] - pts[0]) * time_base) + float(1 / rate)
        n_frames = max(1, round(span * float(rate)))
    else:
        n_frames = len(pts)
    h, w = _first_frame_size(path, role, still=False)
    return VideoInfo(path=path, width=w, height=h, fps_num=rate.numerator, fps_den=rate.denominator,
                     n_frames=n_frames, is_still=False, vfr=vfr, **sar)


def check_frame_size(width: int, height: int, what: str) -> None:
    """Refuse frames too large to process (before any decoding: a header may declare anything)."""
    if width * height > MAX_FRAME_PIXELS or max(width, height) > MAX_SIDE:
        raise InputError(f"{what}: frames of {width}x{height} are larger than this tool accepts "
                         f"({MAX_FRAME_PIXELS // 1_000_000} megapixels, {MAX_SIDE} pixels a side)")


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
        return read_still(path, role).shape[:2]
    first = ffmpeg.input(path)["v:0"].output("pipe:", **{"frames:v": 1, "f": "image2pipe", "c:v": "png"})
    proc = subprocess.run(ffmpeg_command(first), capture_output=True)
    img = cv2.imdecode(np.frombuffer(proc.stdout, np.uint8), cv2.IMREAD_COLOR) if proc.stdout else None
    if proc.returncode != 0 or img is None:
        tail = proc.stderr.decode(errors="replace").strip()[-300:]
        raise InputError(f"{role} {path}: its video stream cannot be decoded ({tail})")
    return img.shape[:2]


# ------------------------------------------------------------------------------------------- frames
def read_still(path: str, role: str = "video") -> np.ndarray:
    """A still image as BGR; its header's size is checked before anything is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            check_frame_size(*im.size, f"{role} {path}")
    except Image.DecompressionBombError:
        raise InputError(f"{role} {path}: its header declares an image far larger than this tool accepts "
                         f"({MAX_FRAME_PIXELS // 1_000_000} megapixels)") from None
    except (UnidentifiedImageError, OSError):
        pass  # not an image PIL knows: OpenCV says below whether it can read it
    try:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
    except cv2.error:
        img = None
    if img is None:
        raise InputError(f"{role} {path}: not an image that can be decoded")
    return img


def _video_stream(info: VideoInfo, **input_args):
    """The first video stream of ``info``'s file at ``info.fps`` (VFR resampled by its timestamps)."""
    video = ffmpeg.input(info.path, **input_args)["v:0"]
    return video.filter("fps", fps=f"{info.fps_num}/{info.fps_den}") if info.vfr else video


def iter_frames(info: VideoInfo) -> Iterator[np.ndarray]:
    """Stream the frames of ``info`` as BGR arrays, at ``info.fps`` (resampled by timestamps if VFR)."""
    if info.is_still:
        yield read_still(info.path)
        return
    yield from _read_raw(_video_stream(info), info.width, info.height, info.path)


def _read_raw(stream, width: int, height: int, what: str, **output_args) -> Iterator[np.ndarray]:
    """Decode ``stream`` to raw BGR frames through a pipe."""
    # passthrough: never let the raw muxer drop or duplicate frames behind our back
    cmd = ffmpeg_command(stream.output("pipe:", format="rawvideo", pix_fmt="bgr24", fps_mode="passthrough",
                                       **output_args))
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
        err = proc.stderr.read()
        proc.stderr.close()
        code = proc.wait() if proc.poll() is None else proc.returncode
    if code not in (0, None) and not err.decode(errors="replace").strip().endswith("Broken pipe"):
        raise RuntimeError(f"ffmpeg failed while decoding {what}: {ffmpeg_log(err)}")


def iter_frames_at(info: VideoInfo, fps: Fraction) -> Iterator[np.ndarray]:
    """Stream the frames of a video at the constant rate ``fps``: as stored when it already has that
    rate, else resampled by their timestamps (frames repeated or dropped, as ffmpeg's ``-r`` does)."""
    video = ffmpeg.input(info.path)["v:0"]
    if info.vfr or info.fps != fps:
        video = video.filter("fps", fps=f"{fps.numerator}/{fps.denominator}")
    yield from _read_raw(video, info.width, info.height, info.path)


def read_video_file_frames(path: str | Path, width: int, height: int) -> Iterator[np.ndarray]:
    """Every frame of one of our own intermediate files, in order, exactly as stored."""
    yield from _read_raw(ffmpeg.input(str(path))["v:0"], width, height, str(path))


def frame_at(info: VideoInfo, seconds: float) -> np.ndarray:
    """The frame shown at ``seconds`` (a fast seek: no decoding from the start)."""
    if info.is_still:
        return read_still(info.path)
    video = _video_stream(info, ss=f"{max(0.0, seconds):.3f}")
    frames = list(_read_raw(video, info.width, info.height, info.path, **{"frames:v": 1}))
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

    ``codec="lossless"`` is our intermediates' all-intra lossless codec; ``"h264"`` is the final yuv420p
    encode.
    ``audio`` (a file) is muxed in as-is when given, re-encoded with ``audio_codec``.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: Fraction, codec: str = "lossless",
                 crf: int = 18, preset: str = "medium", audio: str | Path | None = None,
                 audio_codec: str = "flac", sar: Fraction = Fraction(1)) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.stem}.part{self.path.suffix}")
        self.width, self.height, self.count = width, height, 0
        fps = Fraction(fps)
        # lossless: the RGB the intermediate stores, converted here by OpenCV into one reused buffer, which
        # costs less CPU than ffmpeg's swscale doing the same (in the lipsync stage, the network's CPU)
        self.rgb = np.empty((height, width, 3), np.uint8) if codec == "lossless" else None
        frames = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="bgr24" if self.rgb is None else "rgb24",
                              s=f"{width}x{height}", framerate=f"{fps.numerator}/{fps.denominator}")["v:0"]
        video, encode = _video_encoding(frames, codec, crf, preset, width, height, Fraction(sar))
        streams = [video] if audio is None else [video, ffmpeg.input(str(audio))["a:0"]]
        if audio is not None:
            encode["c:a"] = audio_codec
        out = ffmpeg.output(*streams, str(self.tmp), fps_mode="passthrough", **encode)
        self.proc = subprocess.Popen(ffmpeg_command(out, overwrite=True), stdin=subprocess.PIPE,
                                     stderr=subprocess.PIPE)

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame {frame.shape} {frame.dtype} != ({self.height}, {self.width}, 3) uint8")
        try:
            if self.rgb is None:
                self.proc.stdin.write(np.ascontiguousarray(frame).data)  # the buffer itself: no copy
            else:
                self.proc.stdin.write(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB, dst=self.rgb).data)
        except BrokenPipeError:
            self._fail()
        self.count += 1

    def write_all(self, frames: list[np.ndarray]) -> None:
        for frame in frames:
            self.write(frame)

    def _fail(self) -> None:
        err = self.proc.stderr.read()
        self.proc.wait()
        self.tmp.unlink(missing_ok=True)
        kind = EncoderError if b"encoder" in err.lower() or b"Unsupported" in err else RuntimeError
        raise kind(f"ffmpeg failed while writing {self.path}: {ffmpeg_log(err)}")

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


def _video_encoding(video, codec: str, crf: int, preset: str, width: int, height: int, sar: Fraction) -> tuple:
    """(stream, encoder options): ``lossless`` for our intermediates, ``h264`` for the final video."""
    if codec == "lossless":
        # FFmpeg's Huffyuv variant on packed RGB: all-intra (chunks are cut by stream copy), bit-exact BGR at
        # any size. Ut Video wrote streams its decoder rejects ("Incorrect slice size") when frames are
        # noise at some sizes (590x590, 591x333); FFV1 is 3x slower. CPU per 844x844 frame of the
        # talking-head clip: encode 4.8 ms (Ut Video 8: in the lipsync stage that CPU is the network's),
        # decode 6 ms (Ut Video 3.7-7), 600 kB (Ut Video 420-480).
        return video, {"c:v": "ffvhuff", "pix_fmt": "rgb24"}
    if codec == "h264":
        if width % 2 or height % 2:  # yuv420p needs even sides
            video = video.filter("pad", "ceil(iw/2)*2", "ceil(ih/2)*2")
        if sar != 1:  # non-square pixels (anamorphic input) keep their shape on screen
            video = video.filter("setsar", f"{sar.numerator}/{sar.denominator}")
        return video, {"c:v": "libx264", "crf": crf, "preset": preset, "pix_fmt": "yuv420p",
                       "movflags": "+faststart"}
    raise ValueError(f"unknown codec {codec!r}")


def split_segments(video: str | Path, first_frames: list[int], pattern: str | Path) -> None:
    """Cut ``video``'s first video stream by stream copy into files named by ``pattern``, each starting at
    one of ``first_frames`` (the first is 0); all-intra input makes every cut frame-exact."""
    stream = ffmpeg.input(str(video))["v:0"]
    cuts = ",".join(str(a) for a in first_frames[1:])
    if cuts:
        out = stream.output(str(pattern), **{"c:v": "copy", "f": "segment", "reset_timestamps": 1,
                                             "segment_frames": cuts})
    else:  # one segment: a plain copy (the segment muxer needs at least one cut)
        out = stream.output(str(pattern) % 0, **{"c:v": "copy"})
    run_ffmpeg(out, f"splitting {video} into chunks")


# -------------------------------------------------------------------------------------------- audio
def decode_audio(path: str | Path, sample_rate: int = 16000, role: str = "audio",
                 channels: int | None = None) -> np.ndarray:
    """Decode the first audio stream of any file ffmpeg reads to mono float32 at ``sample_rate``.

    Channels are averaged, as librosa (the reference's loader) does; ffmpeg's own ``-ac 1`` downmix
    would make stereo 3 dB louder and shift every mel value. ``channels``: the probed channel count
    (probed here when not given).
    """
    channels = max(1, probe_audio(path, role).channels if channels is None else channels)
    pcm = ffmpeg.input(str(path))["a:0"].output("pipe:", vn=None, f="f32le", acodec="pcm_f32le", ac=channels,
                                                ar=sample_rate)
    proc = subprocess.run(ffmpeg_command(pcm), capture_output=True)
    if proc.returncode != 0:
        raise InputError(f"{role} {path}: its audio cannot be decoded ({ffmpeg_log(proc.stderr, 300)})")
    samples = np.frombuffer(proc.stdout, np.float32)
    if samples.size < channels:
        raise InputError(f"{role} {path}: audio stream has zero length")
    samples = samples[: samples.size - samples.size % channels].reshape(-1, channels)
    return samples.mean(axis=1, dtype=np.float32)


def decode_pcm16(path: str | Path, sample_rate: int = 16000, role: str = "audio") -> np.ndarray:
    """The first audio stream as int16 mono samples at ``sample_rate``, downmixed by ffmpeg itself
    (``-ac 1``): the samples SyncNet's evaluation extracts (not :func:`decode_audio`'s average)."""
    pcm = ffmpeg.input(str(path))["a:0"].output("pipe:", vn=None, f="s16le", acodec="pcm_s16le", ac=1,
                                                ar=sample_rate)
    proc = subprocess.run(ffmpeg_command(pcm), capture_output=True, check=False)
    if proc.returncode != 0:
        raise InputError(f"{role} {path}: its audio cannot be decoded ({ffmpeg_log(proc.stderr, 300)})")
    return np.frombuffer(proc.stdout[: len(proc.stdout) // 2 * 2], "<i2").astype(np.int16)


def write_audio_track(src: str | Path, dst: str | Path, codec: str = "flac") -> Path:
    """Copy the first audio stream of ``src`` to ``dst`` re-encoded losslessly (``flac``) or as ``aac``."""
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.stem}.part{dst.suffix}")
    run_ffmpeg(ffmpeg.input(str(src))["a:0"].output(str(tmp), vn=None, **{"c:a": codec}),
               f"extracting audio of {src}")
    os.replace(tmp, dst)
    return dst


def mux(video: str | Path, audio: str | Path, dst: str | Path, audio_codec: str = "aac",
        audio_bitrate: str = "192k") -> Path:
    """Copy the video stream of ``video`` and encode the audio of ``audio`` into ``dst`` (atomic)."""
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.stem}.part{dst.suffix}")
    encode = {"c:v": "copy", "c:a": audio_codec}
    if audio_codec == "aac":
        encode["b:a"] = audio_bitrate
    if dst.suffix.lower() in {".mp4", ".mov", ".m4v"}:
        encode["movflags"] = "+faststart"
    out = ffmpeg.output(ffmpeg.input(str(video))["v:0"], ffmpeg.input(str(audio))["a:0"], str(tmp), **encode)
    try:
        run_ffmpeg(out, f"muxing {dst.name}")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dst)
    return dst
