"""Keeping what clients get wrong out of the servers' error logs (uvicorn, aiohttp)."""

from __future__ import annotations

import logging
import time

__all__ = ["QUIET_CLIENT_ERRORS", "QuietClientErrors"]


class QuietClientErrors(logging.Filter):
    """Keeps what clients get wrong out of the error log: one line a minute at most.

    uvicorn logs a traceback at ERROR for every frame of invalid UTF-8 it receives (and the
    ``websockets`` library logs protocol errors), aiohttp one for every malformed HTTP
    request: a client sending such frames or requests in a loop fills the log. This filter
    drops those records and lets through, at most once a minute, one WARNING counting them.
    :class:`~wsroom.adapters.uvicorn.Server` installs :data:`QUIET_CLIENT_ERRORS` on
    ``uvicorn.error``, and the aiohttp adapter on ``aiohttp.server``; with another runner,
    add it to that logger yourself (``logging.getLogger("uvicorn.error").addFilter(...)``).
    """

    INTERVAL = 60.0

    def __init__(self) -> None:
        super().__init__()
        self.suppressed = 0
        """Client errors dropped since start."""
        self._pending = 0
        self._last = -self.INTERVAL

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop a client error's record, or turn it into the minute's summary."""
        if not _is_client_error(record):
            return True
        self.suppressed += 1
        self._pending += 1
        now = time.monotonic()
        if now - self._last < self.INTERVAL:
            return False
        self._last = now
        record.msg = "%d client protocol error(s) (invalid UTF-8, malformed requests...) "
        record.msg += "in the last minute; the clients were closed; last: %s"
        record.args = (self._pending, _summary(record))
        record.exc_info = None
        record.exc_text = None
        record.levelno = logging.WARNING
        record.levelname = "WARNING"
        self._pending = 0
        return True


QUIET_CLIENT_ERRORS = QuietClientErrors()
"""The filter :class:`Server` installs (once per process) on uvicorn's error logger."""


def _is_client_error(record: logging.LogRecord) -> bool:
    failure = record.exc_info[1] if record.exc_info else None
    if isinstance(failure, UnicodeDecodeError):
        return True
    # aiohttp's refusals of malformed requests (they were answered with 400): matched by
    # module, so that this filter needs no aiohttp.
    if failure is not None and type(failure).__module__ == "aiohttp.http_exceptions":
        return True
    message = record.getMessage() if isinstance(record.msg, str) else ""
    return message.startswith("Invalid UTF-8") or "invalid UTF-8" in message


def _summary(record: logging.LogRecord) -> str:
    if record.exc_info and record.exc_info[1] is not None:
        return f"{type(record.exc_info[1]).__name__}"
    return str(record.msg)[:80]
