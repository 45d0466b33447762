"""Limits that protect a server from its clients, with their defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .exceptions import ConfigurationError

__all__ = ["Limits"]

ABUSE_CLOSE_GRACE = 1.0
"""Seconds a client closed for abuse (rate abuse, an oversized frame, a stuck reader) gets to
answer the close before its TCP connection is aborted: it is gone within about a second,
whatever :attr:`Limits.close_timeout` says."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits a :class:`~wsroom.ConnectionManager` enforces on every connection.

    The defaults suit a chat server; raise them for high-rate applications. Each limit says
    what happens to a client that crosses it.
    """

    max_frame_size: int = 64 * 1024
    """Largest client frame, in bytes. A larger frame closes the connection with 1009. It
    also bounds a batch of server frames sent to a client of ``wsroom.v1.batch``."""
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
    user_rate: float | None = 50.0
    """Frames per second all the connections of one user share on this process (token
    bucket); ``None``: no shared limit. Opening more connections, or reconnecting, does not
    earn a user more: the budget outlives the connections until it has refilled. Frames
    above it get ``rate_limited``, like frames above :attr:`rate`."""
    user_rate_burst: int = 100
    """Frames one user's connections may send in a burst above :attr:`user_rate`."""
    address_rate: float | None = 100.0
    """Frames per second all the connections from one client address share on this process
    (an IPv6 address counts by its /64 network), authenticated or not: a client cannot
    escape :attr:`user_rate` by signing in under many names. ``None``: no such limit. Raise
    it when many users share an address (a corporate or carrier NAT)."""
    address_rate_burst: int = 200
    """Frames one address's connections may send in a burst above :attr:`address_rate`."""
    handshake_rate: float | None = 10.0
    """New connections per second one client address may open; the others are refused with
    HTTP 429 and a ``Retry-After`` header before the upgrade, before the ``authenticate``
    hook runs. ``None``: unlimited."""
    handshake_burst: int = 30
    """New connections one address may open in a burst above :attr:`handshake_rate`."""
    max_connections_per_address: int | None = 256
    """Connections one client address may hold open at once on this process (IPv6: per
    /64); one more is refused with HTTP 429 before the upgrade. Without it, a client
    within :attr:`handshake_rate` could still pile up idle connections for hours.
    ``None``: unlimited. Raise it when many users share an address."""
    max_tracked_clients: int = 100_000
    """Users and addresses whose spent budgets are remembered after their last connection
    closed (until the budget has refilled, a few seconds with the defaults). Beyond it the
    least recently seen is forgotten first; that only ever gives a client a fresh budget."""
    rate_abuse_strikes: int = 20
    """``rate_limited`` errors within :attr:`rate_abuse_window` seconds that close the
    connection with 1008."""
    rate_abuse_window: float = 10.0
    """Window, in seconds, for counting :attr:`rate_abuse_strikes`."""
    close_timeout: float = 5.0
    """Seconds a closing handshake may take before the TCP connection is aborted (a client
    closed for abuse gets :data:`ABUSE_CLOSE_GRACE`, one second)."""
    max_idle_rooms: int = 10_000
    """Emptied rooms whose history is kept, so that clients coming back can recover what
    they missed (a room is emptied when no connection is left in it; one that never had a
    message keeps nothing). Beyond it the least recently used is forgotten first, and a
    client coming back to it gets ``recovered: false``. With a ``RedisBackplane`` the
    bound is on the rooms Redis keeps that no node serves."""
    max_idle_history_bytes: int = 64 * 1024 * 1024
    """Bytes of message history kept for emptied rooms, all rooms together (the messages'
    encoded size); beyond it the least recently used emptied rooms are forgotten first."""

    @classmethod
    def without_rate_limits(cls, **overrides: Any) -> Limits:
        """Limits with every rate limit off (per connection, per user, per address and for
        handshakes), no cap on connections per address, and the other defaults, or
        ``overrides``.

        For benchmarks and load tests, which open thousands of connections from one
        address. Never for a server open to the public.
        """
        rates: dict[str, Any] = {
            "rate": None,
            "user_rate": None,
            "address_rate": None,
            "handshake_rate": None,
            "max_connections_per_address": None,
        }
        return cls(**{**rates, **overrides})

    def __post_init__(self) -> None:
        positive_ints = (
            "max_frame_size",
            "max_rooms_per_connection",
            "max_rooms",
            "max_queue",
            "max_queue_bytes",
            "rate_burst",
            "user_rate_burst",
            "address_rate_burst",
            "handshake_burst",
            "max_tracked_clients",
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
        per_address = self.max_connections_per_address
        if per_address is not None and (type(per_address) is not int or per_address < 1):
            raise ConfigurationError(
                "Limits.max_connections_per_address must be a positive integer or None, "
                f"not {per_address!r}"
            )
        for name in ("rate", "user_rate", "address_rate", "handshake_rate"):
            value = getattr(self, name)
            if value is not None and not is_positive_number(value):
                raise ConfigurationError(
                    f"Limits.{name} must be a positive number or None, not {value!r}"
                )
        if self.overflow not in ("close", "drop_oldest"):
            raise ConfigurationError(
                f"Limits.overflow must be 'close' or 'drop_oldest', not {self.overflow!r}"
            )


def is_positive_number(value: object) -> bool:
    """Whether ``value`` is an int or float above zero (``bool`` is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0
