"""The wsroom protocol conformance suite, a pytest plugin for the authors of adapters.

Every rule of PROTOCOL.md, checked against a real server over real sockets: the
handshake and its refusals, joins, messages, presence, direct messages, recovery, custom
types, errors, close codes, and a client that stops reading. An adapter passes when the
whole suite passes against a server running it.

Install ``wsroom[conformance]``, load the plugin and name your servers in a
``conftest.py``::

    pytest_plugins = ["wsroom.conformance.plugin"]

    def pytest_wsroom_servers(config):
        return {"mine": my_server_factory}

then run ``pytest --pyargs wsroom.conformance``. A server factory takes a
``ConnectionManager`` and returns an async context manager yielding the server's base URL,
``ws://127.0.0.1:<port>``. Wrap it in :class:`Server` to say what the adapter lacks, or in
:func:`over_redis` to run it on two nodes sharing rooms through Redis.

This module is the API a ``conftest.py`` imports; ``wsroom.conformance.plugin`` is the
plugin. Importing either imports pytest: the runtime package never does.
"""

from __future__ import annotations

import pytest

from wsroom.conformance._nodes import over_redis
from wsroom.conformance._server import (
    ABORT,
    CAPABILITIES,
    HTTP_REFUSAL,
    Server,
    ServerFactory,
)

__all__ = ["ABORT", "CAPABILITIES", "HTTP_REFUSAL", "Server", "ServerFactory", "over_redis"]

# The suite's helpers check frames with assert: pytest explains a failure best when it
# rewrites them, which it does for the modules named before they are first imported.
pytest.register_assert_rewrite("wsroom.conformance._client", "wsroom.conformance._frames")
