"""Token buckets: per connection, and shared by every connection of one user or one address.

A limit per connection alone is defeated by reconnecting: each new connection starts with a
full bucket. So the buckets a user's or an address's connections share outlive those
connections until they have refilled (a full bucket carries no information and is
forgotten), and the tables that hold them are bounded, so that a client cycling through
many ids or addresses cannot grow the server's memory.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .limits import Limits

__all__ = ["BucketTable", "SharedLimits", "TokenBucket", "address_key", "take_all"]


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; one frame (or handshake) costs one."""

    __slots__ = ("burst", "holders", "key", "rate", "stamp", "table", "tokens")

    def __init__(
        self, rate: float, burst: int, now: float, key: str = "", table: BucketTable | None = None
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now
        self.key = key
        """The user id or address this bucket is shared by (empty for one connection's)."""
        self.table = table
        """The table a shared bucket belongs to."""
        self.holders = 0
        """Connections holding this bucket; a held bucket is never forgotten."""

    def refill(self, now: float) -> float:
        """Add the tokens earned since the last call; the tokens now available."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.tokens = tokens
        self.stamp = now
        return tokens

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        if self.refill(now) < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled completely (it then tells nothing about its key)."""
        return self.tokens + (now - self.stamp) * self.rate >= self.burst

    def retry_after(self, now: float) -> float:
        """Seconds until the next token."""
        missing = 1.0 - self.refill(now)
        return max(0.0, missing / self.rate)


def take_all(buckets: tuple[TokenBucket, ...], now: float) -> bool:
    """Spend one token from each bucket, or from none when one of them is empty."""
    for bucket in buckets:
        if bucket.refill(now) < 1.0:
            return False
    for bucket in buckets:
        bucket.tokens -= 1.0
    return True


class BucketTable:
    """The buckets of one shared limit, by key (a user id or a client address).

    Buckets held by a connection stay; the others are forgotten once full, and beyond
    ``max_idle`` the least recently used are forgotten first (a client who comes back after
    that starts with a full bucket: :attr:`forgotten` counts these).
    """

    __slots__ = ("_held", "_idle", "burst", "forgotten", "max_idle", "rate")

    def __init__(self, rate: float, burst: int, max_idle: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_idle = max_idle
        self.forgotten = 0
        """Buckets dropped before they had refilled, to keep the table bounded."""
        self._held: dict[str, TokenBucket] = {}
        # Oldest first: the least recently used is at the front.
        self._idle: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held) + len(self._idle)

    def hold(self, key: str, now: float) -> TokenBucket:
        """The bucket of ``key`` for one more connection (release it when it closes)."""
        bucket = self._held.get(key)
        if bucket is None:
            bucket = self._idle.pop(key, None)
            if bucket is None:
                bucket = TokenBucket(self.rate, self.burst, now, key, self)
            self._held[key] = bucket
        bucket.holders += 1
        return bucket

    def release(self, bucket: TokenBucket, now: float) -> None:
        """One connection holding ``bucket`` is gone."""
        bucket.holders -= 1
        if bucket.holders > 0:
            return
        del self._held[bucket.key]
        if not bucket.full(now):
            self._idle[bucket.key] = bucket
            self._trim(now)

    def take(self, key: str, now: float) -> TokenBucket | None:
        """Spend one token of ``key``'s bucket; the bucket when it was empty, else ``None``."""
        bucket = self._held.get(key)
        if bucket is None:
            bucket = self._idle.get(key)
            if bucket is None:
                bucket = self._idle[key] = TokenBucket(self.rate, self.burst, now, key, self)
            else:
                self._idle.move_to_end(key)
        allowed = bucket.take(now)
        if bucket.holders == 0:
            self._trim(now)
        return None if allowed else bucket

    def _trim(self, now: float) -> None:
        idle = self._idle
        # The front holds the buckets left alone longest: drop those that have refilled.
        while idle:
            oldest = next(iter(idle.values()))
            if not oldest.full(now):
                break
            idle.popitem(last=False)
        while len(idle) > self.max_idle:
            idle.popitem(last=False)
            self.forgotten += 1


class SharedLimits:
    """The budgets that outlive a connection: frames per user and per address, handshakes
    per address (:class:`~wsroom.Limits` names them). One per manager.

    Args:
        limits: The manager's current limits. An application may replace its manager's
            ``limits`` before serving; the tables follow the new ones.
    """

    __slots__ = ("_addresses", "_handshakes", "_limits", "_open", "_source", "_users")

    def __init__(self, limits: Callable[[], Limits]) -> None:
        self._limits = limits
        self._source: Limits | None = None
        self._users: BucketTable | None = None
        self._addresses: BucketTable | None = None
        self._handshakes: BucketTable | None = None
        # Open connections by address key: one entry per address with connections, so
        # bounded by the connections themselves.
        self._open: dict[str, int] = {}
        self._follow()

    def _follow(self) -> None:
        limits = self._limits()
        if limits is self._source:
            return
        self._source = limits
        keep = limits.max_tracked_clients
        self._users = (
            BucketTable(limits.user_rate, limits.user_rate_burst, keep)
            if limits.user_rate is not None
            else None
        )
        self._addresses = (
            BucketTable(limits.address_rate, limits.address_rate_burst, keep)
            if limits.address_rate is not None
            else None
        )
        self._handshakes = (
            BucketTable(limits.handshake_rate, limits.handshake_burst, keep)
            if limits.handshake_rate is not None
            else None
        )

    def refuse_handshake(self, address: str | None, now: float) -> float | None:
        """Count one handshake from ``address``: ``None`` when it may go on, else the seconds
        after which it may be tried again."""
        self._follow()
        if self._handshakes is None or address is None:
            return None
        empty = self._handshakes.take(address_key(address), now)
        return None if empty is None else empty.retry_after(now)

    def too_many_connections(self, address: str | None) -> bool:
        """Whether ``address`` already holds ``Limits.max_connections_per_address``."""
        cap = self._limits().max_connections_per_address
        if cap is None or address is None:
            return False
        return self._open.get(address_key(address), 0) >= cap

    def hold(
        self, user: str | None, address: str | None, now: float
    ) -> tuple[tuple[TokenBucket, ...], str | None]:
        """What a new connection holds: the shared buckets it spends from, and the address
        key it is counted under (give both back with :meth:`release`)."""
        self._follow()
        held: list[TokenBucket] = []
        if self._users is not None and user is not None:
            held.append(self._users.hold(user, now))
        key = None
        if address is not None:
            key = address_key(address)
            self._open[key] = self._open.get(key, 0) + 1
            if self._addresses is not None:
                held.append(self._addresses.hold(key, now))
        return tuple(held), key

    def release(self, buckets: tuple[TokenBucket, ...], counted: str | None, now: float) -> None:
        """A connection holding ``buckets``, counted under ``counted``, is gone."""
        for bucket in buckets:
            if bucket.table is not None:
                bucket.table.release(bucket, now)
        if counted is not None:
            left = self._open.get(counted, 0) - 1
            if left > 0:
                self._open[counted] = left
            else:
                self._open.pop(counted, None)


_IPV6_PREFIX: Final = 64


def address_key(host: str) -> str:
    """The key of a client address for the limits it shares.

    IPv6 addresses count by their /64 network: one subscriber usually gets a whole /64, and
    could otherwise take a fresh address for every connection. An IPv4 address mapped into
    IPv6 counts as the IPv4 address. Anything that is not an IP address (a Unix socket's
    path) is its own key.
    """
    try:
        address = ipaddress.ip_address(host.strip().strip("[]"))
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        network = ipaddress.IPv6Network((address, _IPV6_PREFIX), strict=False)
        return str(network)
    return str(address)
