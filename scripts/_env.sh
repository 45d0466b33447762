# Shared by scripts/demo.sh and scripts/test.sh: find Python >= 3.11, prepare a virtualenv,
# and check the Redis the tests were given.
# Usage: . scripts/_env.sh; ensure_venv DIR PYTHON EXTRAS [GROUPS]; check_test_redis PYTHON
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

find_python() {
    # Prefer an explicit choice, then the newest-supported interpreters on PATH.
    local candidate
    for candidate in "${WSROOM_PYTHON:-}" python3.11 python3 python3.12 python3.13; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    echo "wsroom needs Python 3.11 or newer; set WSROOM_PYTHON to its path" >&2
    return 1
}

ensure_venv() {
    # ensure_venv DIR PYTHON EXTRAS [GROUPS]: create DIR with PYTHON and install wsroom into
    # it, editable, with EXTRAS (comma-separated, may be empty: "starlette,redis") and the
    # dependency groups GROUPS of pyproject.toml (space-separated: "dev"); again only when
    # pyproject.toml changed since the last install of the same EXTRAS and GROUPS. Each
    # install of the current pyproject.toml is remembered, so that scripts/demo.sh and
    # scripts/test.sh, which share .venv, do not re-install in turn.
    local venv="$1" python="$2" extras="$3" groups="${4:-}"
    local stamp="$venv/.wsroom-installed"
    local sum wanted group
    sum="$(cksum <"$ROOT/pyproject.toml" | cut -d' ' -f1)"
    wanted="$sum [$extras] $groups"
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv"
    fi
    if [ -f "$stamp" ] && grep -qxF -- "$wanted" "$stamp"; then
        return 0
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    local install=(-e "$ROOT${extras:+[$extras]}")
    if [ -n "$groups" ]; then
        # `pip install --group` (PEP 735) came with pip 25.1.
        if ! "$venv/bin/python" -c 'import re, sys, pip
major, minor = map(int, re.match(r"(\d+)\.(\d+)", pip.__version__).groups())
sys.exit((major, minor) < (25, 1))'; then
            echo "$venv has pip $("$venv/bin/python" -c 'import pip; print(pip.__version__)'), too old for" \
                "dependency groups, and upgrading it failed: pip 25.1 or newer is needed" \
                "('$venv/bin/python -m pip install --upgrade pip')" >&2
            return 1
        fi
        for group in $groups; do
            install+=(--group "$ROOT/pyproject.toml:$group")
        done
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${install[@]}"
    # Keep what was installed from this pyproject.toml; an older one's installs are stale.
    { awk -v sum="$sum" '$1 == sum' "$stamp" 2>/dev/null || true; echo "$wanted"; } >"$stamp.new"
    mv "$stamp.new" "$stamp"
}

check_test_redis() {
    # check_test_redis PYTHON: when WSROOM_TEST_REDIS_URL is set, make sure a Redis answers
    # PING there (PYTHON must have redis-py); else say what to do and fail. Without this the
    # suite would run anyway and fail hundreds of tests with connection errors.
    [ -n "${WSROOM_TEST_REDIS_URL:-}" ] || return 0
    "$1" - "$WSROOM_TEST_REDIS_URL" <<'PY'
import sys
from urllib.parse import urlsplit

url = sys.argv[1]
try:
    parts = urlsplit(url)
    # Never print a password: show the URL without what precedes '@'.
    shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
except ValueError:
    shown = "(an unparseable URL)"
try:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    finally:
        client.close()
except ValueError as exc:
    problem = f"WSROOM_TEST_REDIS_URL is {shown}, which is not a Redis URL ({exc})"
    fix = "Set it to one, such as redis://127.0.0.1:6379/0"
except Exception as exc:  # redis-py's errors, OSError: Redis does not answer as it should
    reason = str(exc).rstrip(".") or type(exc).__name__
    problem = f"WSROOM_TEST_REDIS_URL is {shown}, but no Redis answers there ({reason})"
    fix = "Start Redis at that address"
else:
    sys.exit(0)
print(
    f"{problem}. {fix}, or unset WSROOM_TEST_REDIS_URL to let scripts/test.sh use the "
    "Redis on 127.0.0.1:6379 or start one of its own.",
    file=sys.stderr,
)
sys.exit(1)
PY
}
