"""The documentation site builds with `mkdocs build --strict`: every page in the navigation,
no broken link or anchor, the API reference generated from the docstrings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    reference = (tmp_path / "reference" / "index.html").read_text()
    # Generated from the docstrings, with their Sphinx roles rendered as code.
    assert "ConnectionManager" in reference and "wsroom.browser" in reference
    assert ":class:" not in reference and ":meth:" not in reference
    assert (tmp_path / "changelog" / "index.html").read_text().count("Unreleased") >= 1
