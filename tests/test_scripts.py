"""Development tools are dependency groups, never extras an application installs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def test_development_tools_are_groups_not_extras() -> None:
    project = _pyproject()
    extras = project["project"]["optional-dependencies"]
    assert set(extras) == {"starlette", "uvicorn", "redis"}
    # `pip install "wsroom[starlette]"` can run `wsroom demo --transport starlette`.
    assert any(re.match(r"uvicorn\b", requirement) for requirement in extras["starlette"])
    groups = project["dependency-groups"]
    assert {"dev", "bench"} <= set(groups)
    for tool in ("pytest", "mypy", "ruff"):
        assert any(requirement.startswith(tool) for requirement in groups["dev"]), tool


def test_project_urls() -> None:
    urls = _pyproject()["project"]["urls"]
    assert set(urls) == {"Homepage", "Documentation", "Source", "Issues", "Changelog"}
    assert all(url.startswith("https://") for url in urls.values())


def test_no_script_or_page_names_the_old_extras() -> None:
    old = re.compile(r"\[(?:[a-z,]*,)?(?:dev|bench)(?:,[a-z,]*)?\]")
    places = [ROOT / "README.md", *SCRIPTS.glob("*.sh"), *(ROOT / "docs").glob("*.md")]
    places += [*(ROOT / "benchmarks").rglob("*.py"), *(ROOT / ".ci").iterdir()]
    for path in places:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not old.search(line), f"{path.relative_to(ROOT)}:{number}: {line}"
