"""Render the Sphinx roles of wsroom's docstrings (``:class:`Room```, ``:meth:`~x.y```) as
code in the documentation site, where mkdocstrings would show them as typed.

Loaded by mkdocs.yml (the mkdocstrings handler's ``extensions``).
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(r":(?:class|meth|func|attr|data|exc|mod|obj|const):`(~?)([^`]+)`")


def _as_code(match: re.Match[str]) -> str:
    short, target = match.groups()
    # "~a.b.c" shows as "c", as Sphinx does; "a.b" stays whole.
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class SphinxRoles(Extension):
    """Rewrites the roles of each docstring to inline code."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_as_code, obj.docstring.value)
