"""Command line: ``wsroom demo`` (also ``python -m wsroom demo``) and ``wsroom --version``.

Every mistake the command can foresee ends in one line on stderr, never a traceback:
exit status 2 for a wrong argument (argparse's), 1 for what the machine lacks (an extra
not installed, a port in use, a Redis that does not answer).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import sys

from ._version import __version__
from .exceptions import BackplaneError

# What `pip install` brings each optional part of the demo.
_EXTRA_HINTS = {
    "redis": "wsroom demo --redis needs redis-py, which is not installed here: "
    "pip install 'wsroom[redis]'",
    "starlette": "wsroom demo --transport starlette needs Starlette and uvicorn, which are "
    "not installed here: pip install 'wsroom[starlette]'",
    "asgi": "wsroom demo --transport asgi needs uvicorn, which is not installed here: "
    "pip install 'wsroom[uvicorn]'",
    "aiohttp": "wsroom demo --transport aiohttp needs aiohttp, which is not installed here: "
    "pip install 'wsroom[aiohttp]'",
}


def _port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0 to 65535)")
    return port


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(prog="wsroom", description="wsroom command line")
    parser.add_argument("--version", action="version", version=f"wsroom {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="run the demo chat server",
        description="Serve the demo chat: a page at / and the WebSocket at /ws, on one port. "
        "It prints its address, then only warnings and errors.",
    )
    demo.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    demo.add_argument(
        "--port",
        type=_port_number,
        default=8765,
        help="port to listen on, 0 for any free one (default 8765)",
    )
    demo.add_argument(
        "--transport",
        choices=("asyncio", "sync", "starlette", "asgi", "aiohttp"),
        default="asyncio",
        help="websockets asyncio (default), websockets threading, Starlette under uvicorn "
        "(needs pip install 'wsroom[starlette]'), wsroom's plain ASGI application under "
        "uvicorn (needs pip install 'wsroom[uvicorn]'), or aiohttp (needs pip install "
        "'wsroom[aiohttp]')",
    )
    demo.add_argument(
        "--redis",
        metavar="URL",
        help="share the rooms with other demo processes through this Redis "
        "(e.g. redis://127.0.0.1:6379/0; needs pip install 'wsroom[redis]')",
    )
    demo.add_argument(
        "--admin",
        action="store_true",
        help="also serve the live admin view at /admin/, behind a random token printed "
        "with its address",
    )
    return parser, demo


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wsroom`` command; returns its exit status."""
    parser, demo = _parser()
    args = parser.parse_args(argv)
    try:
        return _demo(demo, args)
    except KeyboardInterrupt:  # Ctrl+C before the demo's own signal handlers are in place
        return 130


def _demo(demo: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    missing = _missing_extra(args)
    if missing is not None:
        return _fail(_EXTRA_HINTS[missing])
    if args.redis is not None:
        problem = _redis_url_problem(args.redis)
        if problem is not None:
            demo.error(f"argument --redis: {problem}")  # exits with status 2
    # The demo prints its own announcement; the servers' INFO lines (a line per connection
    # or request) would bury it, so only warnings and errors are logged.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from . import demo as chat_demo

    try:
        if args.transport == "sync":
            chat_demo.run_sync(args.host, args.port, args.redis, admin=args.admin)
        elif args.transport == "starlette":
            chat_demo.run_starlette(args.host, args.port, args.redis, admin=args.admin)
        elif args.transport == "asgi":
            chat_demo.run_asgi(args.host, args.port, args.redis, admin=args.admin)
        elif args.transport == "aiohttp":
            asyncio.run(chat_demo.run_aiohttp(args.host, args.port, args.redis, admin=args.admin))
        else:
            asyncio.run(chat_demo.run(args.host, args.port, args.redis, admin=args.admin))
    except BackplaneError as exc:
        return _fail(f"wsroom demo: {exc}")
    except OSError as exc:
        return _fail(f"wsroom demo: cannot listen on {args.host}:{args.port}: {_reason(exc)}")
    return 0


def _missing_extra(args: argparse.Namespace) -> str | None:
    """The extra the chosen options need and that is not installed, if any."""
    try:
        if args.transport == "starlette":
            import starlette  # noqa: F401
        if args.transport in ("starlette", "asgi"):
            import uvicorn  # noqa: F401
    except ImportError:
        return str(args.transport)
    try:
        if args.transport == "aiohttp":
            import aiohttp  # noqa: F401
    except ImportError:
        return "aiohttp"
    try:
        if args.redis is not None:
            import redis  # noqa: F401
    except ImportError:
        return "redis"
    return None


def _redis_url_problem(url: str) -> str | None:
    """Why redis-py would refuse ``url``, or ``None``: checked before anything starts, so
    that a typo is a usage error rather than a traceback from deep in the backplane."""
    from redis.asyncio import ConnectionPool

    try:
        ConnectionPool.from_url(url)  # parses only: no connection is opened
    except ValueError as exc:
        # The URL itself is not repeated: it may hold a password.
        return f"not a Redis URL ({exc}); write e.g. redis://127.0.0.1:6379/0"
    return None


def _reason(exc: OSError) -> str:
    """The cause of a failed bind in a few words ("Address already in use")."""
    if exc.errno is not None and exc.errno in errno.errorcode:
        return os.strerror(exc.errno)
    # A name that does not resolve (socket.gaierror, whose codes are not errno's).
    return (exc.strerror or str(exc)).split(" (while attempting")[0]


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
