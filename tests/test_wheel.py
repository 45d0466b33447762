"""The wheel ships every file the package reads at run time: the admin view's page, script,
style and icon, wsroom.js and its declarations, the demo's page, and py.typed."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

SRC = ROOT / "src"
# Folders whose files other than Python are served or read by the package.
DATA_FOLDERS = ["wsroom/admin", "wsroom/browser", "wsroom/demo"]


@pytest.mark.timeout(60)
def test_wheel_holds_the_files_the_package_serves(tmp_path: Path) -> None:
    builders = pytest.importorskip("hatchling.builders.wheel")
    (wheel,) = builders.WheelBuilder(str(ROOT)).build(
        directory=str(tmp_path), versions=["standard"]
    )
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"wsroom/py.typed"}
    for folder in DATA_FOLDERS:
        for path in (SRC / folder).iterdir():
            if path.is_file() and path.suffix != ".pyc":
                expected.add(path.relative_to(SRC).as_posix())
    assert {"wsroom/admin/admin.html", "wsroom/admin/admin.js"} <= expected
    assert expected - names == set()
