"""Calling application hooks, which may be ``def`` or ``async def`` (DESIGN.md, rule 4)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

T = TypeVar("T")
MaybeAwaitable: TypeAlias = T | Awaitable[T]
"""What a hook returns: a value (``def``) or an awaitable of it (``async def``)."""


async def call_hook(hook: Callable[..., Any], *args: Any) -> Any:
    """Call a hook that may be ``def`` or ``async def``, and return its result."""
    result = hook(*args)
    if inspect.isawaitable(result):
        return await result
    return result
