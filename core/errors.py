"""Error kinds the pipeline tells apart: bad input is reported, never retried."""
from __future__ import annotations


class InputError(ValueError):
    """Something the user gave cannot be used; the message names the input and the problem."""


class NoFaceError(InputError):
    """A frame without a detectable face while the user asked to fail on such frames."""
