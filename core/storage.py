"""Storage by URL: local paths and any fsspec URL (``s3://`` through s3fs) for inputs and outputs."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec

from core.errors import InputError


def is_remote(url: str) -> bool:
    return "://" in str(url) and not str(url).startswith("file://")


def _strip_file_scheme(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


@contextmanager
def local_copy(url: str, role: str = "input") -> Iterator[str]:
    """A local path holding ``url``'s content: the path itself when local, else a temporary download."""
    url = str(url)
    if not is_remote(url):
        path = _strip_file_scheme(url)
        if not os.path.exists(path):
            raise InputError(f"{role} {url}: file not found")
        yield path
        return
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        raise InputError(f"{role} {url}: object not found")
    with tempfile.TemporaryDirectory(prefix="wav2lip-hq-in-") as tmp:
        local = os.path.join(tmp, os.path.basename(path) or "input")
        fs.get(path, local)
        yield local


def check_output(url: str, inputs: list[str]) -> None:
    """Fail early when the output would overwrite an input or cannot be written."""
    url = str(url)
    if not is_remote(url):
        out = Path(_strip_file_scheme(url)).expanduser().resolve()
        for given in inputs:
            if not is_remote(given) and Path(_strip_file_scheme(given)).expanduser().resolve() == out:
                raise InputError(f"output {url}: is the same file as the input {given}; "
                                 f"choose another output path (inputs are never modified)")
        parent = out.parent
        if out.is_dir():
            raise InputError(f"output {url}: is a directory; give a file name such as {out / 'out.mp4'}")
        if not parent.is_dir():
            raise InputError(f"output {url}: its directory {parent} does not exist")
        try:  # a real write: permission bits say nothing about read-only mounts or root
            with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{out.name}.", suffix=".probe"):
                pass
        except OSError as exc:
            raise InputError(f"output {url}: its directory {parent} is not writable ({exc.strerror})") from exc
    elif url in inputs:
        raise InputError(f"output {url}: is the same object as an input; choose another output URL")


def publish(local_file: str | Path, url: str) -> str:
    """Move a finished local file to ``url``; the destination never holds a partial file.

    Local: copy beside the destination under a temporary name, then rename (atomic on one filesystem).
    Object stores: a single PUT is atomic, the object appears only once complete.
    """
    url = str(url)
    if not is_remote(url):
        dest = Path(_strip_file_scheme(url)).expanduser()
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            shutil.copyfile(local_file, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return str(dest)
    fs, path = fsspec.core.url_to_fs(url)
    fs.put_file(str(local_file), path)
    return url
