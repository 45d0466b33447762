"""Marks the suite's modules share (registered by the plugin)."""

from __future__ import annotations

import pytest

ONE_NODE = pytest.mark.one_node("refused by validation on the node of the connection")
"""A frame refused before any room: a second node cannot change what the client gets, so
the test runs on one-node servers only."""
