"""wsroom.js, the client for browsers and Node.js, and the HTTP answer that serves it.

The files ship inside the wheel: ``wsroom.js`` (one ES module, no dependencies),
``wsroom.d.ts`` (its TypeScript declarations) and ``package.json`` (so that ``npm pack`` in
this folder makes an installable package). Each adapter has a helper that serves the
script from your server, at ``/wsroom.js`` by default:

- websockets (asyncio or threading): ``process_request=wsroom.adapters.websockets.client_script()``
- Starlette/FastAPI: ``wsroom.adapters.starlette.client_route()`` among your routes
- aiohttp: ``wsroom.adapters.aiohttp.client_route()`` among your routes

and a page imports it with ``import { connect } from "/wsroom.js"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path

from .._http import etag_matches, etag_of

__all__ = [
    "SCRIPT_PATH",
    "ScriptResponse",
    "declarations",
    "directory",
    "script",
    "script_response",
]

SCRIPT_PATH = "/wsroom.js"
"""Where the adapters' helpers serve the script unless told otherwise."""


def script() -> bytes:
    """The source of ``wsroom.js``."""
    return _read("wsroom.js")


def declarations() -> bytes:
    """The source of ``wsroom.d.ts``, its TypeScript declarations."""
    return _read("wsroom.d.ts")


def directory() -> Path:
    """The folder holding ``wsroom.js``, ``wsroom.d.ts`` and ``package.json``, to copy into a
    front-end build or to serve with your own static files."""
    return Path(str(files(__package__)))


@dataclass(frozen=True)
class ScriptResponse:
    """An HTTP answer for the script, whatever the server that sends it."""

    status: int
    """200, or 304 when the client's copy is current."""
    headers: list[tuple[str, str]]
    body: bytes
    """Empty for a 304 or a ``HEAD``."""


def script_response(if_none_match: str | None = None, *, head: bool = False) -> ScriptResponse:
    """The answer to a ``GET`` (or ``HEAD``) of the script.

    The script is revalidated on every use (``Cache-Control: no-cache``) against its
    ``ETag``: a page never runs a stale copy after wsroom is upgraded, and an unchanged
    copy costs a 304 without a body.

    Args:
        if_none_match: The request's ``If-None-Match`` header, if any.
        head: Answer a ``HEAD`` request: the headers without the body.
    """
    body, etag = _script_and_etag()
    headers = [
        ("Content-Type", "text/javascript; charset=utf-8"),
        ("Cache-Control", "no-cache"),
        ("ETag", etag),
        ("X-Content-Type-Options", "nosniff"),
        # A module script from another origin is fetched with CORS: a page on a front-end
        # dev server can import it. It is public code and sent without credentials.
        ("Access-Control-Allow-Origin", "*"),
    ]
    if etag_matches(if_none_match, etag):
        return ScriptResponse(304, headers, b"")
    headers.append(("Content-Length", str(len(body))))
    return ScriptResponse(200, headers, b"" if head else body)


@cache
def _script_and_etag() -> tuple[bytes, str]:
    body = script()
    return body, etag_of(body)


def _read(name: str) -> bytes:
    return files(__package__).joinpath(name).read_bytes()
