#!/usr/bin/env bash
# Run every check and test: ruff, mypy --strict, then pytest on Python 3.11 (with the
# reliability suite) and on each other supported interpreter found (3.12, 3.13; without it),
# then on the newest websockets release when it is not the one pyproject.toml's range gave
# the first run. Installs what it needs into .venv*/ (Chromium, nginx and Node.js from
# Debian's packages; wsroom.js's test tools from npm into tests/js/node_modules) and makes
# sure a Redis server is reachable (starting a private one on a free port if none answers
# on 127.0.0.1:6379). Arguments go to pytest, e.g.
# `bash scripts/test.sh -k recovery`.
. "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"

PYTHON="$(find_python)"
ensure_venv "$ROOT/.venv" "$PYTHON" "" dev
VPY="$ROOT/.venv/bin/python"
# A Redis named by WSROOM_TEST_REDIS_URL must answer before anything runs.
check_test_redis "$VPY"

APT_UPDATED=""
apt_install() { # apt_install PACKAGE: a Debian package the tests need
    echo "== installing $1"
    if [ -z "$APT_UPDATED" ]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}

# Redis: use WSROOM_TEST_REDIS_URL if given (checked above), else the machine's server, else
# start one.
REDIS_PID=""
cleanup() { [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null || true; }
trap cleanup EXIT
redis_answers() { # redis_answers PORT
    "$VPY" - "$1" <<'PY'
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1) as s:
        s.sendall(b"PING\r\n")
        sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
PY
}
if [ -z "${WSROOM_TEST_REDIS_URL:-}" ]; then
    if redis_answers 6379; then
        export WSROOM_TEST_REDIS_URL="redis://127.0.0.1:6379/0"
    else
        if ! command -v redis-server >/dev/null 2>&1; then
            apt_install redis-server
        fi
        port="$("$VPY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
        redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
            --logfile "" >/dev/null 2>&1 &
        REDIS_PID=$!
        for _ in $(seq 50); do redis_answers "$port" && break; sleep 0.1; done
        export WSROOM_TEST_REDIS_URL="redis://127.0.0.1:$port/0"
        echo "== started redis-server on port $port (pid $REDIS_PID)"
    fi
fi
# The demo page is tested in headless Chromium.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    apt_install chromium
fi
# wsroom.js is tested under Node.js (its test tools, ws and typescript, come from npm).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs
    command -v npm >/dev/null 2>&1 || apt_install npm
fi
echo "== npm ci (tests/js: ws, typescript)"
(cd "$ROOT/tests/js" && npm ci --no-audit --no-fund --loglevel=error)
# With the tools installed, a JavaScript test that cannot run is a failure, not a skip.
export WSROOM_REQUIRE_JS=1
# The reliability suite measures what a reverse proxy in front of the server closes; the
# deployment recipes (docs/operating.md) and the conformance suite run behind nginx too.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    apt_install nginx
fi

# Tests that kill or restart Redis start their own redis-server from this path.
export WSROOM_REDIS_SERVER="$(command -v redis-server || true)"
# A failover under Sentinel (tests/reliability/test_redis_failover.py) runs Debian's
# redis-sentinel; the backplane over TLS needs certificates made by openssl.
if ! command -v redis-sentinel >/dev/null 2>&1; then
    apt_install redis-sentinel
fi
if ! command -v openssl >/dev/null 2>&1; then
    apt_install openssl
fi

echo "== ruff"
"$ROOT/.venv/bin/ruff" check src tests examples benchmarks docs_src
"$ROOT/.venv/bin/ruff" format --check src tests examples benchmarks docs_src docs_src
echo "== mypy --strict"
"$ROOT/.venv/bin/mypy"

status=0
echo "== pytest ($("$VPY" -V)), with the reliability suite"
"$VPY" -m pytest "$@" || status=$?
# The reliability suite (tests/reliability) runs once, above: it measures servers under
# load, which the interpreter does not change, and takes minutes. So do wsroom.js's own
# tests under Node.js, which no Python interpreter changes either, and the conformance
# plugin's own tests (an author's run in a subprocess): every run below goes through the
# same plugin to run the suite itself. The deployment recipes (uvicorn, gunicorn and nginx
# processes) and the conformance suite's two-node and nginx servers also run once: they add
# processes and a backplane whose Python code the other tests cover on every interpreter,
# and would double the time of each run below.
ONCE=(
    --ignore=tests/reliability
    --ignore=tests/test_browser_client_node.py
    --ignore=tests/test_conformance_plugin.py
    --ignore=tests/test_deployment.py
    --ignore=tests/test_nginx.py
)

# The same suite on the other supported interpreters installed here (pyenv or PATH).
for version in 3.12 3.13; do
    other=""
    candidates=("python$version")
    if command -v pyenv >/dev/null 2>&1; then
        for dir in "$(pyenv root)"/versions/"$version".*; do candidates+=("$dir/bin/python"); done
    fi
    for candidate in "${candidates[@]}"; do
        # pyenv's shims exist for every version; only running one tells if it works.
        if "$candidate" -c "import sys; sys.exit(sys.version_info[:2] != (${version/./, }))" 2>/dev/null; then
            other="$candidate"
            break
        fi
    done
    if [ -z "$other" ]; then
        echo "== Python $version not installed here: skipped"
        continue
    fi
    ensure_venv "$ROOT/.venv-$version" "$other" "" dev
    echo "== pytest ($("$ROOT/.venv-$version/bin/python" -V))"
    WSROOM_CONFORMANCE_ONE_NODE=1 \
        "$ROOT/.venv-$version/bin/python" -m pytest -q "${ONCE[@]}" "$@" || status=$?
done
# The suite against the newest websockets release on PyPI, outside the range pyproject.toml
# states if need be: a new release that moves what the fast path uses (or anything else) shows
# up here before users see it.
tested="$("$VPY" -c 'import websockets; print(websockets.__version__)')"
newest="$("$VPY" -m pip install --dry-run --quiet --disable-pip-version-check --ignore-installed \
    --no-deps --report - websockets 2>/dev/null |
    "$VPY" -c 'import json, sys; print(json.load(sys.stdin)["install"][0]["metadata"]["version"])' \
    2>/dev/null || true)"
if [ -z "$newest" ]; then
    echo "== newest websockets release: PyPI did not answer, skipped"
elif [ "$newest" = "$tested" ]; then
    echo "== websockets $newest, the newest release, is the one the suite ran on: no second run"
else
    NEWEST="$ROOT/.venv-websockets-newest"
    ensure_venv "$NEWEST" "$PYTHON" "" dev
    "$NEWEST/bin/python" -m pip install --quiet --disable-pip-version-check "websockets==$newest"
    echo "== pytest (websockets $newest, the newest release; the run above had $tested)"
    "$NEWEST/bin/python" -m pytest -q "${ONCE[@]}" "$@" || status=$?
fi
exit $status
