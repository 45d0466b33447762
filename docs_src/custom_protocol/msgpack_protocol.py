"""The wsroom protocol in MessagePack binary frames: `pip install msgpack`."""

from __future__ import annotations

from typing import Any, cast

import msgpack

from wsroom import ConnectionManager, EncodeError, MessageProtocol, ProtocolError, Room


class MsgpackProtocol(MessageProtocol):
    """The same frames as JSON, in MessagePack, in binary WebSocket frames."""

    # Clients ask for it by name; a client that offers only "wsroom.v1" is refused (400).
    subprotocol = "wsroom.v1.msgpack"
    binary = True

    def loads(self, frame: str | bytes) -> Any:
        if isinstance(frame, str):
            raise ProtocolError("invalid_message", "send MessagePack in binary frames")
        try:
            return msgpack.unpackb(frame, strict_map_key=True, max_bin_len=0, max_ext_len=0)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise ProtocolError("invalid_json", f"not MessagePack: {exc}") from None

    def dumps(self, obj: Any) -> bytes:
        try:
            return cast(bytes, msgpack.packb(obj))
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"cannot encode as MessagePack: {exc}", obj) from None


def create_manager() -> ConnectionManager:
    return ConnectionManager(
        Room,
        protocol=MsgpackProtocol(),
        authenticate=lambda handshake: handshake.query.get("user"),
    )
