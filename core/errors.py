"""Error kinds the pipeline tells apart: bad input is reported, never retried."""
from __future__ import annotations


class InputError(ValueError):
    """Something the user gave cannot be used; the message names the input and the problem."""


class NoFaceError(InputError):
    """A frame without a detectable face while the user asked to fail on such frames."""


class EncoderError(RuntimeError):
    """ffmpeg refused the encoder settings: the same settings fail again, so this is never retried."""


def is_retryable(exc: BaseException | None) -> bool:
    """Transient failures (storage, network, resources) are worth retrying; bad input never is."""
    if exc is None:
        return False
    return not isinstance(exc, (InputError, EncoderError, KeyboardInterrupt, TypeError, NotImplementedError))


def retry_unless_bad_input(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry only what :func:`is_retryable` accepts."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as err:  # the state's result itself may be unreadable
        exc = err
    return is_retryable(exc if isinstance(exc, BaseException) else None)
