"""The error raised for bad data input; the CLI prints its message without a traceback."""
from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Missing, empty, malformed or too-short data; the message says what to do."""
