"""``python -m examples.django_chat [--channels] [PORT]``: see the package's docstring."""

import sys

from examples.django_chat.rooms import manager
from wsroom.adapters import uvicorn as wsroom_uvicorn

arguments = sys.argv[1:]
if "--channels" in arguments:
    arguments.remove("--channels")
    from examples.django_chat.channels_asgi import application
else:
    from examples.django_chat.asgi import application

port = int(arguments[0]) if arguments else 8000
wsroom_uvicorn.run(application, manager, host="127.0.0.1", port=port)  # logs the port it took
