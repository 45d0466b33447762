"""Limits that protect a server from its clients, with their defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .exceptions import ConfigurationError

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits a :class:`~wsroom.ConnectionManager` enforces on every connection.

    The defaults suit a chat server; raise them for high-rate applications. Each limit says
    what happens to a client that crosses it.
    """

    max_frame_size: int = 64 * 1024
    """Largest client frame, in bytes. A larger frame closes the connection with 1009."""
    max_rooms_per_connection: int = 128
    """Rooms one connection may be in at once. One more ``join`` gets ``forbidden``."""
    max_rooms: int = 100_000
    """Rooms with members in this process. A ``join`` that would create one more gets
    ``forbidden``."""
    max_queue: int = 1024
    """Frames waiting to be written to one client."""
    max_queue_bytes: int = 1024 * 1024
    """Bytes waiting to be written to one client."""
    overflow: Literal["close", "drop_oldest"] = "close"
    """What happens when a client's queue is full: ``"close"`` evicts it with close code
    1013 ("try again later") and removes it from every room at once; ``"drop_oldest"`` drops
    its oldest queued frames (counted in ``statistics().dropped_frames``)."""
    write_timeout: float = 20.0
    """Seconds a client may keep its socket unwritable (it stopped reading) before it is
    evicted with 1013, even if its queue never fills."""
    rate: float | None = 50.0
    """Frames per second a client may send on average (token bucket); ``None``: unlimited.
    Frames above it get a ``rate_limited`` error and are not processed."""
    rate_burst: int = 100
    """Frames a client may send in a burst above :attr:`rate`."""
    rate_abuse_strikes: int = 20
    """``rate_limited`` errors within :attr:`rate_abuse_window` seconds that close the
    connection with 1008."""
    rate_abuse_window: float = 10.0
    """Window, in seconds, for counting :attr:`rate_abuse_strikes`."""
    close_timeout: float = 5.0
    """Seconds a closing handshake may take before the TCP connection is aborted."""
    max_idle_rooms: int = 10_000
    """Emptied rooms whose history is kept, so that clients coming back can recover what
    they missed (a room is emptied when no connection is left in it; one that never had a
    message keeps nothing). Beyond it the least recently used is forgotten first, and a
    client coming back to it gets ``recovered: false``. With a ``RedisBackplane`` the
    bound is on the rooms Redis keeps that no node serves."""
    max_idle_history_bytes: int = 64 * 1024 * 1024
    """Bytes of message history kept for emptied rooms, all rooms together (the messages'
    encoded size); beyond it the least recently used emptied rooms are forgotten first."""

    def __post_init__(self) -> None:
        positive_ints = (
            "max_frame_size",
            "max_rooms_per_connection",
            "max_rooms",
            "max_queue",
            "max_queue_bytes",
            "rate_burst",
            "rate_abuse_strikes",
            "max_idle_rooms",
            "max_idle_history_bytes",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigurationError(f"Limits.{name} must be a positive integer, not {value!r}")
        for name in ("write_timeout", "rate_abuse_window", "close_timeout"):
            value = getattr(self, name)
            if not is_positive_number(value):
                raise ConfigurationError(f"Limits.{name} must be a positive number, not {value!r}")
        if self.rate is not None and not is_positive_number(self.rate):
            raise ConfigurationError(
                f"Limits.rate must be a positive number or None, not {self.rate!r}"
            )
        if self.overflow not in ("close", "drop_oldest"):
            raise ConfigurationError(
                f"Limits.overflow must be 'close' or 'drop_oldest', not {self.overflow!r}"
            )


def is_positive_number(value: object) -> bool:
    """Whether ``value`` is an int or float above zero (``bool`` is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0
