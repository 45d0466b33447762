"""The same with Channels: ``ProtocolTypeRouter`` sends WebSockets through ``URLRouter``
to wsroom at ``/ws``, HTTP to Django (but ``/wsroom.js``, served by wsroom), and the
lifespan protocol to wsroom, which starts and stops the manager."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_chat.settings")
django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from examples.django_chat.rooms import manager  # noqa: E402
from wsroom.adapters.asgi import WSRoomApp, client_app  # noqa: E402

rooms = WSRoomApp(manager)  # every path URLRouter gives it
application = ProtocolTypeRouter(
    {
        "http": URLRouter([path("wsroom.js", client_app()), re_path("", django_application)]),
        "websocket": URLRouter([path("ws", rooms)]),
        "lifespan": rooms,
    }
)
