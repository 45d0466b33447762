"""scripts/: the test command stops at once, with what to do, when the Redis it was given does
not answer; development tools are dependency groups, never extras an application installs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TIMEOUT, free_port

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


def check_test_redis(url: str | None) -> subprocess.CompletedProcess[str]:
    """scripts/_env.sh's ``check_test_redis`` with ``WSROOM_TEST_REDIS_URL=url`` (unset for
    ``None``), run by bash on this interpreter, which has redis-py."""
    env = {name: value for name, value in os.environ.items() if name != "WSROOM_TEST_REDIS_URL"}
    if url is not None:
        env["WSROOM_TEST_REDIS_URL"] = url
    return subprocess.run(
        [
            "bash",
            "-c",
            '. "$1" && check_test_redis "$2"',
            "bash",
            SCRIPTS / "_env.sh",
            sys.executable,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        env=env,
    )


ADVICE = (
    "or unset WSROOM_TEST_REDIS_URL to let scripts/test.sh use the Redis on 127.0.0.1:6379 "
    "or start one of its own."
)


def test_a_dead_redis_stops_with_one_message_saying_what_to_do() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    result = check_test_redis(url)
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"WSROOM_TEST_REDIS_URL is {url}, but no Redis answers there ("), line
    assert line.endswith(f"Start Redis at that address, {ADVICE}"), line


def test_the_message_never_shows_a_password() -> None:
    result = check_test_redis(f"redis://:s3cret@127.0.0.1:{free_port()}/0")
    assert result.returncode == 1
    assert "s3cret" not in result.stderr
    assert "WSROOM_TEST_REDIS_URL is redis://127.0.0.1:" in result.stderr


@pytest.mark.parametrize("url", ["notaurl", "http://127.0.0.1:6379/0", "redis://[::1"])
def test_something_not_a_redis_url_stops_too(url: str) -> None:
    result = check_test_redis(url)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "which is not a Redis URL" in line, line
    assert line.endswith(f"Set it to one, such as redis://127.0.0.1:6379/0, {ADVICE}"), line


def test_a_live_redis_passes_silently(shared_url: str) -> None:
    result = check_test_redis(shared_url)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_no_url_given_is_not_checked() -> None:
    result = check_test_redis(None)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_test_command_checks_before_anything_else_runs() -> None:
    script = (SCRIPTS / "test.sh").read_text()
    check = script.index('check_test_redis "$VPY"')
    # Right after the virtualenv that brings redis-py, before Redis is used or anything is
    # installed from Debian or npm, and before the checks and the tests.
    assert script.index('ensure_venv "$ROOT/.venv"') < check
    for later in ("redis_answers 6379", "apt_install chromium", "npm ci", "== ruff", "-m pytest"):
        assert check < script.index(later), later


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def test_development_tools_are_groups_not_extras() -> None:
    project = _pyproject()
    extras = project["project"]["optional-dependencies"]
    assert set(extras) == {"starlette", "uvicorn", "redis", "metrics", "aiohttp", "conformance"}
    # The one extra with test tools is what the conformance suite, shipped for the authors
    # of adapters, runs with; the project's own tools stay out of every extra.
    names = {
        re.split(r"[^\w-]", requirement, maxsplit=1)[0] for requirement in extras["conformance"]
    }
    assert names == {"pytest", "pytest-asyncio", "pytest-timeout", "psutil"}
    for tool in ("mypy", "ruff", "hypothesis", "playwright"):
        assert not any(r.startswith(tool) for extra in extras.values() for r in extra), tool
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
