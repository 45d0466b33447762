"""wsroom.js as the package ships it and as each adapter serves it: the script, its ETag and
304, the way every other request still reaches the server, and the npm package."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

import wsroom
import wsroom.browser
from tests.helpers import (
    TIMEOUT,
    Client,
    http_request,
    uvicorn_server,
    websockets_asyncio_server,
    websockets_sync_server,
)
from wsroom import ConnectionManager, Room

Served = Callable[[ConnectionManager, str], AbstractAsyncContextManager[int]]


@asynccontextmanager
async def on_websockets(manager: ConnectionManager, path: str) -> AsyncIterator[int]:
    from wsroom.adapters.websockets import client_script

    async with websockets_asyncio_server(manager, process_request=client_script(path)) as url:
        yield int(url.rsplit(":", 1)[1])


@asynccontextmanager
async def on_websockets_sync(manager: ConnectionManager, path: str) -> AsyncIterator[int]:
    from wsroom.adapters.websockets_sync import client_script

    async with websockets_sync_server(manager, process_request=client_script(path)) as url:
        yield int(url.rsplit(":", 1)[1])


@asynccontextmanager
async def on_starlette(manager: ConnectionManager, path: str) -> AsyncIterator[int]:
    from starlette.applications import Starlette

    from wsroom.adapters.starlette import client_route, routes

    app = Starlette(routes=[client_route(path), *routes("/ws", manager)])
    async with uvicorn_server(manager, app) as server:
        yield int(server.servers[0].sockets[0].getsockname()[1])


SERVERS: dict[str, Served] = {
    "websockets": on_websockets,
    "websockets_sync": on_websockets_sync,
    "starlette": on_starlette,
}


@pytest.mark.parametrize("served", SERVERS.values(), ids=SERVERS.keys())
async def test_each_adapter_serves_the_script_and_lets_the_rest_through(served: Served) -> None:
    manager = ConnectionManager(Room)
    async with served(manager, "/static/wsroom.js") as port:
        status, headers, body = await http_request(port, "/static/wsroom.js")
        assert status == 200
        assert body == wsroom.browser.script()
        assert headers["content-type"] == "text/javascript; charset=utf-8"
        assert headers["content-length"] == str(len(body))
        assert headers["cache-control"] == "no-cache"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["access-control-allow-origin"] == "*"  # importable from any origin
        etag = headers["etag"]
        assert re.fullmatch(r'"[0-9a-f]{32}"', etag)

        # A current copy costs a 304 without a body; a stale one gets the script.
        status, headers, body = await http_request(
            port, "/static/wsroom.js", headers=f"If-None-Match: {etag}\r\n"
        )
        assert (status, body, headers["etag"]) == (304, b"", etag)
        status, _, body = await http_request(
            port, "/static/wsroom.js?v=2", headers='If-None-Match: W/"stale", "older"\r\n'
        )
        assert status == 200 and body == wsroom.browser.script()

        # Only that path: the WebSocket is served as before.
        client = await Client.connect(f"ws://127.0.0.1:{port}", "/ws")
        try:
            assert (await client.join("lobby"))["type"] == "joined"
        finally:
            await client.close()


async def test_starlette_answers_head_with_the_length_of_the_script() -> None:
    async with on_starlette(ConnectionManager(Room), "/wsroom.js") as port:
        status, headers, body = await http_request(port, "/wsroom.js", method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["content-length"] == str(len(wsroom.browser.script()))


def test_script_response_matches_entity_tags_as_http_says() -> None:
    etag = dict(wsroom.browser.script_response().headers)["ETag"]
    assert wsroom.browser.script_response(f"W/{etag}").status == 304  # weak comparison
    assert wsroom.browser.script_response(f'"other", {etag}').status == 304
    assert wsroom.browser.script_response("*").status == 304
    assert wsroom.browser.script_response('"other"').status == 200
    head = wsroom.browser.script_response(head=True)
    assert head.body == b"" and ("Content-Length", str(len(wsroom.browser.script()))) in (
        head.headers
    )


def test_the_package_ships_the_script_its_declarations_and_package_json() -> None:
    folder = wsroom.browser.directory()
    for name in ("wsroom.js", "wsroom.d.ts", "package.json", "README.md"):
        assert (folder / name).is_file(), name
    assert wsroom.browser.declarations().startswith(b"// Type declarations for wsroom.js")
    package = json.loads((folder / "package.json").read_text())
    assert package["type"] == "module"
    assert package["exports"]["."] == {"types": "./wsroom.d.ts", "default": "./wsroom.js"}


def test_versions_agree() -> None:
    """wsroom.js, its package.json and the Python package carry one version (npm spells a
    pre-release 0.1.0-dev.0 where Python spells it 0.1.0.dev0)."""
    npm_version = json.loads((wsroom.browser.directory() / "package.json").read_text())["version"]
    match = re.search(rb'export const VERSION = "([^"]+)";', wsroom.browser.script())
    assert match is not None
    assert match.group(1).decode() == npm_version
    assert re.sub(r"-(dev|rc|a|b)\.", r".\1", npm_version) == wsroom.__version__


def _npm() -> str | None:
    npm = shutil.which("npm")
    if npm is None and os.environ.get("WSROOM_REQUIRE_JS") == "1":
        pytest.fail("npm is not installed (scripts/test.sh installs it: apt-get install npm)")
    return npm


def test_npm_pack_makes_a_package_of_exactly_the_client() -> None:
    npm = _npm()
    if npm is None:
        pytest.skip("needs npm (scripts/test.sh installs it)")
    result = subprocess.run(
        [npm, "pack", "--dry-run", "--json", "--ignore-scripts"],
        cwd=wsroom.browser.directory(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 6,
        check=True,
        env={**os.environ, "npm_config_update_notifier": "false"},
    )
    (package,) = json.loads(result.stdout)
    assert package["name"] == "wsroom"
    assert sorted(entry["path"] for entry in package["files"]) == [
        "README.md",
        "package.json",
        "wsroom.d.ts",
        "wsroom.js",
    ]


@pytest.mark.parametrize("served", SERVERS.values(), ids=SERVERS.keys())
async def test_a_plain_get_of_the_websocket_path_tells_a_refusal_from_426(served: Served) -> None:
    """A browser never sees the status of a refused upgrade; wsroom.js asks again without
    the upgrade, and every adapter answers with the refusal the upgrade got."""

    def authenticate(handshake: wsroom.Handshake) -> str | None:
        token = handshake.query.get("token")
        if token == "banned":
            raise wsroom.HandshakeRejected(403, "Forbidden: banned")
        return token

    manager = ConnectionManager(Room, authenticate=authenticate)
    async with served(manager, "/wsroom.js") as port:
        status, headers, _ = await http_request(port, "/ws")
        assert status == 401 and headers["www-authenticate"] == 'Bearer realm="wsroom"'
        assert (await http_request(port, "/ws?token=banned"))[0] == 403
        status, headers, _ = await http_request(port, "/ws?token=alice")
        assert status == 426 and headers["upgrade"].lower() == "websocket"


DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_docs_chat_page_is_the_example_that_runs() -> None:
    page = (DOCS / "browser-client.md").read_text()
    example = (DOCS.parent / "examples" / "browser_chat.html").read_text()
    # The site includes the file itself, which the browser tests run.
    assert '```html\n--8<-- "examples/browser_chat.html"\n```' in page
    assert len(example.splitlines()) <= 60
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page):
        assert (DOCS / target).exists(), target


def test_the_npm_package_installs_and_imports(tmp_path: Path) -> None:
    """What `npm pack` makes installs into a project, offline, and Node.js imports it by
    its package name with every export there."""
    npm = _npm()
    node = shutil.which("node")
    if npm is None or node is None:
        pytest.skip("needs Node.js and npm (scripts/test.sh installs them)")
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false"}

    def run(*command: str, cwd: Path | str) -> str:
        result = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT * 12, env=env
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    packed = run(npm, "pack", "--pack-destination", str(tmp_path), cwd=wsroom.browser.directory())
    tarball = tmp_path / packed.strip().splitlines()[-1]
    project = tmp_path / "app"
    project.mkdir()
    (project / "package.json").write_text('{"name": "app", "private": true, "type": "module"}')
    run(npm, "install", "--offline", "--no-audit", str(tarball), cwd=project)
    script = (
        'import * as wsroom from "wsroom";'
        "console.log(JSON.stringify([wsroom.VERSION, typeof wsroom.connect,"
        " wsroom.SERVER_ERROR_CODES.length]));"
    )
    version, connect, codes = json.loads(
        run(node, "--input-type=module", "-e", script, cwd=project)
    )
    assert (connect, codes) == ("function", 9)
    assert (
        version == json.loads((wsroom.browser.directory() / "package.json").read_text())["version"]
    )
