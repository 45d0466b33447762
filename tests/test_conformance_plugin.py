"""The conformance suite as an adapter's author runs it: installed, through its plugin.

In a directory of its own, the adapter of docs/adapters.md and the page's ``conftest.py``
run ``pytest --pyargs wsroom.conformance`` in a subprocess: the suite passes. The same
adapter broken on purpose (a frame type dropped, a wrong close code) fails it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

DOCS_SRC = ROOT / "docs_src" / "adapters"
# As an author runs it, and without writing a .pytest_cache into the directory.
PYTEST = (sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--pyargs")


def author_directory(tmp_path: Path, conftest: str | None = None) -> Path:
    """An author's test directory: the page's adapter, its server factory and a conftest.py
    (the page's unless given)."""
    shutil.copy(DOCS_SRC / "taskadapter.py", tmp_path / "taskadapter.py")
    shutil.copy(DOCS_SRC / "task_adapter_server.py", tmp_path / "task_adapter_server.py")
    if conftest is None:
        shutil.copy(DOCS_SRC / "conformance_conftest.py", tmp_path / "conftest.py")
    else:
        (tmp_path / "conftest.py").write_text(conftest, encoding="utf-8")
    return tmp_path


def run_suite(
    directory: Path, *arguments: str, timeout: float, suite: str = "wsroom.conformance"
) -> subprocess.CompletedProcess[str]:
    """``python -m pytest --pyargs SUITE ARGUMENTS`` in ``directory``, with none of this
    project's configuration; ``suite`` names the suite or one of its modules."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [*PYTEST, suite, *arguments],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_the_runtime_package_imports_without_pytest() -> None:
    # Every module but the suite's, in an interpreter where pytest cannot be imported.
    code = """
import pkgutil, sys
sys.modules["pytest"] = None
import wsroom
for module in pkgutil.walk_packages(wsroom.__path__, "wsroom."):
    if not module.name.startswith("wsroom.conformance"):
        __import__(module.name)
assert "pytest" not in [name for name, m in sys.modules.items() if m is not None]
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    blocked = subprocess.run(
        [
            sys.executable,
            "-c",
            'import sys; sys.modules["pytest"] = None; import wsroom.conformance',
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert blocked.returncode != 0
    assert "pytest" in blocked.stderr


@pytest.mark.timeout(300)
def test_an_adapter_passes_the_suite_through_the_plugin(tmp_path: Path) -> None:
    result = run_suite(author_directory(tmp_path), "-q", timeout=280)
    assert result.returncode == 0, result.stdout
    passed = re.search(r"^(\d+) passed", result.stdout, re.M)
    assert passed is not None, result.stdout
    assert int(passed[1]) > 300, result.stdout
    # Each test ran against the server the conftest named, with it in its id.
    listed = run_suite(tmp_path, "-q", "--collect-only", timeout=60)
    ids = [line for line in listed.stdout.splitlines() if "::" in line]
    assert ids, listed.stdout
    assert all(line.endswith("[task]") or "[task-" in line for line in ids), ids[:5]


BROKEN = """
import json

import pytest

import taskadapter
from task_adapter_server import task_adapter_server

pytest_plugins = ["wsroom.conformance.plugin"]


class Broken(taskadapter.TaskTransport):
{body}


taskadapter.TaskTransport = Broken


def pytest_wsroom_servers(config):
    return {{"broken": task_adapter_server}}
"""

DROPS_PRESENCE = """
    def __init__(self, ws):
        super().__init__(ws)
        send = ws.send

        async def send_all_but_presence(message, *args, **kwargs):
            if json.loads(message)["type"] != "presence":
                await send(message, *args, **kwargs)

        ws.send = send_all_but_presence
"""

WRONG_CLOSE_CODE = """
    async def close(self, code, reason):
        await super().close(1000, reason)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("body", "module", "expected"),
    [
        (DROPS_PRESENCE, "test_presence", r"^FAILED \S*test_presence\w*\[broken\] - TimeoutError"),
        (WRONG_CLOSE_CODE, "test_close_codes", r"^E +assert 1000 == 1001$"),
    ],
    ids=["drops presence frames", "closes with 1000 whatever the code"],
)
def test_a_broken_adapter_fails_the_suite(
    tmp_path: Path, body: str, module: str, expected: str
) -> None:
    directory = author_directory(tmp_path, BROKEN.format(body=body))
    result = run_suite(directory, "-x", timeout=100, suite=f"wsroom.conformance.{module}")
    # 1: tests failed (not a usage or collection error, which are 2 to 4).
    assert result.returncode == 1, result.stdout
    assert re.search(r"^FAILED .*\[broken\]", result.stdout, re.M), result.stdout
    assert re.search(expected, result.stdout, re.M), result.stdout


PLUGIN = 'pytest_plugins = ["wsroom.conformance.plugin"]\n'
FACTORY = "from task_adapter_server import task_adapter_server\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("conftest", "expected"),
    [
        (PLUGIN, "define pytest_wsroom_servers(config)"),
        (
            PLUGIN + "def pytest_wsroom_servers(config):\n    return None\n",
            "define pytest_wsroom_servers(config)",
        ),
        (
            PLUGIN + "def pytest_wsroom_servers(config):\n    return ['task']\n",
            "must return a mapping of names to servers, not ['task']",
        ),
        (
            PLUGIN + "def pytest_wsroom_servers(config):\n    return {'task': 42}\n",
            "'task': expected a Server or a server factory, got 42",
        ),
        (
            PLUGIN
            + FACTORY
            + "from wsroom.conformance import Server\n"
            + "def pytest_wsroom_servers(config):\n"
            + "    return {'task': Server(task_adapter_server, lacks={'telepathy'})}\n",
            "unknown capabilities ['telepathy']",
        ),
        (
            PLUGIN
            + FACTORY
            + "class Other:\n"
            + "    def pytest_wsroom_servers(self, config):\n"
            + "        return {'task': task_adapter_server}\n"
            + "def pytest_configure(config):\n"
            + "    config.pluginmanager.register(Other())\n"
            + "def pytest_wsroom_servers(config):\n"
            + "    return {'task': task_adapter_server}\n",
            "two servers named 'task'",
        ),
    ],
    ids=["no hook", "None", "a list", "not a factory", "unknown capability", "a name twice"],
)
def test_a_wrong_conftest_gets_a_usage_error(tmp_path: Path, conftest: str, expected: str) -> None:
    directory = author_directory(tmp_path, conftest)
    result = run_suite(directory, "-q", "--co", timeout=50, suite="wsroom.conformance.test_smoke")
    # 4: pytest's usage error, with the plugin's message and no traceback.
    assert result.returncode == 4, result.stdout
    assert expected in result.stdout, result.stdout
    assert "Traceback" not in result.stdout, result.stdout
