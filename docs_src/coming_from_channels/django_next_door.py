from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp

from wsroom import Connection, ConnectionManager, Handshake, Message, Room
from wsroom.adapters.starlette import routes

# Stand-in for Django's session store: session key -> user id. In your project, look the
# key up where Django keeps sessions (the database table, or the cache).
SESSIONS = {"k4ann": "ann", "k4bob": "bob"}


def authenticate(handshake: Handshake) -> str | None:
    key = handshake.cookies.get("sessionid")  # Django's SESSION_COOKIE_NAME
    return SESSIONS.get(key) if key else None  # None: HTTP 401, no consumer to refuse


class ChatRoom(Room):  # a group with rules: who may join, what members may send
    history_size = 50

    def can_join(self, conn: Connection, data: object) -> bool:
        return not self.name.startswith("staff:") or conn.user == "ann"

    async def on_message(self, conn: Connection, message: Message) -> None:
        await self.broadcast(message)  # what group_send and chat_message did together


manager = ConnectionManager(ChatRoom, authenticate=authenticate)


def application(django_app: ASGIApp) -> Starlette:
    # /ws is wsroom's; every other path goes to Django's ASGI application.
    return Starlette(routes=[*routes("/ws", manager), Mount("/", app=django_app)])
