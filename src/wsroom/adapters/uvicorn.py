"""Run a Starlette or FastAPI application with wsroom under uvicorn, with wsroom's limits.

uvicorn reads every WebSocket frame whole before the application sees it, up to its own
``ws_max_size`` (16 MiB by default), waits without limit for a client that sends its
upgrade request one byte at a time, logs a traceback for every frame of invalid UTF-8, and
cannot be asked by an application to cut a client that stopped reading. Run through this
module instead of ``uvicorn.run`` and uvicorn gets wsroom's settings::

    from wsroom.adapters import uvicorn as wsroom_uvicorn

    app = Starlette(routes=wsroom.adapters.starlette.routes("/ws", manager))
    wsroom_uvicorn.run(app, manager, host="0.0.0.0", port=8000)

What it sets up:

* ``ws_max_size`` is ``Limits.max_frame_size``: a larger frame is refused (1009) by uvicorn
  before it is read whole, compressed or not. A larger limit passed in is reported at
  startup.
* Compression (permessage-deflate) as the websockets adapters negotiate it, or none.
* A client must finish its request headers within ``handshake_timeout`` seconds (10, as
  the websockets adapters), else its socket is closed: a slow-header ("slowloris") client
  holds nothing longer. This covers the first request of a connection, which is the
  WebSocket upgrade; keep-alive HTTP requests after it are covered by a reverse proxy
  (docs/deployment.md).
* Clients wsroom evicts (too slow, abusive) have their TCP connection cut, as on the
  websockets adapters, instead of lingering until uvicorn's own timeouts.
* Graceful shutdown on SIGINT/SIGTERM: wsroom closes every client with 1001 after what is
  queued for it (uvicorn alone would send 1012 first), then uvicorn stops.
* Client protocol errors (invalid UTF-8, ...) are not logged with a traceback each: see
  :class:`QuietClientErrors`.

Run by the ``uvicorn`` command instead (with or without ``--workers``) or by gunicorn's
uvicorn workers, an application still gets the graceful shutdown from its lifespan::

    app = Starlette(routes=..., lifespan=wsroom_uvicorn.lifespan(manager))

See :func:`drain_on_signal`, :func:`lifespan` and :class:`GracefulShutdown`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from types import FrameType
from typing import Any, cast

try:
    import uvicorn
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "wsroom.adapters.uvicorn needs uvicorn: pip install 'wsroom[uvicorn]'"
    ) from exc

from ..manager import ConnectionManager
from ._quiet import QUIET_CLIENT_ERRORS, QuietClientErrors
from ._websockets_common import reset_on_close, send_at_once

__all__ = [
    "QUIET_CLIENT_ERRORS",
    "GracefulShutdown",
    "QuietClientErrors",
    "Server",
    "abort",
    "config",
    "drain_on_signal",
    "lifespan",
    "run",
    "wait",
]

logger = logging.getLogger("wsroom.transport")


def config(
    app: Any,
    manager: ConnectionManager,
    *,
    compression: bool = True,
    **kwargs: Any,
) -> uvicorn.Config:
    """A ``uvicorn.Config`` for ``app`` with ``manager``'s limits.

    Args:
        app: The ASGI application (Starlette, FastAPI...) serving ``manager``.
        manager: The manager the application's WebSocket route serves.
        compression: Negotiate permessage-deflate with clients that offer it (browsers
            do). The frame limit applies to the decompressed size either way.
        kwargs: Any other ``uvicorn.Config`` argument (``host``, ``port``, ``log_level``...).
            A ``ws_max_size`` larger than ``manager.limits.max_frame_size`` is reported at
            startup: uvicorn would then read frames wsroom refuses.
    """
    options: dict[str, Any] = {
        "ws_max_size": manager.limits.max_frame_size,
        "ws_per_message_deflate": compression,
        # uvicorn's own graceful shutdown waits without limit by default.
        "timeout_graceful_shutdown": manager.limits.close_timeout + 1.0,
        "lifespan": "auto",
    }
    options.update(kwargs)
    return uvicorn.Config(app, **options)


class Server(uvicorn.Server):
    """A ``uvicorn.Server`` that serves ``manager`` with wsroom's limits (see the module).

    Args:
        config: Made by :func:`config` (or your own ``uvicorn.Config``).
        manager: The manager the application serves.
        shutdown_timeout: Seconds clients get, at shutdown, to receive what is queued for
            them before they are cut.
        handshake_timeout: Seconds a client has to send its whole request head.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        manager: ConnectionManager,
        *,
        shutdown_timeout: float = 5.0,
        handshake_timeout: float = 10.0,
    ) -> None:
        super().__init__(config)
        self.manager = manager
        """The manager served."""
        self.shutdown_timeout = shutdown_timeout
        self.handshake_timeout = handshake_timeout
        self._drain: _SignalDrain | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start uvicorn with wsroom's protocols, then the manager."""
        config = self.config
        if not config.loaded:
            config.load()
        config.http_protocol_class = _with_header_deadline(
            config.http_protocol_class, self.handshake_timeout
        )
        if config.ws_protocol_class is not None:
            config.ws_protocol_class = _with_abort(config.ws_protocol_class)
        limit = self.manager.limits.max_frame_size
        if config.ws_max_size > limit:
            logger.warning(
                "uvicorn's ws_max_size (%d bytes) is larger than wsroom's max_frame_size "
                "(%d bytes): uvicorn reads and decompresses frames up to its size before "
                "wsroom refuses them. Leave ws_max_size to wsroom.adapters.uvicorn.config()",
                config.ws_max_size,
                limit,
            )
        for name in ("uvicorn.error",):
            # One shared filter: adding it again is a no-op, however many servers start.
            logging.getLogger(name).addFilter(QUIET_CLIENT_ERRORS)
        await super().startup(sockets)
        await self.manager.start()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop uvicorn (after the drain :meth:`handle_exit` started)."""
        if not self.manager.closing:
            await self.manager.shutdown(self.shutdown_timeout)
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGINT/SIGTERM: close wsroom's clients with 1001 first, then stop uvicorn (a
        second signal stops at once)."""
        if self._drain is None:
            loop = self.manager.loop
            if loop is None:
                super().handle_exit(sig, frame)
                return
            # Once drained, not super().handle_exit(): uvicorn would re-raise the signal
            # once stopped.
            self._drain = _SignalDrain(
                self.manager, self.shutdown_timeout, loop, then=self._stop, now=super().handle_exit
            )
        self._drain(sig, frame)

    def _stop(self, sig: int, frame: Any) -> None:
        self.should_exit = True


def run(app: Any, manager: ConnectionManager, **kwargs: Any) -> None:
    """Serve ``app`` under uvicorn with ``manager``'s limits until SIGINT or SIGTERM.

    Keyword arguments go to :func:`config` (and from there to ``uvicorn.Config``), except
    ``shutdown_timeout`` and ``handshake_timeout``, which go to :class:`Server`.
    """
    server_options = {
        name: kwargs.pop(name)
        for name in ("shutdown_timeout", "handshake_timeout")
        if name in kwargs
    }
    Server(config(app, manager, **kwargs), manager, **server_options).run()


# Graceful shutdown under a uvicorn that wsroom does not run (the ``uvicorn`` command, its
# ``--workers``, gunicorn's uvicorn workers). uvicorn closes every WebSocket with 1012 as
# soon as SIGINT or SIGTERM arrives, before the ASGI lifespan shutdown, the only hook an
# application has. But uvicorn installs its handler with signal.signal() before the lifespan
# startup runs: there, wsroom puts a handler in front of it that drains the manager, then
# calls uvicorn's.

_HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_SignalHandler = Callable[[int, FrameType | None], Any]


class _SignalDrain:
    """A signal handler that closes ``manager``'s clients with 1001 (after what is queued
    for them), then calls ``then``; a signal during the drain calls ``now`` at once."""

    def __init__(
        self,
        manager: ConnectionManager,
        timeout: float,
        loop: asyncio.AbstractEventLoop,
        *,
        then: _SignalHandler,
        now: _SignalHandler,
    ) -> None:
        self.manager = manager
        self.timeout = timeout
        self.loop = loop
        self.then = then
        self.now = now
        self.previous: dict[int, _SignalHandler] = {}
        self._draining = False
        self._task: asyncio.Task[None] | None = None

    def __call__(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes, maybe in the middle of one of the
        # loop's callbacks: only schedule.
        if self._draining or self.loop.is_closed():
            self.now(sig, frame)
            return
        self._draining = True
        self.loop.call_soon_threadsafe(self._start, sig, frame)

    def _start(self, sig: int, frame: FrameType | None) -> None:
        self._task = self.loop.create_task(self._drain(sig, frame))

    async def _drain(self, sig: int, frame: FrameType | None) -> None:
        started = time.monotonic()
        try:
            await self.manager.shutdown(self.timeout)
        except Exception:
            logger.exception("wsroom's graceful shutdown failed; the server stops all the same")
        else:
            logger.info(
                "%s: wsroom closed its clients with 1001 in %.2f s",
                signal.Signals(sig).name,
                time.monotonic() - started,
            )
        finally:
            self.then(sig, frame)

    # In front of uvicorn's handlers: both signals go to the one uvicorn had for each.

    def _previous(self, sig: int, frame: FrameType | None) -> None:
        self.previous[sig](sig, frame)

    def _hurry(self, sig: int, frame: FrameType | None) -> None:
        # A signal during the drain: uvicorn's first, then, for SIGINT, its second, which
        # stops waiting for connections and tasks (a hook that hangs): Ctrl+C twice stops
        # at once, as without wsroom.
        self.previous[sig](sig, frame)
        if sig == signal.SIGINT:
            self.previous[sig](sig, frame)

    @classmethod
    def install(cls, manager: ConnectionManager, timeout: float) -> _SignalDrain | None:
        """Put a drain of ``manager`` in front of the running uvicorn's SIGINT and SIGTERM
        handlers; ``None`` when there is nothing to do (already there) or it cannot be done."""
        if threading.current_thread() is not threading.main_thread():
            logger.warning(
                "wsroom's graceful shutdown on SIGINT/SIGTERM is not installed: the server "
                "does not run in the main thread; wsroom drains at the lifespan shutdown"
            )
            return None
        current = {sig: signal.getsignal(sig) for sig in _HANDLED_SIGNALS}
        if any(_drains(handler, manager) for handler in current.values()):
            return None  # installed already, or wsroom's own Server runs the application
        if not all(_is_uvicorn_exit(handler) for handler in current.values()):
            logger.warning(
                "wsroom's graceful shutdown on SIGINT/SIGTERM is not installed: the server "
                "is not uvicorn, or handles the signals its own way; wsroom drains at the "
                "lifespan shutdown instead"
            )
            return None
        drain = cls(manager, timeout, asyncio.get_running_loop(), then=_nothing, now=_nothing)
        drain.then, drain.now = drain._previous, drain._hurry
        for sig, handler in current.items():
            drain.previous[sig] = cast(_SignalHandler, handler)
            signal.signal(sig, drain)
        return drain

    def uninstall(self) -> None:
        """Give the signals back to the handlers found at :meth:`install`, unless another
        handler was put in front since (this one then passes the signals on)."""
        self._draining = True
        self.now = self.then
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self.previous.items():
            if signal.getsignal(sig) is self:
                signal.signal(sig, handler)


def _nothing(sig: int, frame: FrameType | None) -> None:
    pass


def _drains(handler: Any, manager: ConnectionManager) -> bool:
    if isinstance(handler, _SignalDrain):
        return handler.manager is manager or _drains(handler.previous.get(signal.SIGTERM), manager)
    owner = getattr(handler, "__self__", None)
    return isinstance(owner, Server) and owner.manager is manager


def _is_uvicorn_exit(handler: Any) -> bool:
    # A drain of another manager sits in front of uvicorn's handler: chain in front of it.
    if isinstance(handler, _SignalDrain):
        return True
    owner = getattr(handler, "__self__", None)
    return isinstance(owner, uvicorn.Server) and getattr(handler, "__name__", "") == "handle_exit"


@contextlib.asynccontextmanager
async def drain_on_signal(
    manager: ConnectionManager, *, shutdown_timeout: float = 5.0
) -> AsyncIterator[None]:
    """Start ``manager``, and on SIGINT or SIGTERM close its clients gracefully before
    uvicorn closes them; for an application's ASGI lifespan.

    Enter it in the lifespan startup (what :func:`lifespan` and :class:`GracefulShutdown`
    do) of an application that the ``uvicorn`` command runs, with or without
    ``--workers``, or gunicorn with uvicorn workers. On the first SIGINT or SIGTERM each
    client receives what is queued for it, then a close frame with 1001 (at most
    ``shutdown_timeout`` seconds, after which the rest are cut) and new handshakes get
    HTTP 503; then uvicorn's own handler runs and uvicorn stops as usual. A second signal
    goes to uvicorn at once: a second SIGTERM starts uvicorn's shutdown, a second SIGINT
    (Ctrl+C twice) stops it without waiting for connections and tasks.

    It works by chaining in front of the handler uvicorn installed for the signals, in the
    process's main thread; where that is not uvicorn's (another ASGI server, a uvicorn in
    another thread) it logs a warning and the manager is only shut down at the lifespan
    shutdown. Entering it again for the same manager, or under
    :class:`wsroom.adapters.uvicorn.Server`, which drains by itself, adds nothing. At the
    exit, the signal handlers are given back and the manager is shut down, if no signal
    did.

    Args:
        manager: The manager the application serves.
        shutdown_timeout: Seconds clients get to receive what is queued for them.

    Raises:
        Exception: What :meth:`ConnectionManager.start` raises (an unreachable Redis):
            the startup fails.
    """
    await manager.start()
    drain = _SignalDrain.install(manager, shutdown_timeout)
    try:
        yield
    finally:
        if drain is not None:
            drain.uninstall()
        if not manager.closing:
            await manager.shutdown(shutdown_timeout)


def lifespan(
    manager: ConnectionManager, *, shutdown_timeout: float = 5.0
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """A Starlette or FastAPI ``lifespan`` that runs :func:`drain_on_signal`::

        app = Starlette(routes=routes("/ws", manager), lifespan=wsroom_uvicorn.lifespan(manager))

    An application with a lifespan of its own enters :func:`drain_on_signal` in it instead.
    """

    def app_lifespan(app: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return drain_on_signal(manager, shutdown_timeout=shutdown_timeout)

    return app_lifespan


class GracefulShutdown:
    """ASGI middleware running :func:`drain_on_signal` around any ASGI application's
    lifespan: a plain ASGI application, or a Starlette or FastAPI one with a lifespan of its
    own::

        app = GracefulShutdown(app, manager)
        # Starlette: Starlette(..., middleware=[Middleware(GracefulShutdown, manager=manager)])
        # FastAPI: app.add_middleware(GracefulShutdown, manager=manager)

    At the lifespan startup the manager starts before the application's own startup; at
    the shutdown wsroom's clients are closed before the application's own shutdown runs.
    An application that does not speak the lifespan protocol gets none of its messages.

    Args:
        app: The ASGI application.
        manager: The manager it serves.
        shutdown_timeout: As :func:`drain_on_signal`'s.
    """

    def __init__(
        self, app: Any, manager: ConnectionManager, *, shutdown_timeout: float = 5.0
    ) -> None:
        self.app = app
        self.manager = manager
        self.shutdown_timeout = shutdown_timeout

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve ``scope``: the lifespan here, anything else by the application."""
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        await _Lifespan(self, scope, receive, send).run()


class _Lifespan:
    """One lifespan of :class:`GracefulShutdown`: the server's messages, and the
    application's lifespan run beside it on a pair of queues."""

    def __init__(self, owner: GracefulShutdown, scope: Any, receive: Any, send: Any) -> None:
        self.owner = owner
        self.scope = scope
        self.receive = receive
        self.send = send
        self.to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.from_app: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.taken = 0  # messages the application received

    async def run(self) -> None:
        owner = self.owner
        message = await self.receive()
        if message["type"] != "lifespan.startup":
            return
        drain: contextlib.AbstractAsyncContextManager[None] | None
        drain = drain_on_signal(owner.manager, shutdown_timeout=owner.shutdown_timeout)
        try:
            await drain.__aenter__()
        except Exception as exc:
            await self.send({"type": "lifespan.startup.failed", "message": repr(exc)})
            return
        app = asyncio.create_task(self._app())
        try:
            answer = await self._forward(message)
            if answer["type"] == "lifespan.startup.failed":
                await self.send(answer)
                return
            await self.send({"type": "lifespan.startup.complete"})
            message = await self.receive()
            # wsroom's clients first: the application's hooks may need what its own
            # shutdown closes.
            await drain.__aexit__(None, None, None)
            drain = None
            await self.send(await self._forward(message))
        finally:
            if drain is not None:
                await drain.__aexit__(None, None, None)
            app.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await app

    async def _app(self) -> None:
        try:
            await self.owner.app(self.scope, self._take, self.from_app.put)
        except Exception:
            # Raising before taking a message is how an application says it does not speak
            # the lifespan protocol; after, it failed.
            if self.taken:
                logger.exception("the application's lifespan failed")
        finally:
            await self.from_app.put(None)

    async def _take(self) -> dict[str, Any]:
        message = await self.to_app.get()
        self.taken += 1
        return message

    async def _forward(self, message: dict[str, Any]) -> dict[str, Any]:
        """Hand ``message`` to the application; its answer, or success when it has none."""
        await self.to_app.put(message)
        answer = await self.from_app.get()
        if answer is None:
            # The application ended (it does not speak the lifespan protocol): it never
            # takes a message again.
            await self.from_app.put(None)
            kind = message["type"]
            return {"type": f"{kind}.complete"}
        return answer


# Protocol classes: uvicorn's, with what wsroom needs added by subclassing whichever
# implementation the configuration chose (h11 or httptools; websockets-sansio, wsproto or
# websockets). They rely only on asyncio's Protocol interface and on attributes every
# uvicorn implementation has; where one is missing, the feature is skipped, not broken.


def _with_header_deadline(protocol_class: type[Any], timeout: float) -> type[Any]:
    if getattr(protocol_class, "_wsroom_deadline", False):
        return protocol_class

    class HeaderDeadline(protocol_class):  # type: ignore[misc]
        _wsroom_deadline = True

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            loop = asyncio.get_running_loop()
            # A weak reference: the timer must not keep a protocol alive that the
            # connection no longer uses (it is replaced at the WebSocket upgrade).
            self._wsroom_timer: asyncio.TimerHandle | None = loop.call_later(
                timeout, _too_slow, weakref.ref(self), transport, timeout
            )

        def handle_websocket_upgrade(self, *args: Any, **kwargs: Any) -> Any:
            self._wsroom_stop_timer()
            return super().handle_websocket_upgrade(*args, **kwargs)

        def connection_lost(self, exc: Exception | None) -> None:
            self._wsroom_stop_timer()
            super().connection_lost(exc)

        def _wsroom_stop_timer(self) -> None:
            timer = getattr(self, "_wsroom_timer", None)
            if timer is not None:
                timer.cancel()
                self._wsroom_timer = None

    HeaderDeadline.__name__ = HeaderDeadline.__qualname__ = f"WSRoom{protocol_class.__name__}"
    return HeaderDeadline


def _too_slow(protocol: weakref.ref[Any], transport: Any, timeout: float) -> None:
    current = protocol()
    # Gone, upgraded to a WebSocket, or a request under way: the head arrived in time.
    if current is None or transport.is_closing() or transport.get_protocol() is not current:
        return
    if getattr(current, "cycle", None) is not None:
        return
    logger.info("closed a client that did not send its request head in %.0f s", timeout)
    transport.close()


def _with_abort(protocol_class: type[Any]) -> type[Any]:
    if getattr(protocol_class, "_wsroom_abort", False):
        return protocol_class

    class Abortable(protocol_class):  # type: ignore[misc]
        _wsroom_abort = True

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            send_at_once(transport.get_extra_info("socket"))
            self._wsroom_key = _key(
                transport.get_extra_info("peername"), transport.get_extra_info("sockname")
            )
            if self._wsroom_key is not None and isinstance(transport, asyncio.Transport):
                _OPEN[self._wsroom_key] = _Tracked(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            key = getattr(self, "_wsroom_key", None)
            tracked = _OPEN.pop(key, None) if key is not None else None
            if tracked is not None and tracked.lost is not None and not tracked.lost.done():
                tracked.lost.set_result(None)
            super().connection_lost(exc)

    Abortable.__name__ = Abortable.__qualname__ = f"WSRoom{protocol_class.__name__}"
    return Abortable


_Key = tuple[str, int, str, int]


class _Tracked:
    """An open WebSocket connection's transport, and, while someone waits for its end, the
    future its end resolves."""

    __slots__ = ("lost", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.lost: asyncio.Future[None] | None = None


# The WebSocket connections wsroom Servers run, by the client's and the server's addresses
# as the ASGI scope gives them (``scope["client"]``, ``scope["server"]``): together unique
# among open TCP connections. Entries leave with their connection.
_OPEN: dict[_Key, _Tracked] = {}


def _key(client: Any, server: Any) -> _Key | None:
    if not (isinstance(client, list | tuple) and isinstance(server, list | tuple)):
        return None
    if len(client) < 2 or len(server) < 2:
        return None
    return (str(client[0]), int(client[1]), str(server[0]), int(server[1]))


def _tracked(scope: Mapping[str, Any]) -> _Tracked | None:
    key = _key(scope.get("client"), scope.get("server"))
    return _OPEN.get(key) if key is not None else None


def abort(scope: Mapping[str, Any]) -> bool:
    """Cut the TCP connection of the ASGI WebSocket ``scope`` with a reset, when a wsroom
    :class:`Server` runs it; ``False`` when it cannot (another server)."""
    tracked = _tracked(scope)
    if tracked is None:
        return False
    with contextlib.suppress(Exception):
        reset_on_close(tracked.transport.get_extra_info("socket"))
        tracked.transport.abort()
    return True


async def wait(scope: Mapping[str, Any]) -> None:
    """Return once the TCP connection of the ASGI WebSocket ``scope`` is closed, when a
    wsroom :class:`Server` runs it; at once otherwise."""
    tracked = _tracked(scope)
    if tracked is None:
        return
    if tracked.lost is None:
        tracked.lost = asyncio.get_running_loop().create_future()
    await asyncio.shield(tracked.lost)
