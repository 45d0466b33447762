"""A warning, when a ``Room`` subclass is created, for a method named like a misspelt hook.

``on_mesage`` is not an error Python could catch: it is a valid custom-type handler (for
frames of type ``"mesage"``), so the room silently keeps the default ``on_message``. The
check runs once per class, at its creation, on the names the class itself defines.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Iterable

__all__ = ["likely_hook", "warn_misspelt_hooks"]

# The hooks a Room subclass overrides, besides those the base class defines (found at each
# check, so a hook added to Room later is covered without a change here).
_ROOM_HOOKS = frozenset({"can_join", "on_join", "on_leave", "on_message"})
# Hooks of the ConnectionManager (its parameters), not of Room: a Room method named so is
# only the handler of a custom frame type, which is rarely what its author meant.
_MANAGER_HOOKS = frozenset({"on_connect", "on_disconnect"})
_PREFIXES = ("on", "can")
# difflib's similarity (2 * matches / total length) at which a name counts as a misspelling:
# one letter missing, doubled or changed in a hook of six letters or more ("mesage",
# "conect", "leav"), but not a different word sharing some letters ("save", "coin").
_CUTOFF = 0.8


def likely_hook(name: str, hooks: Iterable[str]) -> str | None:
    """The hook among ``hooks`` that the method ``name`` was most likely meant to be, or
    ``None`` when it looks like a name of its own.

    A name that equals a hook but for case and underscores (``onMessage``, ``on_Join``)
    matches it. Otherwise the part after ``on``/``can`` is compared with the hooks' of the
    same prefix: two letters swapped (``jion``), or a similarity of at least 0.8 by
    :class:`difflib.SequenceMatcher` (``mesage``, ``leav``, ``conect``), is a misspelling.
    """
    if name in hooks or name.startswith("_"):
        return None
    folded = name.casefold()
    prefix = next((p for p in _PREFIXES if folded.startswith(p)), None)
    if prefix is None:
        return None
    rest = folded[len(prefix) :].replace("_", "")
    best: tuple[float, str] | None = None
    for hook in sorted(hooks):
        if not hook.startswith(prefix + "_"):
            continue
        target = hook[len(prefix) + 1 :].replace("_", "")
        if rest == target or _one_swap(rest, target):
            return hook
        ratio = difflib.SequenceMatcher(None, rest, target).ratio()
        if ratio >= _CUTOFF and (best is None or ratio > best[0]):
            best = (ratio, hook)
    return best[1] if best is not None else None


def _one_swap(a: str, b: str) -> bool:
    """Whether ``a`` is ``b`` with two neighbouring letters swapped."""
    if len(a) != len(b):
        return False
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    return (
        len(diff) == 2
        and diff[1] == diff[0] + 1
        and (a[diff[0]], a[diff[1]]) == (b[diff[1]], b[diff[0]])
    )


def warn_misspelt_hooks(cls: type, base: type) -> None:
    """Warn (``UserWarning``) for each method ``cls`` defines whose name looks like a
    misspelling of a hook of ``base`` (``Room``), or like a hook of the ``ConnectionManager``
    (``on_connect``, ``on_disconnect``): such a method is never called as a hook.

    Called from ``Room.__init_subclass__``: the warning points at the ``class`` statement.
    """
    room_hooks = _ROOM_HOOKS | {
        name for name in vars(base) if name.startswith(tuple(p + "_" for p in _PREFIXES))
    }
    manager_hooks = _MANAGER_HOOKS - room_hooks
    for name, value in vars(cls).items():
        if not (callable(value) or isinstance(value, staticmethod | classmethod)):
            continue
        if name in manager_hooks:
            hook: str | None = name
        else:
            hook = likely_hook(name, room_hooks | manager_hooks)
        if hook is None:
            continue
        where = f"{cls.__qualname__}.{name}"
        lead = f"{where} looks like " + (
            f"the hook {hook}" if name == hook else f"a misspelling of the hook {hook}"
        )
        effect = "wsroom never calls it"
        if name.startswith("on_"):
            effect += f" as a hook (it would handle client frames of the type {name[3:]!r})"
        if hook in manager_hooks:
            lead += ", which is the ConnectionManager's, not a Room's"
            fix = f"Pass the function as ConnectionManager(..., {hook}=...)"
        else:
            fix = f"Rename it to {hook}"
        warnings.warn(
            f"{lead}: {effect}. {fix}, or, if the name is meant, silence this warning with "
            f"warnings.filterwarnings('ignore', message=r'{re.escape(where)} ')",
            UserWarning,
            stacklevel=3,
        )
