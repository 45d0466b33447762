# conftest.py: an adapter that cannot cut TCP connections, on one node and on two.
import os

import pytest

from wsroom.conformance import ABORT, Server, over_redis

from task_adapter_server import task_adapter_server

pytest_plugins = ["wsroom.conformance.plugin"]


def pytest_wsroom_servers(config: pytest.Config) -> dict[str, Server]:
    one = Server(task_adapter_server, lacks={ABORT})
    servers = {"task": one}
    redis_url = os.environ.get("REDIS_URL")  # e.g. redis://127.0.0.1:6379/0
    if redis_url:
        # Two nodes of the adapter sharing rooms through Redis, behind one address.
        servers["task+redis"] = over_redis(one, redis_url)
    return servers
