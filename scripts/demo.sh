#!/usr/bin/env bash
# Start the demo chat: installs wsroom into .venv on first use, then serves
# http://127.0.0.1:8765/ (the page) and ws://127.0.0.1:8765/ws. Extra arguments go to
# `wsroom demo`, e.g. `bash scripts/demo.sh --port 9000`.
# It installs what the demo's options need and no development tools: the extras for
# `--transport starlette` (Starlette and uvicorn) and `--redis URL` (redis-py).
. "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
ensure_venv "$ROOT/.venv" "$(find_python)" starlette,redis
exec "$ROOT/.venv/bin/wsroom" demo "$@"
