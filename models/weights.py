"""The weight manifest, where weight files live, and their verified download.

Weight files keep their official names in ``WAV2LIP_HQ_MODELS_DIR`` (default: the user cache dir).
Hashes and sizes were collected from several independent public records of the released files.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError


@dataclass(frozen=True)
class WeightFile:
    name: str                  # official file name
    urls: tuple[str, ...]      # tried in order
    sha256: str | None
    size: int | None
    purpose: str


MANIFEST: dict[str, WeightFile] = {w.name: w for w in (
    WeightFile(
        "wav2lip_gan.pth",
        ("https://huggingface.co/Nekochu/Wav2Lip/resolve/main/wav2lip_gan.pth",
         "https://huggingface.co/numz/wav2lip_studio/resolve/main/Wav2lip/wav2lip_gan.pth",
         "https://github.com/justinjohn0306/Wav2Lip/releases/download/models/wav2lip_gan.pth"),
        "ca9ab7b7b812c0e80a6e70a5977c545a1e8a365a6c49d5e533023c034d7ac3d8", 435801865,
        "Wav2Lip generator trained with the visual-quality GAN (default)"),
    WeightFile(
        "wav2lip.pth",
        ("https://github.com/OpenTalker/SadTalker/releases/download/v0.0.2/wav2lip.pth",
         "https://huggingface.co/numz/wav2lip_studio/resolve/main/Wav2lip/wav2lip.pth"),
        "b78b681b68ad9fe6c6fb1debc6ff43ad05834a8af8a62ffc4167b7b34ef63c37", 435807851,
        "Wav2Lip generator trained with the sync expert only (more accurate lips, blurrier)"),
    WeightFile(
        "GFPGANv1.4.pth",
        ("https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth",),
        "e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad", 348632874,
        "GFPGAN v1.4 face restorer (default)"),
    WeightFile(
        "GFPGANv1.3.pth",
        ("https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.3.pth",),
        "c953a88f2727c85c3d9ae72e2bd4846bbaf59fe6972ad94130e23e7017524a70", 348632874,
        "GFPGAN v1.3 face restorer"),
    WeightFile(
        "s3fd-619a316812.pth",
        ("https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
         "https://github.com/1adrianb/face-alignment/releases/download/v1.1.0/s3fd-619a316812.pth"),
        "619a31681264d3f7f7fc7a16a42cbbe8b23f31a256f75a366e5a1bcd59b33543", 89843225,
        "S3FD face detector of the Wav2Lip reference (optional)"),
    WeightFile(
        "syncnet_v2.model",
        ("https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
         "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model"),
        "961e8696f888fce4f3f3a6c3d5b3267cf5b343100b238e79b2659bff2c605442", None,
        "SyncNet of the LSE-D / LSE-C lip-sync scores (optional)"),
)}

DEFAULT_SET = ("wav2lip_gan.pth", "GFPGANv1.4.pth")
GFPGAN_FILES = {"1.4": "GFPGANv1.4.pth", "1.3": "GFPGANv1.3.pth"}


class MissingWeightsError(InputError):
    """A weight file the job needs is not in the models directory."""


def models_dir() -> Path:
    """``WAV2LIP_HQ_MODELS_DIR`` or ``<user cache>/wav2lip-hq/models``."""
    env = os.environ.get("WAV2LIP_HQ_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("wav2lip-hq")) / "models"


def weight_path(name: str) -> Path:
    """Where ``name`` is expected (it may not exist)."""
    if name not in MANIFEST:
        raise KeyError(f"unknown weight file {name!r}; known: {', '.join(MANIFEST)}")
    return models_dir() / name


def require(name: str) -> Path:
    """Path of an existing weight file, or an error naming the file, its place and the fetch command."""
    path = weight_path(name)
    if not path.is_file():
        raise MissingWeightsError(
            f"weight file {name} is missing: expected at {path} "
            f"(set WAV2LIP_HQ_MODELS_DIR to use another directory). "
            f"Fetch it with: wav2lip-hq models fetch {name}"
        )
    return path


def is_official(value: str) -> bool:
    """An official file name (or GFPGAN version) rather than the path or URL of a user's checkpoint."""
    return GFPGAN_FILES.get(value, value) in MANIFEST


def checkpoint_file(value: str, option: str = "--checkpoint") -> Path:
    """The local file of a checkpoint option: an official name (or GFPGAN version) in the models
    directory, a local path, or a URL (http, https, s3) downloaded once into ``models_dir()/custom``."""
    name = GFPGAN_FILES.get(value, value)
    if name in MANIFEST:
        return require(name)
    if "://" in value:
        return _custom_download(value, option)
    path = Path(value).expanduser()
    if not path.is_file():
        raise InputError(f"{option}: {value}: no such file (give an official name: "
                         f"{', '.join(MANIFEST)}; a path; or a URL)")
    return path


def _custom_download(url: str, option: str) -> Path:
    from core.storage import redact, refuse_credentials_in_url

    refuse_credentials_in_url(url, option)
    name = Path(url.split("?")[0]).name or "checkpoint.pth"
    dest = models_dir() / "custom" / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            if url.startswith(("http://", "https://")):
                _download(url, out, None, True, name)
            else:
                from core.storage import url_to_fs

                fs, path = url_to_fs(url)
                with fs.open(path, "rb") as src:
                    while block := src.read(1 << 20):
                        out.write(block)
        os.replace(tmp, dest)
    except InputError:
        raise
    except Exception as exc:  # unreachable, not found, denied: the user's URL, reported as given
        raise InputError(f"{option}: {redact(url)}: cannot download ({exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def hash_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read now."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file for cache keys; remembered next to the file while its size and mtime do not
    change. Never a verification: :func:`verify` hashes the bytes themselves."""
    path = Path(path)
    st = path.stat()
    sidecar = path.with_name(f".{path.name}.sha256.json")
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        saved = json.loads(sidecar.read_text())
        if saved.get("stamp") == stamp:
            return saved["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = hash_file(path)
    try:
        sidecar.write_text(json.dumps({"stamp": stamp, "sha256": digest}))
    except OSError:
        pass  # read-only models dir: hashing again next time is fine
    return digest


def verify(name: str) -> tuple[bool, str]:
    """Check a file against the manifest: (ok, message). A file that is not in the manifest (a path, or
    a file of ``models_dir()/custom``) is reported as custom with its SHA-256: nothing to check it against."""
    if name not in MANIFEST:
        path = Path(name).expanduser()
        if not path.is_file():
            path = models_dir() / "custom" / name
        if not path.is_file():
            return False, f"{name}: not in the manifest and no such file"
        return True, f"{name}: custom (not in the manifest), SHA-256 {hash_file(path)}, {path.stat().st_size} bytes"
    w = MANIFEST[name]
    path = weight_path(name)
    if not path.is_file():
        return False, f"{name}: missing (expected at {path})"
    size = path.stat().st_size
    if w.size is not None and size != w.size:
        return False, f"{name}: size {size} bytes, expected {w.size}"
    digest = hash_file(path)  # not the remembered digest: a forged record must not make a bad file pass
    if w.sha256 and digest != w.sha256:
        return False, f"{name}: SHA-256 {digest} does not match the published {w.sha256}"
    return True, f"{name}: ok ({digest[:12]}…, {size} bytes)"


def custom_files() -> list[str]:
    """Names of the downloaded custom checkpoints."""
    folder = models_dir() / "custom"
    return sorted(p.name for p in folder.glob("*") if p.is_file() and not p.name.startswith(".")) \
        if folder.is_dir() else []


def fetch(name: str, force: bool = False, progress: bool = True) -> Path:
    """Download ``name`` from its URLs, verify size and SHA-256, and move it into place atomically."""
    w = MANIFEST[name]
    dest = weight_path(name)
    present_but_bad = None
    if dest.is_file():
        ok, msg = verify(name)
        if ok and not force:
            return dest
        present_but_bad = None if ok else msg
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in w.urls:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                digest = _download(url, out, w.size, progress, name)
            if w.sha256 and digest != w.sha256:
                raise ValueError(f"SHA-256 {digest} does not match the published {w.sha256}")
            os.replace(tmp, dest)
            return dest
        except Exception as exc:  # try the next mirror; every failure is reported below
            errors.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    state = (f"{name} is present at {dest} but fails verification ({present_but_bad}), and a fresh copy "
             f"cannot be downloaded" if present_but_bad else f"cannot download {name}")
    raise ConnectionError(
        f"{state}:\n  " + "\n  ".join(errors)
        + f"\nWithout internet access, download it elsewhere and place it at {dest}"
        + (f" (SHA-256 {w.sha256})" if w.sha256 else "")
    )


def _download(url: str, out, expected_size: int | None, progress: bool, label: str) -> str:
    from tqdm import tqdm

    req = urllib.request.Request(url, headers={"User-Agent": "wav2lip-hq"})
    h = hashlib.sha256()
    with urllib.request.urlopen(req, timeout=30) as resp:
        total = int(resp.headers.get("Content-Length") or 0) or expected_size
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                  disable=not progress) as bar:
            while block := resp.read(1 << 20):
                out.write(block)
                h.update(block)
                bar.update(len(block))
    return h.hexdigest()

