# Shared by scripts/demo.sh and scripts/test.sh: find Python >= 3.11 and prepare a virtualenv.
# Usage: . scripts/_env.sh; ensure_venv DIR PYTHON EXTRAS
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
    # ensure_venv DIR PYTHON EXTRAS: create DIR with PYTHON and install wsroom[EXTRAS] into it,
    # again only when pyproject.toml changed since the last install.
    local venv="$1" python="$2" extras="$3"
    local stamp="$venv/.wsroom-installed"
    local wanted
    wanted="$(cat "$ROOT/pyproject.toml" | cksum | cut -d' ' -f1)-$extras"
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv"
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[$extras]"
        echo "$wanted" >"$stamp"
    fi
}
