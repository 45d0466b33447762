"""Adapters: how a server framework drives a :class:`~wsroom.ConnectionManager`.

* ``wsroom.adapters.websockets``: a ``websockets`` asyncio server.
* ``wsroom.adapters.websockets_sync``: a threaded ``websockets.sync`` server.
* ``wsroom.adapters.starlette``: Starlette and FastAPI (extra ``wsroom[starlette]``).
* ``wsroom.adapters.aiohttp``: an ``aiohttp.web`` application (extra ``wsroom[aiohttp]``).
* ``wsroom.adapters.asgi``: a plain ASGI application, alone or beside Django, Channels,
  Quart, Litestar... (no framework needed).

Each is imported from its own module, so that no framework is needed that you do not use.
"""
