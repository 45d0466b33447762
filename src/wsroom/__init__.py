"""wsroom: real-time rooms for any Python WebSocket server.

Subclass :class:`Room`, create a :class:`ConnectionManager`, and plug it into your server
with one adapter (``wsroom.adapters.websockets`` for a ``websockets`` asyncio server).
"""

from ._version import __version__
from .backplane import Backplane, MemoryBackplane, RoomSnapshot
from .connection import Connection, Transport
from .exceptions import (
    BackplaneError,
    ConfigurationError,
    ConnectionClosedError,
    EncodeError,
    HandshakeRejected,
    ProtocolError,
    WSRoomError,
)
from .frames import is_valid_user_id
from .handshake import Handshake, Headers, OriginPolicy
from .limits import Limits
from .manager import Authenticate, ConnectionManager, Statistics
from .protocol import (
    BATCH_SUBPROTOCOL,
    SUBPROTOCOL,
    CloseCode,
    ErrorCode,
    Message,
    MessageProtocol,
    is_valid_room_name,
)
from .room import HookResult, Room

__all__ = [
    "BATCH_SUBPROTOCOL",
    "SUBPROTOCOL",
    "Authenticate",
    "Backplane",
    "BackplaneError",
    "CloseCode",
    "ConfigurationError",
    "Connection",
    "ConnectionClosedError",
    "ConnectionManager",
    "EncodeError",
    "ErrorCode",
    "Handshake",
    "HandshakeRejected",
    "Headers",
    "HookResult",
    "Limits",
    "MemoryBackplane",
    "Message",
    "MessageProtocol",
    "OriginPolicy",
    "ProtocolError",
    "Room",
    "RoomSnapshot",
    "Statistics",
    "Transport",
    "WSRoomError",
    "__version__",
    "is_valid_room_name",
    "is_valid_user_id",
]
