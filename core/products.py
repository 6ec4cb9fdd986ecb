"""What the stages hand each other: typed, immutable values, stored in the work area as JSON.

Files are named by path (local) or URL (remote work area). Every stage product also says which run
made it (:class:`Product`): its content key, for the keys of the stages after it, and the seconds and
bytes the stage table reports.
"""
from __future__ import annotations

from fractions import Fraction

from pydantic import BaseModel, ConfigDict

from core.media import AudioInfo, VideoInfo


class Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Job(Value):
    """The probed inputs: what every later stage reads instead of probing again."""

    audio: str              # as the user gave them (paths or URLs)
    video: str
    output: str
    audio_sha256: str       # content hashes: the root of every stage's key
    video_sha256: str
    audio_info: AudioInfo
    video_info: VideoInfo


class Product(Value):
    key: str = ""           # content key of the stage run that made it
    started: float = 0.0    # when that run started (Unix time)
    seconds: float = 0.0    # time that run took
    bytes: int = 0          # size of its files
    worker: str = ""        # host:pid that made it
    reused: bool = False    # this run found it finished in the work area


class FaceDetections(Product):
    """Every face the detector found in every frame (a :class:`models.face_track.Detections` file)."""

    detections: str
    n_frames: int
    faces: int
    cuts: int = 0           # shot cuts found


class SyncedVideo(Product):
    """Wav2Lip's output: lossless video with the audio (FLAC), and the face track it used."""

    video: str
    face_track: str
    fps_num: int
    fps_den: int
    n_frames: int           # output frames (they cover the audio)
    n_source: int           # frames of the input video
    loop: str = "forward"   # which source frame each output frame shows (models.face_track.source_index)
    width: int
    height: int
    sar_num: int = 1        # the input's sample aspect ratio, for the final encode
    sar_den: int = 1
    tracks: int = 0         # face tracks found
    frames_without_face: int = 0  # source frames with no face to lip-sync

    @property
    def fps(self) -> Fraction:
        return Fraction(self.fps_num, self.fps_den)


class Chunk(Product):
    """Consecutive frames of the synced (or enhanced) video in one lossless file."""

    path: str
    index: int
    start: int              # index of its first frame in the whole video
    n_frames: int


class VideoChunks(Product):
    chunks: tuple[Chunk, ...]


class AudioTrack(Product):
    audio: str


class SilentVideo(Product):
    video: str


class FinalVideo(Product):
    video: str              # the muxed file in the work area
    output: str = ""        # where it was published


class TrackScore(Value):
    """SyncNet's scores of one face track of a video, frames ``first_frame .. first_frame + frames - 1``."""

    first_frame: int
    frames: int
    offset: int
    lse_d: float
    lse_c: float


class SyncScores(Product):
    """SyncNet's verdict on a video (see models/syncnet.py): the offset in frames, LSE-D (lower is
    better), LSE-C (higher is better), and the confidence of each 5-frame window, of the face track in
    best sync, whose first frame is ``first_frame`` (frames counted at 25 fps); ``tracks``: the scores of
    every face track scored, in the order they appear."""

    offset: int
    lse_d: float
    lse_c: float
    first_frame: int
    framewise: tuple[float, ...]
    tracks: tuple[TrackScore, ...] = ()

    def summary(self) -> dict:
        return {"offset": self.offset, "lse_d": self.lse_d, "lse_c": self.lse_c}
