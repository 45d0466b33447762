"""Scale and figures for the reliability suite.

* ``WSROOM_RELIABILITY=soak`` runs every scenario at its long-run scale (more connections,
  more frames, longer phases); the default is the CI scale, a few minutes in all.
* ``WSROOM_RELIABILITY_REPORT=PATH`` appends every figure a scenario measures to PATH, one
  JSON object per line (``scenario``, ``figure``, ``value``, ``unit``, ``adapter``...): the
  figures of docs/reliability.md come from such a file.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

SOAK = os.environ.get("WSROOM_RELIABILITY", "").lower() == "soak"
"""Whether the suite runs at its long-run scale."""


def scale(ci: int, soak: int) -> int:
    """``ci`` in the default run, ``soak`` in the long run."""
    return soak if SOAK else ci


def seconds(ci: float, soak: float) -> float:
    """A phase's duration: ``ci`` in the default run, ``soak`` in the long run."""
    return soak if SOAK else ci


def record(
    scenario: str, figure: str, value: float | int | str, unit: str = "", **context: Any
) -> None:
    """Report one measured figure (written to ``WSROOM_RELIABILITY_REPORT`` when set).

    Args:
        scenario: The scenario's id in docs/reliability.md, e.g. ``"B6"``.
        figure: What was measured, e.g. ``"eviction time"``.
        value: The measured value.
        unit: Its unit, e.g. ``"s"``, ``"MiB"``, ``"msg/s"``.
        context: Anything that tells runs apart (``adapter="asyncio"``, ``n=1000``).
    """
    path = os.environ.get("WSROOM_RELIABILITY_REPORT")
    if not path:
        return
    entry = {
        "scenario": scenario,
        "figure": figure,
        "value": value,
        "unit": unit,
        "scale": "soak" if SOAK else "ci",
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "at": round(time.time(), 3),
        **context,
    }
    with open(path, "a", encoding="utf-8") as report:
        report.write(json.dumps(entry) + "\n")
