"""Security and authorization (docs/reliability.md, F30-F33): who may connect, join and
hear what, and what an error may tell.

Every scenario runs against real servers of each adapter over real sockets; handshakes are
written by hand (``tests/reliability/raw.py``) where a client library would not send them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.helpers import ADAPTERS, TIMEOUT, Client, check_error, check_frame, wait_for
from tests.reliability.raw import HandshakeFailed, LogCapture, RawWebSocket
from tests.reliability.suite import record
from wsroom import Connection, ConnectionManager, Handshake, Limits, Message, Room
from wsroom.handshake import OriginPolicy


@asynccontextmanager
async def serving(
    adapter: str, manager: ConnectionManager, logs: LogCapture | None = None
) -> AsyncIterator[str]:
    """A real server of ``adapter``; ``logs`` keeps capturing once it is up (uvicorn's
    logging setup removes the handlers of its loggers)."""
    async with ADAPTERS[adapter](manager) as url:
        if logs is not None:
            logs.attach()
        yield url


async def handshake_status(url: str, headers: list[tuple[str, str]], path: str = "/ws") -> int:
    """101 when the upgrade is accepted (the connection is then closed), else the status."""
    try:
        ws = await RawWebSocket.open(url, path, headers=headers)
    except HandshakeFailed as refused:
        status = refused.status
    else:
        await ws.recv_text()  # the welcome: the server registered the connection
        await ws.aclose()
        status = 101
    assert status is not None, "no HTTP status in the answer"
    return status


# F30. Cross-site WebSocket hijacking.

APP = "https://app.example.com"
# (case, Origin header or None for none, accepted with allowed_origins=[APP]?)
ORIGINS: list[tuple[str, str | None, bool]] = [
    ("foreign site", "https://evil.example", False),
    ("null (sandboxed page, file://)", "null", False),
    ("missing (not a browser)", None, True),
    ("allowed, mixed case", "HTTPS://App.Example.COM", True),
    ("allowed, default port spelled out", "https://app.example.com:443", True),
    ("allowed origin plus a path", "https://app.example.com/chat", False),
    ("allowed origin as a prefix", "https://app.example.com.evil.example", False),
    ("allowed host, other port", "https://app.example.com:8443", False),
    ("http:// against an https allow-list", "http://app.example.com", False),
    ("not a URL", "app.example.com", False),
]


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
async def test_cross_site_origins_are_refused_before_any_work(adapter: str) -> None:
    """F30: every disallowed Origin gets HTTP 403 before the authenticate hook runs (0
    calls) and before any connection exists; a missing Origin follows ``allow_missing``; the
    default policy (no setting) is same-origin only."""
    calls: list[str | None] = []

    def authenticate(handshake: Handshake) -> str:
        calls.append(handshake.origin)
        return "alice"

    matrix: dict[str, int] = {}
    manager = ConnectionManager(authenticate=authenticate, allowed_origins=[APP])
    async with serving(adapter, manager) as url:
        for case, origin, allowed in ORIGINS:
            headers = [] if origin is None else [("Origin", origin)]
            await wait_for(lambda: not manager.connections)  # the last accepted one is gone
            calls.clear()
            status = await handshake_status(url, headers)
            matrix[case] = status
            assert status == (101 if allowed else 403), (case, status)
            assert calls == ([origin] if allowed else []), (case, calls)
            if not allowed:
                assert manager.connections == [], case
        await wait_for(lambda: not manager.connections)
        assert manager.statistics().connections == 0 and manager.rooms() == []
        # allow_missing=False: a handshake without Origin is refused the same way.
        manager.origins = OriginPolicy([APP], allow_missing=False)
        calls.clear()
        matrix["missing, allow_missing=False"] = status = await handshake_status(url, [])
        assert (status, calls) == (403, [])
    # No policy configured: same origin only, never "anything goes".
    default = ConnectionManager(authenticate=authenticate)
    async with serving(adapter, default) as url:
        host = url.removeprefix("ws://")
        calls.clear()
        matrix["default policy, same origin"] = await handshake_status(
            url, [("Origin", f"http://{host}")]
        )
        matrix["default policy, foreign site"] = await handshake_status(
            url, [("Origin", "https://evil.example")]
        )
        assert calls == [f"http://{host}"]
    assert matrix["default policy, same origin"] == 101
    assert matrix["default policy, foreign site"] == 403
    for case, status in matrix.items():
        record("F30", "handshake status", status, adapter=adapter, case=case)


# F31. Unauthorized join of a private room.

SIGNING_KEY = secrets.token_bytes(32)
PRIVATE = "private:ops"
OTHER_PRIVATE = "private:finance"
KNOWN_PRIVATE = {PRIVATE, OTHER_PRIVATE}


def room_token(user: str, room: str, *, ttl: float = 60.0, nonce: str | None = None) -> str:
    """An invitation the application hands out: user, room, expiry and a single-use nonce,
    signed with HMAC-SHA256."""
    claims = {"u": user, "r": room, "exp": time.time() + ttl, "n": nonce or secrets.token_hex(8)}
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode()
    signature = hmac.new(SIGNING_KEY, body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{signature}"


class PrivateRoom(Room):
    """Joined only with a valid, unexpired, single-use token for this user and this room."""

    used_nonces: set[str] = set()

    def can_join(self, conn: Connection, data: Any) -> bool:
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or "." not in token:
            return False
        body, _, signature = token.rpartition(".")
        expected = hmac.new(SIGNING_KEY, body.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature, expected):
            return False
        claims = json.loads(base64.urlsafe_b64decode(body))
        if claims["u"] != conn.user or claims["r"] != self.name or claims["exp"] < time.time():
            return False
        if claims["n"] in self.used_nonces:
            return False  # replayed
        self.used_nonces.add(claims["n"])
        return True


def rooms_of_the_app(name: str) -> type[Room] | None:
    """Private rooms exist only when the application knows them; others are public."""
    if name.startswith("private:"):
        return PrivateRoom if name in KNOWN_PRIVATE else None
    return Room


def user_from_bearer(handshake: Handshake) -> str | None:
    scheme, _, value = handshake.headers.get("authorization", "").partition(" ")
    return value if scheme == "Bearer" and value in ("alice", "bob", "mallory", "eve") else None


async def connect(url: str, user: str) -> Client:
    return await Client.connect(url, additional_headers={"Authorization": f"Bearer {user}"})


async def listen(client: Client, seconds: float) -> list[dict[str, Any]]:
    """Every frame ``client`` receives within ``seconds``."""
    frames: list[dict[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                frames.append(await client.recv(timeout=seconds + 1))
    return frames


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
async def test_private_room_refusals_leak_nothing(adapter: str) -> None:
    """F31: joins without a valid token (none, another user's, expired, for another room,
    replayed, asking for the history, for a room that does not exist) are all refused with
    ``forbidden``; posting to the room is ``not_joined``; the refused clients then hear
    nothing of the room for 2 s while it is busy, and hold no membership."""
    PrivateRoom.used_nonces = set()
    manager = ConnectionManager(rooms_of_the_app, authenticate=user_from_bearer)
    async with serving(adapter, manager) as url:
        alice = await connect(url, "alice")
        await alice.join(PRIVATE, data={"token": room_token("alice", PRIVATE)})
        mallory = await connect(url, "mallory")
        eve = await connect(url, "eve")
        # Eve was invited once: she joins, leaves, then replays her invitation.
        eve_token = room_token("eve", PRIVATE)
        await eve.join(PRIVATE, data={"token": eve_token})
        assert (await eve.request({"type": "leave", "room": PRIVATE}))["type"] == "left"
        joins: list[tuple[str, Client, dict[str, Any]]] = [
            ("no token", mallory, {}),
            ("another user's token", mallory, {"data": {"token": room_token("alice", PRIVATE)}}),
            ("expired token", mallory, {"data": {"token": room_token("mallory", PRIVATE, ttl=-1)}}),
            (
                "token for another room",
                mallory,
                {"data": {"token": room_token("mallory", OTHER_PRIVATE)}},
            ),
            (
                "forged signature",
                mallory,
                {"data": {"token": room_token("mallory", PRIVATE)[:-4] + "0000"}},
            ),
            ("replayed token", eve, {"data": {"token": eve_token}}),
            ("asking for the history", mallory, {"since": 0, "epoch": "x"}),
        ]
        outcomes: dict[str, tuple[str, str]] = {}
        for case, client, fields in joins:
            answer = await client.request({"type": "join", "room": PRIVATE, **fields})
            check_error(answer, "forbidden", answer["ref"])
            outcomes[case] = (answer["code"], answer["message"])
        answer = await mallory.request({"type": "join", "room": "private:nope"})
        outcomes["a private room that does not exist"] = (answer["code"], answer["message"])
        for case, frame_ in [
            ("posting to the room", {"type": "message", "room": PRIVATE, "data": "hi"}),
            ("a custom frame to the room", {"type": "typing", "room": PRIVATE}),
            ("leaving the room", {"type": "leave", "room": PRIVATE}),
        ]:
            answer = await mallory.request(frame_)
            check_error(answer, "not_joined", answer["ref"])
            outcomes[case] = (answer["code"], answer["message"])
        assert {code for code, _ in outcomes.values()} == {"forbidden", "not_joined"}
        assert len({message for code, message in outcomes.values() if code == "not_joined"}) == 1
        for case, (code, message) in outcomes.items():
            record("F31", "refusal", f"{code}: {message}", adapter=adapter, case=case)
        # Nothing of the room reaches the refused clients while it is busy for 2 s.
        here = {c.id: c for c in manager.connections}
        for client in (mallory, eve):
            conn = here[client.welcome["connection"]]
            assert conn.rooms == frozenset() and conn.queued_bytes == 0
        assert manager.rooms() == [PRIVATE]

        async def busy_room() -> int:
            posted = 0
            bob = await connect(url, "bob")
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                await bob.join(PRIVATE, data={"token": room_token("bob", PRIVATE)})
                await alice.send({"type": "message", "room": PRIVATE, "data": {"secret": posted}})
                await manager.broadcast(PRIVATE, {"server": posted})
                await manager.broadcast_event(PRIVATE, "typing", {"user": "alice"})
                assert (await bob.request({"type": "leave", "room": PRIVATE}))["type"] == "left"
                posted += 1
                await asyncio.sleep(0.05)
            await bob.close()
            return posted

        rounds, heard, leaked_mallory, leaked_eve = await asyncio.gather(
            busy_room(), listen(alice, 2.5), listen(mallory, 2.0), listen(eve, 2.0)
        )
        assert rounds > 5
        # The member heard the room (its messages, events and presence)...
        assert {f["type"] for f in heard} >= {"message", "typing", "presence"}, heard[:5]
        # ...the refused clients heard nothing of it.
        assert leaked_mallory == [] and leaked_eve == []
        await mallory.expect_nothing()
        await eve.expect_nothing()
        record(
            "F31", "frames leaked to refused clients in 2 s", 0, adapter=adapter, room_rounds=rounds
        )
        for client in (alice, mallory, eve):
            await client.close()


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
async def test_refusals_do_not_tell_which_private_rooms_exist(adapter: str) -> None:
    """F31: "no such room" and "not allowed" must be the same answer, room name aside."""
    manager = ConnectionManager(rooms_of_the_app, authenticate=user_from_bearer)
    async with serving(adapter, manager) as url:
        mallory = await connect(url, "mallory")
        refused = await mallory.request({"type": "join", "room": PRIVATE})
        missing = await mallory.request({"type": "join", "room": "private:nope"})
        await mallory.close()
    assert refused["code"] == missing["code"] == "forbidden"
    assert refused["message"].replace(PRIVATE, "ROOM") == missing["message"].replace(
        "private:nope", "ROOM"
    )


# F32. Revocation while connected.


class Sessions:
    """The application's session store: tokens, and the ones revoked."""

    def __init__(self) -> None:
        self.tokens = {"tok-alice": "alice", "tok-bob": "bob"}
        self.revoked: set[str] = set()
        self.calls = 0

    def authenticate(self, handshake: Handshake) -> str | None:
        self.calls += 1
        scheme, _, token = handshake.headers.get("authorization", "").partition(" ")
        if scheme != "Bearer" or token in self.revoked:
            return None
        return self.tokens.get(token)


async def _revoke_and_watch(
    node_a: ConnectionManager, url_b: str, sessions: Sessions, room: str
) -> tuple[float, Any, int, int]:
    """Alice on node B; node A revokes her token and calls ``disconnect_user``. Returns how
    long until her close frame, the close, the last id published before the call returned
    and the largest id she received."""
    alice = await Client.connect(url_b, additional_headers={"Authorization": "Bearer tok-alice"})
    await alice.join(room)
    last_id = 0
    received: list[int] = []
    publishing = True

    async def publish() -> None:
        nonlocal last_id
        while publishing:
            last_id = await node_a.broadcast(room, {"n": last_id})
            await asyncio.sleep(0.005)

    async def read() -> None:
        with contextlib.suppress(Exception):
            while True:
                frame_ = await alice.recv()
                if frame_["type"] == "message":
                    received.append(frame_["id"])

    publisher = asyncio.create_task(publish())
    reader = asyncio.create_task(read())
    await wait_for(lambda: len(received) >= 5)
    sessions.revoked.add("tok-alice")
    started = time.monotonic()
    await node_a.disconnect_user("alice")
    published_before = last_id
    await asyncio.wait_for(reader, TIMEOUT)
    took = time.monotonic() - started
    publishing = False
    await publisher
    close = alice.ws.protocol.close_rcvd
    return took, close, published_before, max(received)


async def _rejoin_refused(url: str, sessions: Sessions) -> int:
    calls = sessions.calls
    status = await handshake_status(url, [("Authorization", "Bearer tok-alice")])
    assert sessions.calls == calls + 1, "the authenticate hook did not decide"
    return status


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
async def test_revoked_user_is_cut_off_within_a_second(adapter: str) -> None:
    """F32 (one process): after ``disconnect_user`` the member is closed with 1008 within
    1 s, receives nothing published after the call, and cannot come back with the revoked
    token (the application's authenticate hook refuses it: HTTP 401)."""
    sessions = Sessions()
    manager = ConnectionManager(authenticate=sessions.authenticate)
    async with serving(adapter, manager) as url:
        took, close, published_before, last_received = await _revoke_and_watch(
            manager, url, sessions, "news"
        )
        status = await _rejoin_refused(url, sessions)
        members = await manager.members("news")
    record("F32", "time to revoke", round(took * 1000, 1), "ms", adapter=adapter)
    record("F32", "rejoin with the revoked token", status, adapter=adapter)
    assert close is not None and (close.code, close.reason) == (1008, "disconnected"), close
    assert took < 1.0, f"{took:.3f} s"
    assert last_received <= published_before
    assert status == 401
    assert members == []


async def test_revocation_from_another_node_over_redis(shared_url: str) -> None:
    """F32 (two nodes sharing a Redis): node A revokes a member connected to node B, which
    closes it with 1008 within 2 s; the revoked token is refused at B's handshake."""
    from tests.redis_support import delete_prefix, fresh_prefix
    from wsroom.adapters.websockets import serve
    from wsroom.backplane.redis import RedisBackplane

    prefix = fresh_prefix()
    sessions = Sessions()

    def node() -> ConnectionManager:
        backplane = RedisBackplane(shared_url, prefix=prefix, heartbeat=0.5, node_ttl=3)
        return ConnectionManager(authenticate=sessions.authenticate, backplane=backplane)

    node_a, node_b = node(), node()
    try:
        async with serve(node_a, "127.0.0.1", 0), serve(node_b, "127.0.0.1", 0) as server_b:
            url_b = f"ws://127.0.0.1:{server_b.sockets[0].getsockname()[1]}"
            took, close, published_before, last_received = await _revoke_and_watch(
                node_a, url_b, sessions, "news"
            )
            status = await _rejoin_refused(url_b, sessions)
            members = await node_a.members("news")
    finally:
        await delete_prefix(shared_url, prefix)
    context = {"adapter": "websockets", "backplane": "redis, 2 nodes"}
    record("F32", "time to revoke", round(took * 1000, 1), "ms", **context)
    # Across nodes the close travels over Redis while node A keeps publishing: what A
    # published in that window may still arrive before the close frame (recorded).
    record(
        "F32",
        "messages in flight after the call",
        max(0, last_received - published_before),
        **context,
    )
    assert close is not None and (close.code, close.reason) == (1008, "disconnected"), close
    assert took < 2.0, f"{took:.3f} s"
    assert status == 401
    assert members == []


# F33. Information leaks.

HOOK_SECRET = f"hook-secret-{secrets.token_hex(6)}"
QUERY_TOKEN = f"qs-token-{secrets.token_hex(6)}"
AUTH_SECRET = f"auth-header-{secrets.token_hex(6)}"


class LeakyRoom(Room):
    """Every hook fails with a secret (and a path) in its exception's message."""

    def can_join(self, conn: Connection, data: Any) -> bool:
        if data == "boom":
            raise RuntimeError(f"session store said no: {HOOK_SECRET} in /srv/app/rooms.py")
        return True

    async def on_message(self, conn: Connection, message: Message) -> None:
        if message.data == "boom":
            raise RuntimeError(f"database password {HOOK_SECRET} rejected")
        await self.broadcast(message)

    def on_poke(self, conn: Connection, message: Message) -> None:
        raise ValueError(HOOK_SECRET)

    def on_leave(self, conn: Connection) -> None:
        raise RuntimeError(f"on_leave: {HOOK_SECRET}")


def leaky_authenticate(handshake: Handshake) -> str | None:
    token = handshake.query.get("token")
    if token == "explode":
        raise RuntimeError(f"session store down, dsn=postgres://app:{HOOK_SECRET}@db/app")
    return "alice" if token == QUERY_TOKEN else None


def _client_side(texts: list[str], secret: str) -> int:
    return sum(text.count(secret) for text in texts)


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
async def test_no_secret_in_close_reasons_error_frames_or_logs(adapter: str) -> None:
    """F33: hooks that fail with a secret in their message, a token in the query string and
    one in an Authorization header: no close reason, HTTP body or error frame carries any of
    them (only fixed texts), and no log record carries a token. A failing hook's own
    exception is logged with its traceback, as documented: counted, not a client leak."""
    limits = Limits(max_frame_size=4 * 1024, rate=5.0, rate_burst=10, rate_abuse_strikes=3)
    manager = ConnectionManager(LeakyRoom, authenticate=leaky_authenticate, limits=limits)

    @manager.handler("whoami")
    def whoami(conn: Connection, message: Message) -> None:
        raise KeyError(f"no profile: {HOOK_SECRET}")

    seen: list[str] = []  # everything a client received: bodies, frames, close reasons
    auth = [("Authorization", f"Bearer {AUTH_SECRET}")]
    with LogCapture({"wsroom": logging.DEBUG}) as logs:
        async with serving(adapter, manager, logs) as url:
            statuses = {}
            for token in ("explode", "wrong"):
                try:
                    await RawWebSocket.open(url, f"/ws?token={token}", headers=auth)
                except HandshakeFailed as refused:
                    statuses[token] = refused.status
                    seen.append(refused.head.decode("latin-1"))
            assert statuses == {"explode": 500, "wrong": 401}
            ws = await RawWebSocket.open(url, f"/ws?token={QUERY_TOKEN}", headers=auth)
            check_frame(json.loads(await ws.recv_text()), "welcome")
            frames = [
                {"type": "join", "room": "r", "data": "boom", "ref": 1},
                {"type": "join", "room": "r", "ref": 2},
                {"type": "message", "room": "r", "data": "boom", "ref": 3},
                {"type": "poke", "room": "r", "ref": 4},
                {"type": "whoami", "ref": 5},
                {"type": "leave", "room": "r", "ref": 6},
            ]
            answers = []
            for body in frames:
                await ws.send_text(json.dumps(body))
                answers.append(json.loads(await ws.recv_text()))
            assert [a["type"] for a in answers[:2]] == ["error", "joined"]
            for answer in (answers[0], answers[2], answers[3], answers[4]):
                check_error(answer, "internal_error", answer["ref"])
                assert answer["message"] == "internal server error"
            check_frame(answers[5], "left")
            seen.extend(json.dumps(a) for a in answers)
            # Closes: a frame too large, rate-limit abuse, a revocation.
            await ws.send_text('{"type":"ping","pad":"' + "x" * 5000 + '"}')
            closes = [await ws.wait_closed()]
            await ws.aclose()
            flood = await RawWebSocket.open(url, f"/ws?token={QUERY_TOKEN}", headers=auth)
            await flood.recv_text()
            # The burst (10), then 3 refused frames: the third strike closes it. (More frames
            # would hit test_inputs.py::test_close_completes_while_the_client_keeps_sending.)
            for _ in range(13):
                await flood.send_text('{"type":"ping"}')
            closes.append(await flood.wait_closed())
            await flood.aclose()
            kicked = await RawWebSocket.open(url, f"/ws?token={QUERY_TOKEN}", headers=auth)
            await kicked.recv_text()
            await manager.disconnect_user("alice")
            closes.append(await kicked.wait_closed())
            await kicked.aclose()
            await wait_for(lambda: not manager.connections)
            reasons = [(c.code, c.reason) for c in closes]
            # The websockets adapters refuse the large frame in websockets itself, which
            # gives its own reason ("frame with 5024 bytes exceeds limit of 4096 bytes").
            assert [code for code, _ in reasons] == [1009, 1008, 1008]
            assert reasons[1:] == [(1008, "rate limit exceeded"), (1008, "disconnected")]
            for _, reason in reasons:
                assert len(reason.encode()) <= 123
            seen.extend(reason for _, reason in reasons)
            # The same handshake with the transports' own logs verbose (DEBUG, INFO).
            verbose_from = len(logs.records)
            logs.lower({"websockets": logging.DEBUG, "uvicorn.error": logging.DEBUG})
            quiet = await RawWebSocket.open(url, f"/ws?token={QUERY_TOKEN}", headers=auth)
            await quiet.recv_text()
            await quiet.aclose()
            await wait_for(lambda: not manager.connections)
    default_records = logs.records[:verbose_from]
    verbose = [r for r in logs.records[verbose_from:] if QUERY_TOKEN in logs.text(r)]
    verbose_auth = [r for r in logs.records[verbose_from:] if AUTH_SECRET in logs.text(r)]
    hook_logged = [r for r in default_records if HOOK_SECRET in logs.text(r)]
    context = {"adapter": adapter}
    for name, secret in [
        ("hook secret", HOOK_SECRET),
        ("query token", QUERY_TOKEN),
        ("Authorization header", AUTH_SECRET),
    ]:
        hits = _client_side(seen, secret)
        record("F33", f"{name} in client-visible text", hits, **context)
        assert hits == 0, name
    for name, secret in [("query token", QUERY_TOKEN), ("Authorization header", AUTH_SECRET)]:
        hits = len([r for r in default_records if secret in logs.text(r)])
        record("F33", f"{name} in log records", hits, **context)
        assert hits == 0, [logs.text(r) for r in default_records if secret in logs.text(r)]
    record("F33", "hook exception logged with its traceback", len(hook_logged), **context)
    # Not wsroom's records: websockets (DEBUG) and uvicorn (INFO, its default level) log the
    # request line, websockets at DEBUG every header too (docs/authentication.md warns).
    record("F33", "query token in transport logs at DEBUG", len(verbose), **context)
    record("F33", "Authorization in transport logs at DEBUG", len(verbose_auth), **context)
    assert not any(r.name.startswith("wsroom") for r in verbose + verbose_auth)
    assert all(r.name.startswith("wsroom") for r in hook_logged)
    # authenticate, can_join, on_message, on_poke, the whoami handler, on_leave
    assert len(hook_logged) == 6


def _require_password(port: int, password: str) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(f"CONFIG SET requirepass {password}\r\n".encode())
        assert sock.recv(64).startswith(b"+OK")


def _redis_url(form: str, port: int, password: str) -> str:
    """A URL to a local Redis carrying ``password`` in its userinfo, or as a parameter."""
    if form == "userinfo":
        return f"redis://:{password}@127.0.0.1:{port}/0"
    return f"redis://127.0.0.1:{port}/0?password={password}"


async def test_redis_password_never_reaches_logs_or_clients() -> None:
    """F33: a Redis password, in the URL's userinfo or as its ``password`` parameter, never
    appears in a log record, an exception's message or an error frame: when the password is
    wrong, nor when Redis goes away under a running server."""
    from tests.redis_support import private_redis
    from wsroom import BackplaneError
    from wsroom.adapters.websockets import serve
    from wsroom.backplane.redis import RedisBackplane

    password = f"redis-pw-{secrets.token_hex(6)}"
    wrong = f"wrong-pw-{secrets.token_hex(6)}"
    texts: list[str] = []
    with LogCapture({"wsroom": logging.DEBUG}) as logs:
        for form in ("userinfo", "query"):
            with private_redis() as redis:
                _require_password(redis.port, password)

                refused = ConnectionManager(
                    backplane=RedisBackplane(_redis_url(form, redis.port, wrong), timeout=0.5)
                )
                with pytest.raises(BackplaneError) as failed:
                    await refused.start()
                error: BaseException | None = failed.value
                while error is not None:
                    texts.append(f"{type(error).__name__}: {error}")
                    error = error.__cause__ or error.__context__
                backplane = RedisBackplane(
                    _redis_url(form, redis.port, password),
                    timeout=0.5,
                    heartbeat=0.2,
                    node_ttl=1,
                    reconnect_max=0.2,
                )
                manager = ConnectionManager(backplane=backplane)
                async with serve(manager, "127.0.0.1", 0) as server:
                    port = server.sockets[0].getsockname()[1]
                    client = await Client.connect(f"ws://127.0.0.1:{port}")
                    await client.join("r")
                    logged = len(logs.records)
                    redis.kill()
                    answer = await client.request({"type": "message", "room": "r", "data": 1})
                    check_error(answer, "internal_error", answer["ref"])
                    texts.append(json.dumps(answer))
                    await wait_for(
                        lambda: any(
                            "unavailable" in r.getMessage()
                            for r in logs.records[logged:]  # noqa: B023 - this iteration's
                        )
                    )
                    await client.close()
    texts.extend(logs.text(r) for r in logs.records)
    hits = _client_side(texts, password) + _client_side(texts, wrong)
    record("F33", "Redis password in logs, errors and frames", hits, records=len(logs.records))
    assert hits == 0, [t for t in texts if password in t or wrong in t]
