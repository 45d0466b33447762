"""What the server knows about a client at the WebSocket handshake, and the origin policy."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, urlsplit

from ._hooks import MaybeAwaitable, call_hook
from ._ratelimit import SharedLimits
from .exceptions import ConfigurationError, HandshakeRejected
from .frames import user_id_problem

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
    client_address: str | None = None
    """The client's IP address as the manager sees it, set before the ``authenticate``
    hook runs: the host of :attr:`remote_address`, or, behind a reverse proxy, the address
    the proxy reports in the header the manager trusts (``client_address_header``). The
    per-address limits count by it."""
    subprotocol: str | None = None
    """The subprotocol the server accepts for this client, or ``None``: set by the manager's
    handshake checks to what :meth:`ConnectionManager.select_subprotocol
    <wsroom.ConnectionManager.select_subprotocol>` chose, which the adapter accepts. An
    adapter that accepted another one sets it before serving the connection. Batched frames
    (``wsroom.v1.batch``) are sent to a connection whose handshake has it here."""

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
        """The cookies of the ``Cookie`` header, parsed as browsers send them.

        Each ``;``-separated ``name=value`` pair, trimmed; a value in double quotes is
        unquoted; names and values are decoded as UTF-8 where their bytes are UTF-8. A pair
        with no ``=`` or an empty name is skipped without losing the others, and for a
        name sent twice the first value wins (RFC 6265 sends the most specific one first).
        At most 200 pairs are read, and a pair longer than
        8192 characters is skipped.
        """
        header = self.headers.get("cookie")
        return _parse_cookies(header) if header else {}

    @property
    def origin(self) -> str | None:
        """The ``Origin`` header, or ``None`` (non-browser clients usually send none)."""
        return self.headers.get("origin")


# The most name=value pairs read from a Cookie header (the rest is ignored): browsers keep
# fewer per site (Chrome 180, Firefox 150).
_MAX_COOKIES = 200
# The longest name=value pair kept, in characters: browsers refuse cookies over 4096 bytes.
_MAX_COOKIE_SIZE = 8192

# A backslash escape inside a quoted value, as Python's http.cookies writes them: an octal
# byte (\054 for a comma) or any one character (\" for a quote).
_COOKIE_ESCAPE = re.compile(r"\\(?:([0-3][0-7][0-7])|(.))", re.DOTALL)


def _parse_cookies(header: str) -> dict[str, str]:
    """Parse a ``Cookie`` header leniently, as browsers send it and as Starlette reads it.

    ``http.cookies.SimpleCookie`` stops at the first pair it dislikes (a JSON value, a
    non-ASCII character), so one cookie of a third-party script would lose every cookie
    after it, the session cookie included. Here a malformed pair is skipped alone:

    * pairs are split on ``;`` and each on its first ``=``; whitespace around names and
      values is removed;
    * a pair without ``=``, or with an empty name, is skipped; an empty value is kept;
    * a name or value whose characters are the bytes of UTF-8 text (servers decode header
      bytes as ISO-8859-1) is decoded as UTF-8, so ``lang=français`` reads as sent;
    * a value in double quotes loses them, and the backslash escapes inside them are
      decoded as :mod:`http.cookies` writes them;
    * for a name that comes twice, the first value is kept: RFC 6265 has browsers send
      cookies with longer paths first;
    * at most 200 pairs are read, and a pair longer than 8192 characters is skipped, so
      a hostile header costs a bounded amount of work and memory.
    """
    cookies: dict[str, str] = {}
    # maxsplit bounds the list: a last element holds whatever is past the limit, unread.
    pairs = header.split(";", _MAX_COOKIES)
    for pair in pairs[:_MAX_COOKIES]:
        if len(pair) > _MAX_COOKIE_SIZE:
            continue
        name, equals, value = pair.partition("=")
        name = name.strip()
        if not equals or not name:
            continue
        name = _utf8(name)
        if name in cookies:
            continue
        value = _utf8(value.strip())
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = _COOKIE_ESCAPE.sub(_unescape, value[1:-1])
        cookies[name] = value
    return cookies


def _unescape(match: re.Match[str]) -> str:
    octal, char = match.groups()
    return chr(int(octal, 8)) if octal is not None else char


def _utf8(text: str) -> str:
    """``text`` decoded as UTF-8 when it is ISO-8859-1-decoded UTF-8 bytes, else itself."""
    if text.isascii():
        return text
    try:
        return text.encode("latin-1").decode("utf-8")
    except UnicodeError:  # not bytes as ISO-8859-1 (already text), or not UTF-8 bytes
        return text


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
        batch_subprotocol: The subprotocol of batched frames the server offers beside it,
            or ``None``.
        closing: Tells whether the server is shutting down (new clients get HTTP 503).
        limits: The budgets shared beyond one connection (handshakes per address).
        client_address_header: The request header a trusted reverse proxy puts the
            client's address in, or ``None`` to use the socket's peer address.
        refused: Called with the HTTP status of every handshake refused, whatever the
            reason (:meth:`authorize` and :meth:`admit`).
    """

    def __init__(
        self,
        *,
        authenticate: Authenticate | None,
        origins: OriginPolicy,
        subprotocol: str,
        batch_subprotocol: str | None = None,
        closing: Callable[[], bool],
        limits: SharedLimits | None = None,
        client_address_header: str | None = None,
        refused: Callable[[int], None] | None = None,
    ) -> None:
        self.authenticate = authenticate
        """The authentication hook, or ``None``."""
        self.origins = origins
        """The origin policy checked at every handshake."""
        self.subprotocol = subprotocol
        """The subprotocol accepted when a client offers it."""
        self.batch_subprotocol = batch_subprotocol
        """The subprotocol of batched frames, preferred when a client offers it, or ``None``."""
        self.client_address_header = (
            client_address_header.strip().lower() if client_address_header else None
        )
        """The lowercase name of the header trusted for the client's address, or ``None``."""
        self._closing = closing
        self._limits = limits
        self._refused = refused
        self._proxy_warned = False
        self._bad_ids = _ThrottledLog(
            "authenticate hook returned an invalid user id, so the client was refused with "
            "HTTP 403: %s. Return a string of 1 to 128 characters without control or "
            "bidirectional control characters and without leading or trailing whitespace "
            "(wsroom.is_valid_user_id tells), or raise HandshakeRejected"
        )

    async def authorize(self, handshake: Handshake) -> str | None:
        """:meth:`admit` (503, 429, 403, 400), then the authenticate hook (401, 403, or 500
        when the hook fails or returns something that is neither a string nor ``None``),
        then the user id's rule (403 for an id PROTOCOL.md does not allow).

        Returns:
            The user id, or ``None`` for an anonymous client (no authenticate hook).

        Raises:
            HandshakeRejected: the adapter must refuse the upgrade with its status.
        """
        try:
            self._admit(handshake)
            if self.authenticate is None:
                return None
            user = await self._run_hook(handshake)
            self.check_user(user)
        except HandshakeRejected as exc:
            self._count(exc)
            raise
        return user

    def _count(self, exc: HandshakeRejected) -> None:
        if self._refused is not None:
            self._refused(exc.status)

    def check_user(self, user: str | None) -> None:
        """Refuse (HTTP 403) a user id that PROTOCOL.md does not allow, and tell the
        application's developer why in the log (at most once a minute: clients choosing
        their own names cannot flood it)."""
        if user is None:
            return
        problem = user_id_problem(user)
        if problem is not None:
            self._bad_ids.log(problem)
            raise HandshakeRejected(403, "Forbidden: invalid user id")

    async def _run_hook(self, handshake: Handshake) -> str:
        assert self.authenticate is not None
        try:
            user = await call_hook(self.authenticate, handshake)
        except HandshakeRejected:
            raise
        except Exception:
            logger.exception("authenticate hook failed")
            raise HandshakeRejected(500, "Internal Server Error") from None
        if user is None:
            raise HandshakeRejected(401, "Unauthorized")
        if not isinstance(user, str):
            logger.error(
                "authenticate hook returned %s: it must return a user id (a string) or None",
                type(user).__name__,
            )
            raise HandshakeRejected(500, "Internal Server Error")
        return user

    def admit(self, handshake: Handshake, user: str | None = None) -> None:
        """The checks that apply even to clients an application authenticated itself:
        shutdown (HTTP 503), the handshake rate of the client's address (429), the origin
        policy (403), the subprotocols offered (400), and ``user``'s id when given (403).
        Sets :attr:`Handshake.client_address`.

        Raises:
            HandshakeRejected: the adapter must refuse the upgrade with its status.
        """
        try:
            self._admit(handshake)
            self.check_user(user)
        except HandshakeRejected as exc:
            self._count(exc)
            raise

    def _admit(self, handshake: Handshake) -> None:
        if self._closing():
            raise HandshakeRejected(503, "Server shutting down")
        handshake.client_address = address = self.client_address(handshake)
        if self._limits is not None:
            retry_after = self._limits.refuse_handshake(address, time.monotonic())
            if retry_after is None and self._limits.too_many_connections(address):
                retry_after = _RETRY_WHEN_FULL
            if retry_after is not None:
                raise HandshakeRejected(
                    429,
                    "Too Many Requests: too many connections from your address",
                    headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
                )
        if not self.origins.allows(handshake):
            raise HandshakeRejected(403, "Origin not allowed")
        handshake.subprotocol = self.select_subprotocol(handshake.subprotocols)

    def client_address(self, handshake: Handshake) -> str | None:
        """The client's address: from the trusted proxy header when one is named and
        present, else the socket's peer address."""
        header = self.client_address_header
        if header is not None:
            value = handshake.headers.get(header)
            if value:
                forwarded = _forwarded_address(header, value)
                if forwarded is not None:
                    return forwarded
        elif not self._proxy_warned and _PROXY_HEADERS.intersection(handshake.headers.keys()):
            self._proxy_warned = True
            logger.warning(
                "handshakes come through a reverse proxy (they carry %s) but the manager "
                "trusts no header for the client's address: every client shares the "
                "proxy's address and its limits. Pass ConnectionManager("
                "client_address_header='X-Forwarded-For') (or the header your proxy sets)",
                "/".join(sorted(_PROXY_HEADERS.intersection(handshake.headers.keys()))),
            )
        remote = handshake.remote_address
        return remote[0] if remote else None

    def select_subprotocol(self, offered: Iterable[str]) -> str | None:
        """The subprotocol to accept among those a client offered; ``None`` when it offered
        none (it is served without one). Batched frames win when offered, whatever the
        order of the offer: a client that lists them at all can read them.

        Raises:
            HandshakeRejected: the client offered only subprotocols this server does not
                speak (HTTP 400).
        """
        offered = list(offered)
        if not offered:
            return None
        if self.batch_subprotocol is not None and self.batch_subprotocol in offered:
            return self.batch_subprotocol
        if self.subprotocol in offered:
            return self.subprotocol
        raise HandshakeRejected(
            400, f"Unsupported subprotocol: this server speaks {self.subprotocol}"
        )


# Seconds a client whose address holds its maximum of connections is told to wait: one of
# them has to close first, which a client cannot know.
_RETRY_WHEN_FULL = 10.0

_PROXY_HEADERS = frozenset(("x-forwarded-for", "x-real-ip", "forwarded"))


def _forwarded_address(header: str, value: str) -> str | None:
    """The client address in a proxy header: the last hop's, which the trusted proxy wrote
    (the earlier ones came from the client and prove nothing)."""
    last = value.rsplit(",", 1)[-1].strip()
    if header == "forwarded":  # RFC 7239: for=192.0.2.60;proto=https, for="[2001:db8::1]:80"
        for pair in last.split(";"):
            name, _, node = pair.strip().partition("=")
            if name.strip().lower() == "for":
                last = node.strip().strip('"')
                break
        else:
            return None
    if last.startswith("["):  # [v6] or [v6]:port
        last = last[1:].partition("]")[0]
    elif last.count(":") == 1:  # v4:port
        last = last.partition(":")[0]
    return last or None


class _ThrottledLog:
    """An ERROR line that a client cannot repeat into a flood: at most one per minute, with
    the count of those left out."""

    __slots__ = ("_last", "_message", "_suppressed")

    INTERVAL = 60.0

    def __init__(self, message: str) -> None:
        self._message = message
        self._last = -self.INTERVAL
        self._suppressed = 0

    def log(self, detail: str) -> None:
        now = time.monotonic()
        if now - self._last < self.INTERVAL:
            self._suppressed += 1
            return
        self._last = now
        suffix = f" ({self._suppressed} more in the last minute)" if self._suppressed else ""
        self._suppressed = 0
        logger.error(self._message + suffix, detail)
