"""The servers the suite runs against, what each one can do, and the skips that follow."""

from __future__ import annotations

from collections.abc import Callable, Set
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Final

from wsroom.manager import ConnectionManager

ServerFactory = Callable[[ConnectionManager], AbstractAsyncContextManager[str]]
"""Starts a real server for a manager on 127.0.0.1 (port 0) and yields its base URL,
``ws://127.0.0.1:<port>`` (without a path: the tests connect to ``/ws``)."""

HTTP_REFUSAL: Final = "http_refusal"
"""The adapter refuses a handshake with an HTTP status (400, 401, 403) before the upgrade,
as ``manager.authorize()`` says. Without it, the tests that expect those statuses skip."""

ABORT: Final = "abort"
"""The adapter's ``Transport.abort()`` cuts the TCP connection: a client that stopped
reading sees its connection reset once it is evicted. Without it (an ASGI application
cannot reach its socket), the slow-client tests check everything but the reset."""

CAPABILITIES: Final = frozenset({HTTP_REFUSAL, ABORT})
"""Every capability a test may depend on; a server has them all unless it says it lacks some."""


class InvalidServer(ValueError):
    """A server described wrongly (an unknown capability, no factory...): the plugin stops
    the run with this message rather than a traceback."""


@dataclass(frozen=True)
class Server:
    """A server the conformance suite runs against.

    Call it like its factory: ``async with server(manager) as url``.

    Attributes:
        factory: Starts the server for a manager and yields its ``ws://`` base URL.
        lacks: Capabilities (:data:`HTTP_REFUSAL`, :data:`ABORT`) the adapter lacks: the
            tests, or the parts of tests, that need them are skipped, with the reason.
        nodes: How many nodes the clients of one test are spread over. With more than one,
            the tests that inspect the server-side state of the test's own manager skip.
        name: The test id; the plugin sets it from the key of ``pytest_wsroom_servers``.
    """

    factory: ServerFactory
    lacks: Set[str] = field(default=frozenset())
    nodes: int = 1
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "lacks", frozenset(self.lacks))
        unknown = self.lacks - CAPABILITIES
        if unknown:
            raise InvalidServer(
                f"unknown capabilities {sorted(unknown)}: expected some of {sorted(CAPABILITIES)}"
            )
        if self.nodes < 1:
            raise InvalidServer(f"nodes must be at least 1, not {self.nodes}")

    def __call__(self, manager: ConnectionManager) -> AbstractAsyncContextManager[str]:
        return self.factory(manager)

    def can(self, capability: str) -> bool:
        """Whether the adapter has ``capability`` (one of :data:`CAPABILITIES`)."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}")
        return capability not in self.lacks


def as_server(name: str, server: Server | ServerFactory) -> Server:
    """``server`` named ``name``; a bare factory is a one-node server with every capability."""
    if not isinstance(server, Server):
        if not callable(server):
            raise InvalidServer(f"{name!r}: expected a Server or a server factory, got {server!r}")
        server = Server(server)
    return Server(server.factory, server.lacks, server.nodes, name)


def _skip(reason: str) -> None:
    import pytest

    pytest.skip(reason)


def single_node_only(server: ServerFactory, why: str) -> None:
    """Skip a test that reads one node's server-side state when clients span two nodes."""
    if isinstance(server, Server) and server.nodes > 1:
        _skip(f"{why}: asserts on the test's own node, clients alternate between nodes")


def needs(server: ServerFactory, capability: str, why: str) -> None:
    """Skip a test that needs ``capability`` on a server that lacks it."""
    if isinstance(server, Server) and not server.can(capability):
        _skip(f"{why}: the server lacks {capability!r}")
