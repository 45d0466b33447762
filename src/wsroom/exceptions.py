"""Exceptions raised by wsroom.

Every exception wsroom raises derives from :class:`WSRoomError`; where a builtin
exception has the exact same meaning it is mixed in, so ``except ValueError`` or
``except RuntimeError`` keeps working::

    WSRoomError
    ├── ConfigurationError (ValueError)     a setting or Room subclass is invalid
    ├── HandshakeRejected                   raised by an authenticate hook to refuse a client
    ├── ProtocolError (ValueError)          a client frame breaks the protocol; has an error code
    ├── EncodeError (ValueError)            the application gave data the codec cannot encode
    ├── ConnectionClosedError (RuntimeError)  a Connection was used after it closed
    └── BackplaneError                      the backplane failed (Redis unreachable, ...)

Errors caused by a client never escape a connection's loop: :class:`ProtocolError` is turned
into an ``error`` frame, and an exception raised by an application hook is logged and answered
with ``internal_error``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "BackplaneError",
    "ConfigurationError",
    "ConnectionClosedError",
    "EncodeError",
    "HandshakeRejected",
    "ProtocolError",
    "WSRoomError",
]


class WSRoomError(Exception):
    """Base class of every exception raised by wsroom."""


class ConfigurationError(WSRoomError, ValueError):
    """A setting passed to wsroom, or a class attribute of a :class:`~wsroom.Room`, is invalid.

    Raised when the object is created, never later while clients are connected.
    """


class HandshakeRejected(WSRoomError):
    """Refuse a client during the WebSocket handshake, before the upgrade.

    Raise it from an ``authenticate`` hook. Adapters answer the HTTP upgrade request with
    ``status`` (401 for missing or bad credentials, 403 for valid credentials without access)
    and ``reason`` as the body. Where the server framework cannot refuse before accepting,
    the connection is accepted and closed at once with code 1008.

    Args:
        status: HTTP status of the refusal; 401 or 403 in practice.
        reason: Short human-readable text sent to the client. Never put secrets in it.
        headers: Extra response headers (wsroom's 429 sets ``Retry-After``), where the
            server framework can send them.
    """

    def __init__(
        self,
        status: int = 403,
        reason: str = "Forbidden",
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers: dict[str, str] = dict(headers) if headers else {}
        """Extra headers for the refusal's HTTP response."""

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.reason}"


class ProtocolError(WSRoomError, ValueError):
    """A client frame that the server cannot serve.

    Raise it from a hook to answer the current frame with an ``error`` frame carrying
    ``code`` (one of :class:`~wsroom.ErrorCode`) and ``message``; the connection stays open.
    ``message`` goes to the client verbatim, so it must not contain internal details.

    Args:
        code: The error code sent to the client, e.g. ``"forbidden"``.
        message: Human-readable explanation sent to the client.
        ref: The client's ``ref`` to echo; filled in by the server when omitted.
    """

    def __init__(self, code: str, message: str, ref: str | int | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.ref = ref

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class EncodeError(WSRoomError, ValueError):
    """The application passed data that the :class:`~wsroom.MessageProtocol` cannot encode.

    With the default JSON protocol: objects that are not JSON values (sets, datetimes,
    custom classes), ``NaN`` or infinite floats, or non-string dictionary keys.
    Convert the value to plain JSON types before sending it.
    """

    def __init__(self, message: str, value: Any = None) -> None:
        super().__init__(message)
        self.value = value


class ConnectionClosedError(WSRoomError, RuntimeError):
    """A :class:`~wsroom.Connection` was used after it closed.

    Sending to a closed connection through the manager or a room is never an error
    (the frame is dropped); this is raised only by explicit per-connection calls.
    """


class BackplaneError(WSRoomError):
    """The backplane could not complete an operation (for example, Redis is unreachable)."""
