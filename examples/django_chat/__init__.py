"""The chat of ``chat.py`` next to a Django site, on one port: plain Django, or Channels.

    python -m examples.django_chat [PORT]              # asgi.py: Django's application
    python -m examples.django_chat --channels [PORT]   # channels_asgi.py: ProtocolTypeRouter

Django serves its pages (``/``, and ``/rooms/<name>``, a view that asks the manager who is
in a room); wsroom serves the WebSocket at ``/ws?user=alice`` and ``wsroom.js`` at
``/wsroom.js``. ``asgi.py`` puts wsroom's ASGI application in front of Django's, which
only serves HTTP; ``channels_asgi.py`` routes the same way with Channels'
``ProtocolTypeRouter`` and ``URLRouter``. Either runs under any ASGI server
(``uvicorn examples.django_chat.asgi:application``); this command runs it through
``wsroom.adapters.uvicorn``, for wsroom's frame limit and a graceful shutdown on Ctrl+C or
SIGTERM (what is queued, then close code 1001).
"""
