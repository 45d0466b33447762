"""Handshake parsing, the origin policy, and ConnectionManager.authorize."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from wsroom import (
    SUBPROTOCOL,
    ConfigurationError,
    ConnectionManager,
    Handshake,
    HandshakeRejected,
    Headers,
    MessageProtocol,
    OriginPolicy,
    is_valid_user_id,
)
from wsroom.testing import TestClient


def handshake(target: str = "/ws", **headers: str) -> Handshake:
    """A handshake with headers given as keyword arguments (``_`` becomes ``-``)."""
    items = [(name.replace("_", "-").title(), value) for name, value in headers.items()]
    return Handshake.from_target(target, items)


def browser(origin: str | None, host: str | None = "example.com") -> Handshake:
    items: list[tuple[str, str]] = []
    if host is not None:
        items.append(("Host", host))
    if origin is not None:
        items.append(("Origin", origin))
    return Handshake.from_target("/ws", items)


# Handshake.from_target.


def test_path_and_query() -> None:
    hs = Handshake.from_target("/chat/ws?token=abc&room=lobby", [], ("10.0.0.1", 5000))
    assert hs.path == "/chat/ws"
    assert hs.query_string == "token=abc&room=lobby"
    assert hs.query == {"token": "abc", "room": "lobby"}
    assert hs.remote_address == ("10.0.0.1", 5000)
    assert hs.subprotocols == ()
    assert hs.state == {}


@pytest.mark.parametrize(
    ("target", "path"), [("", "/"), ("?a=1", "/"), ("/", "/"), ("/ws?", "/ws")]
)
def test_empty_path_defaults_to_root(target: str, path: str) -> None:
    assert Handshake.from_target(target, []).path == path


def test_query_last_value_wins_and_blank_values_are_kept() -> None:
    hs = Handshake.from_target("/ws?a=1&a=2&b=&c=%20x+y&d&e=%E2%9C%93", [])
    assert hs.query == {"a": "2", "b": "", "c": " x y", "d": "", "e": "✓"}


def test_query_with_a_question_mark_in_a_value() -> None:
    hs = Handshake.from_target("/ws?next=/a?b=c", [])
    assert hs.path == "/ws"
    assert hs.query == {"next": "/a?b=c"}


def test_from_asgi_reads_a_websocket_scope() -> None:
    headers = [
        (b"host", b"example.com"),
        (b"sec-websocket-protocol", b"wsroom.v1, other"),
        (b"Cookie", b"a=1"),
        (b"cookie", b"b=2"),
        (b"x-caf\xe9", b"\xe9t\xe9"),
    ]
    scope = {
        "type": "websocket",
        "path": "/ws",
        "query_string": b"token=abc&room=r%C3%A9",
        "headers": headers,
        "client": ("10.0.0.7", 51234),
    }
    shake = Handshake.from_asgi(scope)
    assert (shake.path, shake.query_string) == ("/ws", "token=abc&room=r%C3%A9")
    assert shake.query == {"token": "abc", "room": "r\u00e9"}
    assert shake.remote_address == ("10.0.0.7", 51234)
    assert shake.subprotocols == ("wsroom.v1", "other")
    assert shake.headers["HOST"] == "example.com"
    assert shake.cookies == {"a": "1", "b": "2"}  # repeated Cookie headers joined by "; "
    assert shake.headers["x-caf\u00e9"] == "\u00e9t\u00e9"  # latin-1, as ASGI says
    assert list(shake.headers) == ["host", "sec-websocket-protocol", "cookie", "x-caf\u00e9"]
    # The headers stay the scope's: a middleware changing its list later changes nothing.
    headers.append((b"origin", b"https://evil.example"))
    assert shake.origin is None


def test_from_asgi_defaults_for_a_minimal_scope() -> None:
    shake = Handshake.from_asgi({"type": "websocket", "headers": []})
    assert (shake.path, shake.query_string, shake.remote_address) == ("/", "", None)
    assert shake.subprotocols == () and len(shake.headers) == 0


def test_state_is_not_shared_between_handshakes() -> None:
    first = Handshake.from_target("/ws", [])
    first.state["user"] = "alice"
    assert Handshake.from_target("/ws", []).state == {}


def test_headers_are_case_insensitive() -> None:
    hs = Handshake.from_target("/ws", [("X-Token", "t1"), ("ORIGIN", "https://a.example")])
    assert hs.headers["x-token"] == "t1"
    assert hs.headers["X-TOKEN"] == "t1"
    assert "x-ToKeN" in hs.headers
    assert hs.headers.get("Origin") == "https://a.example"
    assert hs.origin == "https://a.example"
    assert "missing" not in hs.headers
    assert hs.headers.get("missing") is None
    not_a_name: object = 1
    assert not_a_name not in hs.headers
    with pytest.raises(KeyError):
        hs.headers["missing"]


def test_repeated_headers_are_joined() -> None:
    headers = Headers([("X-A", "1"), ("x-a", "2"), ("X-B", "3"), ("X-A", "4")])
    assert headers["x-a"] == "1, 2, 4"
    assert len(headers) == 2
    assert sorted(headers) == ["x-a", "x-b"]
    assert dict(headers) == {"x-a": "1, 2, 4", "x-b": "3"}
    assert "x-a" in repr(headers)


def test_headers_are_read_only() -> None:
    headers = Headers([("A", "1")])
    with pytest.raises(TypeError):
        headers["a"] = "2"  # type: ignore[index]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["wsroom.v1"], ("wsroom.v1",)),
        (["wsroom.v1, chat"], ("wsroom.v1", "chat")),
        (["  wsroom.v1 ,chat  "], ("wsroom.v1", "chat")),
        (["chat", "wsroom.v1"], ("chat", "wsroom.v1")),
        ([", ,wsroom.v1,,"], ("wsroom.v1",)),
        ([""], ()),
        ([], ()),
    ],
)
def test_subprotocols(values: list[str], expected: tuple[str, ...]) -> None:
    items = [("Sec-WebSocket-Protocol", value) for value in values]
    assert Handshake.from_target("/ws", items).subprotocols == expected


def test_subprotocol_header_name_is_case_insensitive() -> None:
    hs = Handshake.from_target("/ws", [("sec-websocket-protocol", "wsroom.v1")])
    assert hs.subprotocols == ("wsroom.v1",)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["a=1; b=2"], {"a": "1", "b": "2"}),
        (['session="quoted value"'], {"session": "quoted value"}),
        (["a=1", "b=2"], {"a": "1", "b": "2"}),
        (["a=1; Path=/; b=2"], {"a": "1", "Path": "/", "b": "2"}),  # a cookie named Path
        (["  a =  1  ;b=2;  "], {"a": "1", "b": "2"}),
        (["token=abc==; x=a=b"], {"token": "abc==", "x": "a=b"}),  # split on the first '='
        ([], {}),
        ([""], {}),
    ],
)
def test_cookies(values: list[str], expected: dict[str, str]) -> None:
    hs = Handshake.from_target("/ws", [("Cookie", value) for value in values])
    assert hs.cookies == expected


# What browsers really send: SimpleCookie dropped the whole header at the first of these.
BROWSER_COOKIE_HEADERS = [
    # JSON set by an analytics or consent script.
    ('_ga={"a":1,"b":2}; session=tok-alice', {"_ga": '{"a":1,"b":2}'}),
    ('c={"ads":false, "stats":true}; session=tok-alice', {"c": '{"ads":false, "stats":true}'}),
    # Non-ASCII: servers hand the header's UTF-8 bytes over decoded as ISO-8859-1.
    ("lang=fran\u00c3\u00a7ais; session=tok-alice", {"lang": "fran\u00e7ais"}),
    ("lang=fran\u00e7ais; session=tok-alice", {"lang": "fran\u00e7ais"}),  # already text
    ("city=\u6771\u4eac; session=tok-alice", {"city": "\u6771\u4eac"}),
    ("raw=\u00e9t\u00e9; session=tok-alice", {"raw": "\u00e9t\u00e9"}),  # not UTF-8: as is
    # Quoted, with the escapes http.cookies writes.
    ('q="a b"; session="tok-alice"', {"q": "a b"}),
    ('q="x\\054y\\"z\\\\"; session=tok-alice', {"q": 'x,y"z\\'}),
    ('q="unterminated; session=tok-alice', {"q": '"unterminated'}),
    ('q=""; session=tok-alice', {"q": ""}),
    # Empty pairs and values.
    (";; ; session=tok-alice;", {}),
    ("empty=; session=tok-alice", {"empty": ""}),
    # Malformed pairs before the session cookie.
    ("no-equals; =nameless; session=tok-alice", {}),
    ("a b c; [x]=1; session=tok-alice", {"[x]": "1"}),
    ("$Version=1; session=tok-alice; $Path=/", {"$Version": "1", "$Path": "/"}),
    # The first of two cookies of one name wins (RFC 6265: the longer path comes first).
    ("session=tok-alice; session=tok-eve", {}),
]


@pytest.mark.parametrize(("header", "others"), BROWSER_COOKIE_HEADERS)
def test_cookies_as_browsers_send_them(header: str, others: dict[str, str]) -> None:
    cookies = Handshake.from_target("/ws", [("Cookie", header)]).cookies
    assert cookies == {**others, "session": "tok-alice"}


def test_cookies_over_asgi_decode_utf8() -> None:
    scope = {
        "type": "websocket",
        "headers": [(b"cookie", "lang=fran\u00e7ais; na\u00efve=\u2713".encode())],
    }
    cookies = Handshake.from_asgi(scope).cookies
    assert cookies == {"lang": "fran\u00e7ais", "na\u00efve": "\u2713"}


def test_cookie_count_is_bounded() -> None:
    # 100,000 pairs: the first 200 are read, the rest is never split.
    header = "; ".join(f"c{i}=v" for i in range(100_000))
    cookies = Handshake.from_target("/ws", [("Cookie", header)]).cookies
    assert list(cookies) == [f"c{i}" for i in range(200)]
    late = Handshake.from_target("/ws", [("Cookie", "x=1; " * 250 + "session=tok")]).cookies
    assert late == {"x": "1"}


def test_oversized_cookie_is_skipped_alone() -> None:
    big = "x" * 9000
    header = f"big={big}; session=tok-alice; fits={'y' * 4096}"
    cookies = Handshake.from_target("/ws", [("Cookie", header)]).cookies
    assert cookies == {"session": "tok-alice", "fits": "y" * 4096}


def test_no_cookie_header() -> None:
    assert Handshake.from_target("/ws", [("Host", "a")]).cookies == {}


def test_origin_missing() -> None:
    assert Handshake.from_target("/ws", [("Host", "a")]).origin is None


# OriginPolicy: same origin by default.


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("http://example.com", "example.com"),
        ("https://example.com", "example.com"),
        ("http://example.com", "example.com:80"),
        ("https://example.com", "example.com:443"),
        ("http://example.com:80", "example.com"),
        ("https://example.com:443", "example.com"),
        ("http://example.com:8080", "example.com:8080"),
        ("https://EXAMPLE.com", "example.COM"),
        ("HTTPS://Example.Com:443", "EXAMPLE.COM:443"),
        ("http://example.com", " example.com "),
        ("http://127.0.0.1:8000", "127.0.0.1:8000"),
        ("http://[::1]:8080", "[::1]:8080"),
        ("http://[::1]", "[::1]"),
        ("http://[::1]", "[::1]:80"),
        ("https://[2001:DB8::1]", "[2001:db8::1]:443"),
    ],
)
def test_same_origin_is_allowed_by_default(origin: str, host: str) -> None:
    assert OriginPolicy().allows(browser(origin, host))


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("http://evil.example", "example.com"),
        ("http://example.com.evil.example", "example.com"),
        ("http://sub.example.com", "example.com"),
        ("http://example.com", "sub.example.com"),
        ("http://example.com:8080", "example.com"),
        ("http://example.com", "example.com:8080"),
        ("https://example.com", "example.com:80"),
        ("http://example.com", "example.com:443"),
        ("http://[::1]:8080", "[::1]:8081"),
        ("http://[::1]", "[::2]"),
        ("http://example.com", None),
    ],
)
def test_cross_origin_is_refused_by_default(origin: str, host: str | None) -> None:
    assert not OriginPolicy().allows(browser(origin, host))


@pytest.mark.parametrize(
    "origin",
    [
        "null",
        "",
        "example.com",
        "//example.com",
        "ftp://example.com",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http://",
        "http://example.com:99999",
        "http://example.com:abc",
        "http://[::1",
        "http://example.com/path",
        "http://example.com?x=1",
        "http://example.com#frag",
    ],
)
def test_malformed_origin_is_refused(origin: str) -> None:
    assert not OriginPolicy().allows(browser(origin, "example.com"))
    assert not OriginPolicy(["https://example.com"]).allows(browser(origin, "example.com"))


def test_missing_origin_is_allowed_unless_configured() -> None:
    assert OriginPolicy().allows(browser(None))
    assert OriginPolicy(["https://a.example"]).allows(browser(None))
    assert not OriginPolicy(allow_missing=False).allows(browser(None))
    assert not OriginPolicy(["https://a.example"], allow_missing=False).allows(browser(None))
    assert not OriginPolicy("*", allow_missing=False).allows(browser(None))
    # allow_missing=False does not refuse a browser that sends Origin.
    assert OriginPolicy(allow_missing=False).allows(browser("http://example.com"))


def test_star_allows_any_origin() -> None:
    policy = OriginPolicy("*")
    for origin in ("https://evil.example", "null", "http://x:1", "not a url"):
        assert policy.allows(browser(origin, "example.com"))
    assert policy.allows(browser(None))


# OriginPolicy: an explicit list.


def test_listed_origins_are_allowed() -> None:
    policy = OriginPolicy(["https://app.example.com", "http://localhost:3000"])
    assert policy.allows(browser("https://app.example.com", "api.example.com"))
    assert policy.allows(browser("https://APP.example.com:443", "api.example.com"))
    assert policy.allows(browser("http://localhost:3000", "api.example.com"))
    assert not policy.allows(browser("https://evil.example", "api.example.com"))
    assert not policy.allows(browser("https://app.example.com:8443", "api.example.com"))
    assert not policy.allows(browser("http://localhost:3001", "api.example.com"))
    assert not policy.allows(browser("http://localhost", "api.example.com"))


def test_listed_origin_scheme_must_match() -> None:
    policy = OriginPolicy(["https://app.example.com"])
    assert not policy.allows(browser("http://app.example.com", "api.example.com"))
    assert OriginPolicy(["http://app.example.com"]).allows(
        browser("http://app.example.com", "api.example.com")
    )
    assert not OriginPolicy(["http://app.example.com"]).allows(
        browser("https://app.example.com", "api.example.com")
    )


def test_listed_origins_are_normalised() -> None:
    policy = OriginPolicy(["HTTPS://App.Example.com:443/", " http://other.example:80 "])
    assert policy.allows(browser("https://app.example.com", "api.example.com"))
    assert policy.allows(browser("http://other.example", "api.example.com"))


def test_a_list_still_allows_same_origin() -> None:
    policy = OriginPolicy(["https://app.example.com"])
    assert policy.allows(browser("https://api.example.com", "api.example.com"))


def test_ipv6_listed_origin() -> None:
    policy = OriginPolicy(["http://[::1]:8080"])
    assert policy.allows(browser("http://[::1]:8080", "example.com"))
    assert not policy.allows(browser("http://[::1]:8081", "example.com"))
    assert not policy.allows(browser("http://[::2]:8080", "example.com"))
    assert OriginPolicy(["https://[::1]"]).allows(browser("https://[::1]:443", "example.com"))


def test_listed_origins_accept_any_iterable() -> None:
    def origins() -> Iterator[str]:
        yield "https://a.example"

    assert OriginPolicy(origins()).allows(browser("https://a.example", "b.example"))
    assert OriginPolicy(("https://a.example",)).allows(browser("https://a.example", "b.example"))
    assert not OriginPolicy([]).allows(browser("https://a.example", "b.example"))


@pytest.mark.parametrize(
    "origin",
    [
        "https://app.example.com/path",
        "https://app.example.com/?x=1",
        "https://app.example.com#x",
        "app.example.com",
        "*.example.com",
        "ftp://app.example.com",
        "https://",
        "https://app.example.com:99999",
        "null",
        "",
    ],
)
def test_invalid_configured_origin_is_a_configuration_error(origin: str) -> None:
    with pytest.raises(ConfigurationError):
        OriginPolicy([origin])


@pytest.mark.parametrize("value", ["https://example.com", "", "**", "example.com"])
def test_bare_string_other_than_star_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigurationError):
        OriginPolicy(value)
    with pytest.raises(ConfigurationError):
        ConnectionManager(allowed_origins=value)


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="origin"):
        OriginPolicy(["https://x.example/path"])


# ConnectionManager.authorize.


async def test_authorize_without_hook_is_anonymous() -> None:
    manager = ConnectionManager()
    assert await manager.authorize(browser("http://example.com")) is None
    assert await manager.authorize(browser(None)) is None


async def test_authorize_sync_hook() -> None:
    seen: list[Handshake] = []

    def authenticate(hs: Handshake) -> str | None:
        seen.append(hs)
        return hs.query.get("user")

    manager = ConnectionManager(authenticate=authenticate)
    hs = Handshake.from_target("/ws?user=alice", [("Host", "example.com")])
    assert await manager.authorize(hs) == "alice"
    assert seen == [hs]


async def test_authorize_async_hook() -> None:
    async def authenticate(hs: Handshake) -> str | None:
        return hs.cookies.get("session")

    manager = ConnectionManager(authenticate=authenticate)
    hs = Handshake.from_target("/ws", [("Cookie", "session=bob")])
    assert await manager.authorize(hs) == "bob"


@pytest.mark.parametrize("is_async", [False, True])
async def test_authorize_none_is_401(is_async: bool) -> None:
    def sync_hook(hs: Handshake) -> str | None:
        return None

    async def async_hook(hs: Handshake) -> str | None:
        return None

    manager = ConnectionManager(authenticate=async_hook if is_async else sync_hook)
    with pytest.raises(HandshakeRejected) as info:
        await manager.authorize(browser(None))
    assert info.value.status == 401


@pytest.mark.parametrize("is_async", [False, True])
async def test_authorize_handshake_rejected_passes_through(is_async: bool) -> None:
    def sync_hook(hs: Handshake) -> str | None:
        raise HandshakeRejected(403, "Banned")

    async def async_hook(hs: Handshake) -> str | None:
        raise HandshakeRejected(403, "Banned")

    manager = ConnectionManager(authenticate=async_hook if is_async else sync_hook)
    with pytest.raises(HandshakeRejected) as info:
        await manager.authorize(browser(None))
    assert (info.value.status, info.value.reason) == (403, "Banned")
    assert str(info.value) == "HTTP 403: Banned"


def test_handshake_rejected_defaults() -> None:
    rejected = HandshakeRejected()
    assert (rejected.status, rejected.reason) == (403, "Forbidden")


@pytest.mark.parametrize("is_async", [False, True])
async def test_authorize_hook_exception_is_500_and_logged(
    is_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "postgres://admin:hunter2@db"

    def sync_hook(hs: Handshake) -> str | None:
        raise RuntimeError(secret)

    async def async_hook(hs: Handshake) -> str | None:
        raise RuntimeError(secret)

    manager = ConnectionManager(authenticate=async_hook if is_async else sync_hook)
    with caplog.at_level(logging.ERROR, logger="wsroom"), pytest.raises(HandshakeRejected) as info:
        await manager.authorize(browser(None))
    rejected = info.value
    assert rejected.status == 500
    assert secret not in rejected.reason
    assert secret not in str(rejected)
    assert "hunter2" not in repr(rejected.args)
    assert rejected.__cause__ is None
    assert rejected.__suppress_context__
    records = [r for r in caplog.records if r.name == "wsroom" and r.levelno >= logging.ERROR]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], RuntimeError)


@pytest.mark.parametrize("value", [42, b"alice", ["alice"], True])
async def test_authorize_hook_returning_a_non_string_is_500(
    value: object, caplog: pytest.LogCaptureFixture
) -> None:
    def authenticate(hs: Handshake) -> object:
        return value

    manager = ConnectionManager(authenticate=authenticate)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="wsroom"), pytest.raises(HandshakeRejected) as info:
        await manager.authorize(browser(None))
    assert info.value.status == 500
    assert any(r.name == "wsroom" and r.levelno >= logging.ERROR for r in caplog.records)


async def test_authorize_longest_user_id_is_accepted() -> None:
    manager = ConnectionManager(authenticate=lambda hs: "u" * 128)
    assert await manager.authorize(browser(None)) == "u" * 128


@pytest.mark.parametrize(
    "value",
    [
        "",
        "u" * 129,
        "evil\x1b[2J",  # an ESC sequence
        "nul\x00",
        "del\x7f",
        "c1\x85",
        "\u202eresu",  # right-to-left override
        "isolate\u2066",
        " alice",
        "alice\n",
        "surrogate\ud800",
    ],
)
async def test_authorize_refuses_user_ids_the_protocol_forbids_with_403(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    manager = ConnectionManager(authenticate=lambda hs: value)
    with caplog.at_level(logging.ERROR, logger="wsroom"), pytest.raises(HandshakeRejected) as info:
        await manager.authorize(browser(None))
    assert info.value.status == 403
    # The client learns nothing about the rule; the application's developer learns all.
    assert "invalid user id" in info.value.reason
    [record] = [r for r in caplog.records if r.name == "wsroom"]
    assert "is_valid_user_id" in record.getMessage()


@pytest.mark.parametrize("value", ["alice", "Zoë", "李小龙", "a b", "user@example.com", "👩‍💻"])
async def test_authorize_accepts_printable_user_ids(value: str) -> None:
    manager = ConnectionManager(authenticate=lambda hs: value)
    assert await manager.authorize(browser(None)) == value
    assert is_valid_user_id(value)


async def test_a_flood_of_invalid_ids_logs_one_line_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = ConnectionManager(authenticate=lambda hs: hs.query.get("name", ""))
    with caplog.at_level(logging.ERROR, logger="wsroom"):
        for _ in range(25):
            with pytest.raises(HandshakeRejected):
                await manager.authorize(browser(None))
    assert len([r for r in caplog.records if r.name == "wsroom"]) == 1


async def test_an_id_the_application_authenticated_itself_is_checked_too() -> None:
    manager = ConnectionManager()
    manager.admit(browser(None), "alice")
    with pytest.raises(HandshakeRejected) as info:
        manager.admit(browser(None), "bob\u202e")
    assert info.value.status == 403


async def test_authorize_after_shutdown_is_503() -> None:
    calls: list[Handshake] = []

    def authenticate(hs: Handshake) -> str:
        calls.append(hs)
        return "alice"

    manager = ConnectionManager(authenticate=authenticate)
    assert await manager.authorize(browser(None)) == "alice"
    await manager.shutdown()
    assert manager.closing
    with pytest.raises(HandshakeRejected) as info:
        await manager.authorize(browser(None))
    assert info.value.status == 503
    assert len(calls) == 1


async def test_origin_is_refused_before_the_hook_runs() -> None:
    calls: list[Handshake] = []

    async def authenticate(hs: Handshake) -> str:
        calls.append(hs)
        return "alice"

    manager = ConnectionManager(authenticate=authenticate)
    with pytest.raises(HandshakeRejected) as info:
        await manager.authorize(browser("https://evil.example", "example.com"))
    assert info.value.status == 403
    assert calls == []
    # The same client from the right origin reaches the hook.
    assert await manager.authorize(browser("https://example.com", "example.com")) == "alice"
    assert len(calls) == 1


async def test_origin_list_and_missing_origin_through_the_manager() -> None:
    manager = ConnectionManager(allowed_origins=["https://app.example"])
    assert await manager.authorize(browser("https://app.example", "api.example")) is None
    with pytest.raises(HandshakeRejected) as info:
        await manager.authorize(browser("http://app.example", "api.example"))
    assert info.value.status == 403
    assert await manager.authorize(browser(None, "api.example")) is None


async def test_test_client_runs_authorize() -> None:
    def authenticate(hs: Handshake) -> str | None:
        token = hs.query.get("token")
        if token is None:
            return None
        if token != "good":
            raise HandshakeRejected(403, "Bad token")
        hs.state["role"] = "admin"
        return "alice"

    manager = ConnectionManager(authenticate=authenticate)
    async with TestClient(manager, path="/ws?token=good") as client:
        assert client.welcome is not None
        assert client.welcome["user"] == "alice"
        assert client.connection is not None
        assert client.connection.state == {"role": "admin"}
    for path, status in (("/ws", 401), ("/ws?token=bad", 403)):
        with pytest.raises(HandshakeRejected) as info:
            async with TestClient(manager, path=path):
                pass
        assert info.value.status == status
    with pytest.raises(HandshakeRejected) as info:
        async with TestClient(
            manager,
            path="/ws?token=good",
            headers={"Origin": "https://evil.example", "Host": "example.com"},
        ):
            pass
    assert info.value.status == 403
    await manager.shutdown()


# select_subprotocol.


def test_select_subprotocol() -> None:
    manager = ConnectionManager()
    assert manager.select_subprotocol([]) is None
    assert manager.select_subprotocol(()) is None
    assert manager.select_subprotocol(["wsroom.v1"]) == SUBPROTOCOL
    assert manager.select_subprotocol(["chat", "wsroom.v1"]) == "wsroom.v1"
    assert manager.select_subprotocol(iter(["x", "wsroom.v1"])) == "wsroom.v1"
    for offered in (["chat"], ["wsroom.v2"], ["WSROOM.V1"], ["wsroom.v1 "]):
        with pytest.raises(HandshakeRejected) as info:
            manager.select_subprotocol(offered)
        assert info.value.status == 400


def test_select_subprotocol_of_a_custom_protocol() -> None:
    class V2(MessageProtocol):
        subprotocol = "example.v2"

    manager = ConnectionManager(protocol=V2())
    assert manager.select_subprotocol(["wsroom.v1", "example.v2"]) == "example.v2"
    with pytest.raises(HandshakeRejected):
        manager.select_subprotocol(["wsroom.v1"])


async def test_test_client_refuses_unknown_subprotocols() -> None:
    manager = ConnectionManager()
    with pytest.raises(HandshakeRejected) as info:
        async with TestClient(manager, headers={"Sec-WebSocket-Protocol": "chat, mqtt"}):
            pass
    assert info.value.status == 400
    async with TestClient(manager, headers={"Sec-WebSocket-Protocol": "chat, wsroom.v1"}) as c:
        assert c.welcome is not None
    await manager.shutdown()


async def test_test_clients_have_addresses_of_their_own_unless_told() -> None:
    from wsroom import Limits

    manager = ConnectionManager(limits=Limits(handshake_rate=0.01, handshake_burst=1))
    # Distinct clients, distinct addresses: each has its own handshake budget.
    async with TestClient(manager), TestClient(manager):
        pass
    async with TestClient(manager, address="203.0.113.5"):
        with pytest.raises(HandshakeRejected) as refused:
            await TestClient(manager, address="203.0.113.5").connect()
    assert refused.value.status == 429


@pytest.mark.parametrize("value", ["a,b", 'say "hi"', "back\\slash", "semi;colon", "caf\u00e9"])
def test_cookie_values_quoted_by_http_cookies_read_back(value: str) -> None:
    from http.cookies import SimpleCookie

    jar: SimpleCookie = SimpleCookie()
    jar["q"] = value
    header = jar.output(attrs=[], header="").strip() + "; session=tok-alice"
    cookies = Handshake.from_target("/ws", [("Cookie", header)]).cookies
    assert cookies == {"q": value, "session": "tok-alice"}
