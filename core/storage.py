"""Storage by URL: local paths and any fsspec URL (``s3://`` through s3fs) for inputs and outputs.

Credentials come the standard ways (AWS environment variables, config/profile files, instance roles)
and never appear in logs or errors: URLs are shown without any user-info part.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec

from core.errors import InputError

# Fail fast on unreachable endpoints: the pipeline's own task retries add the backoff.
# SigV4 for presigned links too (output links in the run's report): SigV2 is refused by newer regions.
fsspec.config.conf.setdefault("s3", {}).setdefault("config_kwargs", {"connect_timeout": 5, "read_timeout": 60,
                                                      "retries": {"max_attempts": 2, "mode": "standard"},
                                                      "signature_version": "s3v4"})


STORAGE_BLOCK_ENV = "WAV2LIP_HQ_STORAGE_BLOCK"
_configured = False


def _apply_storage_block() -> None:
    """Credentials from a Prefect block, once per process, when ``WAV2LIP_HQ_STORAGE_BLOCK`` names one.

    The block is a ``Secret`` holding a JSON object of s3fs options (``key``, ``secret``,
    ``endpoint_url``, ``client_kwargs``...). Dask workers inherit the variable and load it themselves,
    so the secret itself never travels with task parameters or appears in logs.
    """
    global _configured
    if _configured:
        return
    _configured = True
    name = os.environ.get(STORAGE_BLOCK_ENV)
    if not name:
        return
    import json

    from prefect.blocks.system import Secret

    value = Secret.load(name).get()
    options = json.loads(value) if isinstance(value, str) else dict(value)
    fsspec.config.conf.setdefault("s3", {}).update(options)


def url_to_fs(url: str):
    """``fsspec.core.url_to_fs`` with this project's storage configuration applied."""
    if is_remote(url):
        _apply_storage_block()
    return fsspec.core.url_to_fs(str(url))


def open_url(url: str, mode: str = "rb"):
    fs, path = url_to_fs(url)
    return fs.open(path, mode)


class StorageAccessError(InputError):
    """Storage refused us (credentials, permissions, missing bucket): retrying will not help."""


class StorageUnreachableError(ConnectionError):
    """Storage could not be reached (network, endpoint down): may be transient."""


def is_remote(url: str) -> bool:
    return "://" in str(url) and not str(url).startswith("file://")


def redact(url: str) -> str:
    """A URL fit for logs: any ``user:secret@`` part removed."""
    return re.sub(r"(://)[^/@]*@", r"\1", str(url))


def refuse_credentials_in_url(url: str, role: str) -> None:
    """Credentials belong in the environment or a storage block: a URL carrying them would echo them
    in every storage error, log line and Prefect parameter view."""
    if redact(url) != str(url):
        raise InputError(f"{role} {redact(url)}: credentials in the URL are not accepted; give them the AWS "
                         f"ways (environment, profile, role) or in a storage block ({STORAGE_BLOCK_ENV})")


def _strip_file_scheme(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


@contextmanager
def storage_errors(url: str, role: str) -> Iterator[None]:
    """Turn storage failures into errors that name the URL and say whether retrying can help."""
    try:
        yield
    except (InputError, FileNotFoundError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{role} {redact(url)}: not found") from exc
    except PermissionError as exc:
        raise StorageAccessError(f"{role} {redact(url)}: access denied ({_short(exc)}); check the "
                                 f"credentials and the bucket's permissions") from exc
    except OSError as exc:
        if not is_remote(url):
            raise
        raise StorageUnreachableError(f"{role} {redact(url)}: storage unreachable ({_short(exc)})") from exc
    except Exception as exc:  # botocore/aiohttp connection errors are not all OSErrors
        name = type(exc).__name__
        if is_remote(url) and ("Connect" in name or "Endpoint" in name or "Timeout" in name):
            raise StorageUnreachableError(f"{role} {redact(url)}: storage unreachable ({name})") from exc
        raise


def _short(exc: BaseException) -> str:
    return redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)[:200]


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
    with tempfile.TemporaryDirectory(prefix="wav2lip-hq-in-") as tmp:
        with storage_errors(url, role):
            fs, path = url_to_fs(url)
            if not fs.exists(path):
                raise InputError(f"{role} {redact(url)}: not found")
            local = os.path.join(tmp, os.path.basename(path) or "input")
            fs.get_file(path, local)
        try:
            yield local
        except InputError as exc:
            # errors found in the downloaded copy must name the input as the user gave it
            if local in str(exc):
                raise type(exc)(str(exc).replace(local, redact(url))) from exc
            raise


def check_output(url: str, inputs: list[str], role: str = "output") -> None:
    """Fail early when the output would overwrite an input or cannot be written; ``role`` names it in
    the messages (``output``, ``plot``, ...)."""
    url = str(url)
    if not is_remote(url):
        refuse_special_output(url, role)
        out = Path(_strip_file_scheme(url)).expanduser().resolve()
        for given in inputs:
            if not is_remote(given) and Path(_strip_file_scheme(given)).expanduser().resolve() == out:
                raise InputError(f"{role} {url}: is the same file as the input {given}; "
                                 f"choose another {role} path (inputs are never modified)")
        parent = out.parent
        if out.is_dir():
            raise InputError(f"{role} {url}: is a directory; give the path of a file in it")
        if not parent.is_dir():
            raise InputError(f"{role} {url}: its directory {parent} does not exist")
        if (why := not_writable(parent)) is not None:
            raise InputError(f"{role} {url}: its directory {parent} is not writable ({why})")
        return
    if url in inputs:
        raise InputError(f"output {redact(url)}: is the same object as an input; choose another output URL")
    check_bucket(url, "output")


def check_bucket(url: str, role: str) -> None:
    """The bucket of ``url`` exists and answers (an unreachable endpoint is not a missing bucket)."""
    with storage_errors(url, role):
        fs, path = url_to_fs(url)
        bucket = path.lstrip("/").split("/", 1)[0]
        try:
            fs.info(bucket)  # raises on an unreachable endpoint, where exists() would say False
        except FileNotFoundError:
            raise StorageAccessError(f"{role} {redact(url)}: bucket {bucket} does not exist or is not visible") \
                from None


def not_writable(folder: Path) -> str | None:
    """Why nothing can be written in ``folder``, or None. A real write: permission bits say nothing
    about read-only mounts or root."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".wav2lip-hq-probe."):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _special(path: Path) -> bool:
    """An existing pipe, device or socket: neither a regular file nor a folder."""
    return path.exists() and not path.is_file() and not path.is_dir()


def refuse_special_input(url: str, role: str) -> None:
    """A local input must be a regular file: a pipe or device cannot be read twice (probe, then stages)."""
    if is_remote(url):
        return
    if _special(Path(_strip_file_scheme(str(url))).expanduser()):
        raise InputError(f"{role} {url}: is not a regular file (a pipe, device or socket); save it to a file first")


def refuse_special_output(url: str, role: str = "output") -> None:
    """An existing output must be a regular file: a device (``/dev/null``), a FIFO or a symlink (such as
    ``/dev/stdout``) would otherwise be replaced by our file."""
    path = Path(_strip_file_scheme(str(url))).expanduser()
    if path.is_symlink():
        raise InputError(f"{role} {url}: is a symbolic link; give the path of a regular file (links are never "
                         f"replaced)")
    if _special(path):
        raise InputError(f"{role} {url}: exists and is not a regular file (a device, FIFO or socket); "
                         f"give the path of a regular file")


def publish(local_file: str | Path, url: str) -> str:
    """Move a finished local file to ``url``; the destination never holds a partial file.

    Local: copy beside the destination under a temporary name, then rename (atomic on one filesystem).
    Object stores: a single PUT is atomic: the object appears only once complete.
    """
    url = str(url)
    if not is_remote(url):
        refuse_special_output(url)  # again: the path may have changed since the job was checked
        dest = Path(_strip_file_scheme(url)).expanduser()
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            shutil.copyfile(local_file, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return str(dest)
    with storage_errors(url, "output"):
        fs, path = url_to_fs(url)
        fs.put_file(str(local_file), path)
    return url


def publish_bytes(data: bytes, url: str) -> str:
    """Write ``data`` to ``url`` (a path or URL) whole, as :func:`publish` does a file."""
    with tempfile.TemporaryDirectory(prefix="wav2lip-hq-publish-") as tmp:
        local = Path(tmp) / (Path(url).name or "data")
        local.write_bytes(data)
        return publish(local, url)
