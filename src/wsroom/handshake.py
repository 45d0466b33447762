"""What the server knows about a client at the WebSocket handshake, and the origin policy."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, urlsplit

from ._hooks import MaybeAwaitable, call_hook
from .exceptions import ConfigurationError, HandshakeRejected
from .frames import MAX_USER_ID_LENGTH

__all__ = ["Handshake", "Headers", "OriginPolicy"]

logger = logging.getLogger("wsroom")


# The lowercase names a WebSocket handshake usually carries. Every Headers shares these
# strings instead of holding its own lowercased copies. The set is fixed: names a client
# makes up are not added, so no client can make it grow.
_KNOWN_NAMES = {
    name: name
    for name in (
        "accept",
        "accept-encoding",
        "accept-language",
        "authorization",
        "cache-control",
        "connection",
        "cookie",
        "forwarded",
        "host",
        "origin",
        "pragma",
        "referer",
        "sec-fetch-dest",
        "sec-fetch-mode",
        "sec-fetch-site",
        "sec-websocket-extensions",
        "sec-websocket-key",
        "sec-websocket-protocol",
        "sec-websocket-version",
        "upgrade",
        "user-agent",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
    )
}


def _separator(key: str) -> str:
    return "; " if key == "cookie" else ", "


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only HTTP headers.

    A repeated header's values are joined by ``, `` (``; `` for ``Cookie``, as RFC 9113
    section 8.2.3 requires).
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        merged: dict[str, str] = {}
        for name, value in items:
            key = name.lower()
            key = _KNOWN_NAMES.get(key, key)
            if key in merged:
                merged[key] = f"{merged[key]}{_separator(key)}{value}"
            else:
                merged[key] = value
        # Names and values alternate in one tuple, about half the size of a dict: a
        # connection keeps its handshake for its whole life, while lookups are few (the
        # handshake's checks, an authenticate hook) and scan a dozen names at most.
        self._items: tuple[str, ...] = tuple(part for pair in merged.items() for part in pair)

    def _get(self, key: str) -> str | None:
        """The value of the lowercase name ``key``, or ``None``."""
        items = self._items
        index = 0
        try:
            while True:
                index = items.index(key, index)
                if not index & 1:  # a name, not a value that happens to be equal
                    return items[index + 1]
                index += 1
        except ValueError:
            return None

    def _names(self) -> Sequence[str]:
        """The lowercase names, each once, in the order they first came."""
        return self._items[0::2]

    def __getitem__(self, name: str) -> str:
        key = name.lower()
        value = self._get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._get(name.lower()) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"Headers({dict(self)!r})"


class _ASGIHeaders(Headers):
    """Headers over an ASGI scope's ``(name, value)`` byte pairs, decoded at each lookup.

    The ASGI server keeps those pairs for as long as the connection lasts, so a decoded
    copy of every header would only double them; lookups happen a few times per
    connection.
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: Iterable[Sequence[bytes]]) -> None:
        self._items = ()
        # A tuple of the same pairs: what the server or a middleware does to its list
        # later does not change the handshake.
        self._raw = tuple(raw)

    def _get(self, key: str) -> str | None:
        # Decoded before lowering, as Headers does: bytes.lower() leaves non-ASCII alone.
        values = [
            value.decode("latin-1")
            for name, value in self._raw
            if name.decode("latin-1").lower() == key
        ]
        return _separator(key).join(values) if values else None

    def _names(self) -> Sequence[str]:
        return list(dict.fromkeys(name.decode("latin-1").lower() for name, _ in self._raw))


@dataclass(slots=True)
class Handshake:
    """The HTTP upgrade request of one client, as every adapter reports it.

    An ``authenticate`` hook receives it and may put whatever it learns (claims, roles)
    into :attr:`state`, which becomes :attr:`Connection.state <wsroom.Connection.state>`.
    """

    path: str
    """The request path, without the query string, e.g. ``"/ws"``."""
    query_string: str = ""
    """The raw query string, without the ``?``."""
    headers: Headers = field(default_factory=Headers)
    """The request headers (case-insensitive)."""
    remote_address: tuple[str, int] | None = None
    """The client's address as seen by the server (a proxy's, behind a proxy)."""
    subprotocols: tuple[str, ...] = ()
    """The subprotocols the client offered."""
    state: dict[str, Any] = field(default_factory=dict)
    """Free-form data for the application, carried over to the connection."""

    @classmethod
    def from_target(
        cls,
        target: str,
        headers: Iterable[tuple[str, str]],
        remote_address: tuple[str, int] | None = None,
    ) -> Handshake:
        """Build a handshake from a request target (``/ws?a=b``) and raw headers."""
        path, _, query = target.partition("?")
        return cls._of(path, query, Headers(headers), remote_address)

    @classmethod
    def from_asgi(cls, scope: Mapping[str, Any]) -> Handshake:
        """Build a handshake from the scope of an ASGI ``websocket`` connection.

        The headers are read from the scope's ``(name, value)`` byte pairs at each lookup
        rather than copied: the ASGI server keeps those pairs for the connection's whole
        life, and lookups are few.
        """
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        client = scope.get("client")
        address = (str(client[0]), int(client[1])) if client else None
        headers = _ASGIHeaders(scope.get("headers", ()))
        return cls._of(scope.get("path", "/"), query, headers, address)

    @classmethod
    def _of(
        cls,
        path: str,
        query_string: str,
        headers: Headers,
        remote_address: tuple[str, int] | None,
    ) -> Handshake:
        offered = headers.get("sec-websocket-protocol", "")
        subprotocols = tuple(p.strip() for p in offered.split(",") if p.strip())
        return cls(path or "/", query_string, headers, remote_address, subprotocols)

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; for a repeated parameter, the last value."""
        return dict(parse_qsl(self.query_string, keep_blank_values=True))

    @property
    def cookies(self) -> dict[str, str]:
        """Cookies sent with the request; a malformed ``Cookie`` header gives none."""
        header = self.headers.get("cookie")
        if not header:
            return {}
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(header)
        except CookieError:
            return {}
        return {name: morsel.value for name, morsel in jar.items()}

    @property
    def origin(self) -> str | None:
        """The ``Origin`` header, or ``None`` (non-browser clients usually send none)."""
        return self.headers.get("origin")


class OriginPolicy:
    """Decide which ``Origin`` may open a WebSocket (protection against cross-site hijacking).

    Browsers attach cookies to cross-site WebSocket handshakes, so without this check any
    web page could act as a logged-in user. The policy:

    * ``allowed_origins=None`` (the default): same origin only. The ``Origin``'s host and
      port must equal the request's ``Host``.
    * a list such as ``["https://app.example.com"]``: those origins (scheme, host and port,
      compared case-insensitively), plus same-origin requests.
    * ``"*"``: any origin. Only for servers that use no cookies or ambient credentials.

    A handshake without ``Origin`` comes from a non-browser client (which could send any
    ``Origin`` it likes); it is accepted unless ``allow_missing=False``.
    """

    __slots__ = ("_allow_all", "_allow_missing", "_origins")

    def __init__(
        self, allowed_origins: Iterable[str] | str | None = None, *, allow_missing: bool = True
    ) -> None:
        self._allow_missing = allow_missing
        self._allow_all = allowed_origins == "*"
        self._origins: frozenset[str] = frozenset()
        if allowed_origins is not None and not self._allow_all:
            if isinstance(allowed_origins, str):
                raise ConfigurationError(
                    "allowed_origins must be None, '*' or a list of origins such as "
                    "['https://example.com']"
                )
            origins = set()
            for origin in allowed_origins:
                normalized = _normalize_origin(origin)
                if normalized is None:
                    raise ConfigurationError(
                        f"invalid origin {origin!r}: write scheme://host[:port], "
                        "e.g. 'https://example.com'"
                    )
                origins.add(normalized)
            self._origins = frozenset(origins)

    def allows(self, handshake: Handshake) -> bool:
        """Tell whether this handshake's ``Origin`` is allowed."""
        origin = handshake.origin
        if origin is None:
            return self._allow_missing
        if self._allow_all:
            return True
        normalized = _normalize_origin(origin)
        if normalized is None:
            return False
        if normalized in self._origins:
            return True
        host = handshake.headers.get("host")
        return host is not None and _same_host(normalized, host)


def _normalize_origin(origin: str) -> str | None:
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    default = 443 if parts.scheme == "https" else 80
    netloc = parts.hostname if port in (None, default) else f"{parts.hostname}:{port}"
    if ":" in parts.hostname:  # IPv6 literal
        netloc = f"[{parts.hostname}]" if port in (None, default) else f"[{parts.hostname}]:{port}"
    return f"{parts.scheme}://{netloc.lower()}"


def _same_host(normalized_origin: str, host_header: str) -> bool:
    scheme, _, netloc = normalized_origin.partition("://")
    host = host_header.strip().lower()
    default = ":443" if scheme == "https" else ":80"
    if host.endswith(default):
        host = host[: -len(default)]
    return netloc == host


Authenticate: TypeAlias = Callable[["Handshake"], MaybeAwaitable[str | None]]
"""``authenticate(handshake)``: return the user id, ``None`` to refuse with HTTP 401, or raise
:class:`~wsroom.HandshakeRejected` to refuse with another status. ``def`` or ``async def``."""


class HandshakePolicy:
    """Who may open a connection: the checks a manager runs before the upgrade.

    Adapters reach it through the manager (:meth:`ConnectionManager.authorize
    <wsroom.ConnectionManager.authorize>` and its siblings).

    Args:
        authenticate: The authentication hook, or ``None`` (every client is anonymous).
        origins: The origin policy.
        subprotocol: The WebSocket subprotocol the server speaks.
        closing: Tells whether the server is shutting down (new clients get HTTP 503).
    """

    def __init__(
        self,
        *,
        authenticate: Authenticate | None,
        origins: OriginPolicy,
        subprotocol: str,
        closing: Callable[[], bool],
    ) -> None:
        self.authenticate = authenticate
        """The authentication hook, or ``None``."""
        self.origins = origins
        """The origin policy checked at every handshake."""
        self.subprotocol = subprotocol
        """The subprotocol accepted when a client offers it."""
        self._closing = closing

    async def authorize(self, handshake: Handshake) -> str | None:
        """:meth:`admit` (503, 403, 400), then the authenticate hook (401, 403, or 500 when
        the hook fails or returns something that is not a user id).

        Returns:
            The user id, or ``None`` for an anonymous client (no authenticate hook).

        Raises:
            HandshakeRejected: the adapter must refuse the upgrade with its status.
        """
        self.admit(handshake)
        if self.authenticate is None:
            return None
        try:
            user = await call_hook(self.authenticate, handshake)
        except HandshakeRejected:
            raise
        except Exception:
            logger.exception("authenticate hook failed")
            raise HandshakeRejected(500, "Internal Server Error") from None
        if user is None:
            raise HandshakeRejected(401, "Unauthorized")
        if not isinstance(user, str) or not 0 < len(user) <= MAX_USER_ID_LENGTH:
            logger.error(
                "authenticate hook returned %r: it must return a user id "
                "(a string of 1 to %d characters) or None",
                type(user).__name__,
                MAX_USER_ID_LENGTH,
            )
            raise HandshakeRejected(500, "Internal Server Error")
        return user

    def admit(self, handshake: Handshake) -> None:
        """The checks that apply even to clients an application authenticated itself:
        shutdown (HTTP 503), the origin policy (403), the subprotocols offered (400).

        Raises:
            HandshakeRejected: the adapter must refuse the upgrade with its status.
        """
        if self._closing():
            raise HandshakeRejected(503, "Server shutting down")
        if not self.origins.allows(handshake):
            raise HandshakeRejected(403, "Origin not allowed")
        self.select_subprotocol(handshake.subprotocols)

    def select_subprotocol(self, offered: Iterable[str]) -> str | None:
        """The subprotocol to accept among those a client offered; ``None`` when it offered
        none (it is served without one).

        Raises:
            HandshakeRejected: the client offered only subprotocols this server does not
                speak (HTTP 400).
        """
        offered = list(offered)
        if not offered:
            return None
        if self.subprotocol in offered:
            return self.subprotocol
        raise HandshakeRejected(
            400, f"Unsupported subprotocol: this server speaks {self.subprotocol}"
        )
