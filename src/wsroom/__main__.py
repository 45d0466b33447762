"""Command line: ``wsroom demo`` (also ``python -m wsroom demo``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .exceptions import BackplaneError


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wsroom`` command."""
    parser = argparse.ArgumentParser(prog="wsroom", description="wsroom command line")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the demo chat server")
    demo.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    demo.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765)")
    demo.add_argument(
        "--transport",
        choices=("asyncio", "sync", "starlette"),
        default="asyncio",
        help="websockets asyncio (default), websockets threading, or Starlette under uvicorn",
    )
    demo.add_argument(
        "--redis",
        metavar="URL",
        help="share the rooms with other demo processes through this Redis "
        "(e.g. redis://127.0.0.1:6379/0; needs pip install 'wsroom[redis]')",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "demo":
        from . import demo as chat_demo

        try:
            if args.transport == "sync":
                chat_demo.run_sync(args.host, args.port, args.redis)
            elif args.transport == "starlette":
                try:
                    import starlette  # noqa: F401
                    import uvicorn  # noqa: F401
                except ImportError:
                    print(
                        "wsroom demo --transport starlette needs Starlette and uvicorn: "
                        "pip install 'wsroom[starlette]' uvicorn",
                        file=sys.stderr,
                    )
                    return 1
                chat_demo.run_starlette(args.host, args.port, args.redis)
            else:
                asyncio.run(chat_demo.run(args.host, args.port, args.redis))
        except BackplaneError as exc:
            print(f"wsroom demo: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(
                f"wsroom demo: cannot listen on {args.host}:{args.port}: {exc.strerror}",
                file=sys.stderr,
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
