"""A wsroom server in a process of its own, for the Node.js tests of wsroom.js.

    python -m tests.js.server [--port N] [--heartbeat S] [--max-queue N] [--history N]
                              [--rate R --burst B] [--redis-url URL] [--prefix P]
    python -m tests.js.server --delete-prefix P [--redis-url URL]

serves a ``ConnectionManager`` with the ``websockets`` asyncio adapter on 127.0.0.1 (port 0,
or ``--port`` to come back on the port of a server that was killed), prints its port as one
line on stdout, then serves until SIGTERM or SIGINT, when it shuts down gracefully (clients
get close code 1001). ``--delete-prefix`` deletes the Redis keys of a prefix the tests used,
and exits.

What the tests can make it do:

* Authentication from the query string: ``?token=bad`` is refused with HTTP 401,
  ``?token=banned`` with 403; otherwise the user is ``?name=``, or a fresh ``user-<hex>``.
* Rooms: ``private-*`` refuses joins (``forbidden``) unless the join's ``data`` is
  ``"secret"``; ``slowjoin-*`` answers a join after ``data`` seconds (0.5 by default);
  ``tiny-*`` holds one member (``room_full``); ``nosuch-*`` does not exist
  (``forbidden``); ``broken-*`` has a ``can_join`` that raises (``internal_error``); every
  other room is an :class:`AppRoom`, whose ``on_typing`` broadcasts a ``typing`` event to
  the others, ``on_boom`` raises (``internal_error``), ``on_count`` answers with
  data (the members and what was asked) and ``on_slow`` takes ``data`` seconds to answer.
* Custom frames without a room, for the tests to steer the server: ``whoami`` (the event
  ``you`` back), ``echo`` (answers with its ``data``), ``kick`` (close this connection with
  ``data`` as code, 1008 by default),
  ``flood`` (``data`` events at once: with a small ``--max-queue``, an eviction with 1013),
  ``disconnect_user`` (``manager.disconnect_user(data)``) and ``announce`` (the event
  ``announcement`` with ``data`` to every connection).
* No rate limits (every test client comes from 127.0.0.1) unless ``--rate`` is given: then
  ``--rate`` frames per second and bursts of ``--burst`` per connection, and no other limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable
from typing import Any

from tests.redis_support import delete_prefix
from wsroom import (
    Connection,
    ConnectionManager,
    Handshake,
    HandshakeRejected,
    Limits,
    Message,
    Room,
)
from wsroom.adapters.websockets import serve
from wsroom.backplane.base import Backplane

DEFAULT_REDIS_URL = os.environ.get("WSROOM_TEST_REDIS_URL") or "redis://127.0.0.1:6379/0"


class AppRoom(Room):
    """The rooms of the tests, with a few custom message types."""

    async def can_join(self, conn: Connection, data: Any) -> bool:
        if self.name.startswith("broken-"):
            raise RuntimeError("can_join of a broken-* room fails (the test asked for it)")
        if self.name.startswith("slowjoin-"):
            await asyncio.sleep(float(data) if isinstance(data, int | float) else 0.5)
        return not self.name.startswith("private-") or data == "secret"

    async def on_typing(self, conn: Connection, message: Message) -> None:
        await self.broadcast_event("typing", {"user": conn.user}, exclude=conn)

    def on_boom(self, conn: Connection, message: Message) -> None:
        raise RuntimeError("boom, as the test asked")

    async def on_count(self, conn: Connection, message: Message) -> dict[str, Any]:
        """Answers with data: who is here, and what was asked."""
        return {"members": sorted(await self.members()), "asked": message.data}

    async def on_slow(self, conn: Connection, message: Message) -> None:
        seconds = message.data if isinstance(message.data, int | float) else 1.0
        await asyncio.sleep(min(float(seconds), 10.0))


class TinyRoom(AppRoom):
    max_members = 1


def room_class_for(history: int | None) -> Callable[[str], type[Room] | None]:
    """The room class resolver: which class serves a room, by its name's prefix."""
    rooms: dict[str, type[AppRoom]] = {"tiny-": TinyRoom, "": AppRoom}
    if history is not None:
        rooms = {
            prefix: type(cls.__name__, (cls,), {"history_size": history})
            for prefix, cls in rooms.items()
        }

    def resolve(name: str) -> type[Room] | None:
        if name.startswith("nosuch-"):
            return None
        return rooms["tiny-"] if name.startswith("tiny-") else rooms[""]

    return resolve


def authenticate(handshake: Handshake) -> str | None:
    query = handshake.query
    token = query.get("token")
    if token == "bad":
        return None  # HTTP 401
    if token == "banned":
        raise HandshakeRejected(403, "Forbidden: banned")
    return query.get("name") or f"user-{secrets.token_hex(4)}"


def install_handlers(manager: ConnectionManager) -> None:
    @manager.handler("whoami")
    def whoami(conn: Connection, message: Message) -> None:
        conn.send_event("you", {"user": conn.user, "connection": conn.id})

    @manager.handler("echo")
    def echo(conn: Connection, message: Message) -> Any:
        return message.data

    @manager.handler("kick")
    def kick(conn: Connection, message: Message) -> None:
        code = message.data if isinstance(message.data, int) else 1008
        # Not awaited: the close waits for the client, whose frames this loop reads.
        conn.begin_close(code, "kicked by the test")

    @manager.handler("flood")
    def flood(conn: Connection, message: Message) -> None:
        count = message.data if isinstance(message.data, int) else 100
        # All at once, before the writer runs: a queue smaller than this overflows.
        for index in range(count):
            if conn.closed:
                break
            conn.send_event("flood", index)

    @manager.handler("disconnect_user")
    async def disconnect_user(conn: Connection, message: Message) -> None:
        await manager.disconnect_user(str(message.data))

    @manager.handler("announce")
    async def announce(conn: Connection, message: Message) -> None:
        await manager.send_all("announcement", message.data)


def make_limits(args: argparse.Namespace) -> Limits:
    overrides: dict[str, Any] = {}
    if args.max_queue is not None:
        overrides["max_queue"] = args.max_queue
    if args.rate is not None:
        # Only the connection's own budget: the user's and the address's would be shared
        # by every client of the test, all on 127.0.0.1.
        overrides["rate"] = args.rate
        overrides["rate_burst"] = args.burst
    return Limits.without_rate_limits(**overrides)


def make_backplane(args: argparse.Namespace) -> Backplane | None:
    if args.prefix is None:
        return None
    from wsroom.backplane.redis import RedisBackplane

    # A node killed by a test is reaped soon, so the tests see its users leave.
    return RedisBackplane(
        args.redis_url, prefix=args.prefix, heartbeat=0.3, node_ttl=1.5, timeout=1.0
    )


async def main(args: argparse.Namespace) -> None:
    if args.delete_prefix is not None:
        await delete_prefix(args.redis_url, args.delete_prefix)
        return
    manager = ConnectionManager(
        room_class_for(args.history),
        authenticate=authenticate,
        limits=make_limits(args),
        heartbeat=args.heartbeat,
        backplane=make_backplane(args),
    )
    install_handlers(manager)
    async with serve(manager, "127.0.0.1", args.port, shutdown_timeout=2.0) as server:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, server.close)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.js.server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--heartbeat", type=float, default=None)
    parser.add_argument("--max-queue", type=int, default=None)
    parser.add_argument("--history", type=int, default=None)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--burst", type=int, default=1)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--prefix", default=None, help="serve rooms through Redis")
    parser.add_argument("--delete-prefix", default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parse(sys.argv[1:])))
