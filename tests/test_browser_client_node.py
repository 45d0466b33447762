"""wsroom.js under Node.js: its test suite (tests/js/*.test.mjs, real servers on 127.0.0.1)
and a TypeScript usage file checked against its declarations.

Both need ``node`` and the npm tools of tests/js (``cd tests/js && npm ci``); without them the
tests are skipped, unless ``WSROOM_REQUIRE_JS=1`` says they must run (then they fail).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "tests" / "js"
DECLARATIONS = ROOT / "src" / "wsroom" / "browser" / "wsroom.d.ts"

# The whole Node suite takes well under a minute; this only bounds a hang.
NODE_SUITE_TIMEOUT = 150.0
TSC_TIMEOUT = 120.0


def require_node() -> str:
    """The path of ``node``, once the Node tools are known to be there; else skip or fail."""
    node = shutil.which("node")
    if node is None:
        missing = "node is not installed"
    elif not (JS / "node_modules").is_dir():
        missing = "tests/js/node_modules is missing (run `npm ci` in tests/js)"
    else:
        return node
    if os.environ.get("WSROOM_REQUIRE_JS") == "1":
        pytest.fail(f"WSROOM_REQUIRE_JS=1, but {missing}")
    pytest.skip(missing)


def run(command: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Run ``command`` from the repository's root; fail with its output unless it exits 0."""
    try:
        result = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.output if isinstance(exc.output, str) else ""
        pytest.fail(f"{' '.join(command)} took more than {timeout} s:\n{output}")
    if result.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited with {result.returncode}:\n{result.stdout}")
    return result.stdout


@pytest.mark.timeout(NODE_SUITE_TIMEOUT + 10)
def test_node_suite() -> None:
    node = require_node()
    # The servers the suite starts run on this interpreter, which has wsroom installed;
    # the rest of the environment (WSROOM_TEST_REDIS_URL among it) is inherited.
    env = {**os.environ, "WSROOM_TEST_PYTHON": sys.executable}
    output = run([node, "--test", "tests/js/"], NODE_SUITE_TIMEOUT, env)
    assert "# fail 0" in output, output


@pytest.mark.timeout(TSC_TIMEOUT + 10)
def test_typescript_usage() -> None:
    require_node()
    if not DECLARATIONS.exists():
        pytest.skip("wsroom.d.ts not written yet")
    tsc = JS / "node_modules" / ".bin" / "tsc"
    run([str(tsc), "--noEmit", "-p", str(JS / "tsconfig.json")], TSC_TIMEOUT)
