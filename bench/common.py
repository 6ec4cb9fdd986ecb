"""What the benchmarks share: clips of a given length and the weight files to run on."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ffmpeg

from core.media import run_ffmpeg


def loop_to(src: str, seconds: float, dst: Path, audio: bool) -> str:
    """``src`` looped and cut to ``seconds`` (re-encoded: a real clip of the wanted length)."""
    codec = {"c:a": "pcm_s16le"} if audio else {"an": None, "c:v": "libx264", "crf": 12, "preset": "veryfast"}
    run_ffmpeg(ffmpeg.input(src, stream_loop=-1).output(str(dst), t=str(seconds), **codec), f"looping {src}")
    return str(dst)


@contextmanager
def weights_available() -> Iterator[str]:
    """The published weights when in the models directory (Wav2Lip GAN, GFPGAN 1.4 and 1.3: the seed's),
    else random-weight files in their official layout (same compute) in a temporary models directory;
    yields which."""
    from models.weights import weight_path

    if all(weight_path(n).is_file() for n in ("wav2lip_gan.pth", "GFPGANv1.4.pth", "GFPGANv1.3.pth")):
        yield "published"
        return
    from tests.checkpoints import make_gfpgan_checkpoint, make_wav2lip_checkpoint

    with tempfile.TemporaryDirectory(prefix="bench-models-") as d:
        make_wav2lip_checkpoint(Path(d) / "wav2lip_gan.pth")
        make_gfpgan_checkpoint(Path(d) / "GFPGANv1.4.pth")
        make_gfpgan_checkpoint(Path(d) / "GFPGANv1.3.pth", seed=1)
        old = os.environ.get("WAV2LIP_HQ_MODELS_DIR")
        os.environ["WAV2LIP_HQ_MODELS_DIR"] = d
        try:
            yield "random (official layout)"
        finally:
            if old is None:
                os.environ.pop("WAV2LIP_HQ_MODELS_DIR")
            else:
                os.environ["WAV2LIP_HQ_MODELS_DIR"] = old
