"""Backplanes: how a manager shares rooms with other processes.

``RedisBackplane`` lives in ``wsroom.backplane.redis`` (extra ``wsroom[redis]``) and is
imported from there, so that the core does not need redis-py.
"""

from .base import Backplane, BackplaneNode, BackplaneStatus, RoomSnapshot
from .memory import MemoryBackplane

__all__ = ["Backplane", "BackplaneNode", "BackplaneStatus", "MemoryBackplane", "RoomSnapshot"]
