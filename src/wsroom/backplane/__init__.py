"""Backplanes: how a manager shares rooms with other processes."""

from .base import Backplane, BackplaneNode, RoomSnapshot
from .memory import MemoryBackplane

__all__ = ["Backplane", "BackplaneNode", "MemoryBackplane", "RoomSnapshot"]
