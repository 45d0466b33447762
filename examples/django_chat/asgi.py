"""Django's ASGI application with the rooms in front: ``/ws`` and ``/wsroom.js`` are
wsroom's, everything else is Django's. Django serves only HTTP (it refuses WebSockets
and the lifespan protocol): wsroom answers those, so the lifespan starts and stops the
manager."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_chat.settings")
django_application = get_asgi_application()  # before importing anything that uses models

from examples.django_chat.rooms import manager  # noqa: E402
from wsroom.adapters.asgi import WSRoomApp  # noqa: E402

application = WSRoomApp(manager, path="/ws", app=django_application, client_path="/wsroom.js")
