"""One wsroom node in a process of its own, for the multi-process tests.

    python -m tests.node_process REDIS_URL PREFIX

prints its port, then serves until SIGINT (graceful) or until it is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from wsroom import ConnectionManager, Handshake
from wsroom.adapters.websockets import serve
from wsroom.backplane.redis import RedisBackplane

HEARTBEAT = 0.3
NODE_TTL = 1.5


def user_from_query(handshake: Handshake) -> str | None:
    return handshake.query.get("user") or None


async def main(url: str, prefix: str) -> None:
    backplane = RedisBackplane(
        url, prefix=prefix, heartbeat=HEARTBEAT, node_ttl=NODE_TTL, timeout=1.0
    )
    manager = ConnectionManager(authenticate=user_from_query, backplane=backplane)
    async with serve(manager, "127.0.0.1", 0) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1], sys.argv[2]))
