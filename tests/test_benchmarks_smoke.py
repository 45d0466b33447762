"""The benchmarks run (tiny sizes), so they cannot rot between measurement campaigns."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_core_fanout_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(BENCHMARKS / "core_fanout.py"), run_name="smoke")
    module["main"](["--clients", "20", "--messages", "5", "--repeat", "1"])
    assert "deliveries/s" in capsys.readouterr().out
