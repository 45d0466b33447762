"""Every code block of the documentation is a file the tests run or import, or is checked
against the code, so no page can show code that no longer works.

- A page's Python, JavaScript and HTML blocks are only ``--8<-- "path"`` lines, included
  by pymdownx.snippets from ``docs_src/<page>/`` (or ``examples/``). Every ``docs_src``
  Python file imports (with its folder on ``sys.path``, as its page says to save it), and
  the tests below run the pages' programs against real clients on 127.0.0.1. Scripts
  type-check against wsroom.d.ts. Every included file exists and a test exercises it.
- api.md's Python blocks are signatures, kept inline and checked against the objects
  they name.
- JSON blocks are protocol frames the server would send or accept.
- Shell commands name modules, files, CLI options, extras and groups that exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from tests.helpers import (
    ROOT,
    TIMEOUT,
    Client,
    check_error,
    check_frame,
    uvicorn_server,
    wait_for,
    websockets_asyncio_server,
    websockets_sync_server,
)
from wsroom import ConnectionManager

DOCS = ROOT / "docs"
DOCS_SRC = ROOT / "docs_src"

# api.md's Python blocks are signatures, kept inline: test_api_signatures_match_the_code
# checks each against the object it names.
SIGNATURE_PAGE = "api.md"

# Languages whose blocks must be included files rather than inline code.
INCLUDED_LANGUAGES = {"python", "py", "js", "javascript", "html", "ts", "typescript"}

# Files under examples/ that a page includes, and the test that runs or imports each one.
EXAMPLE_TESTS = {
    "examples/fastapi_chat.py": "tests/test_examples.py",
    "examples/django_chat/asgi.py": "tests/test_examples.py",
    "examples/django_chat/channels_asgi.py": "tests/test_examples.py",
    "examples/quart_chat.py": "tests/test_examples.py",
    "examples/litestar_chat.py": "tests/test_examples.py",
    "examples/browser_chat.html": "tests/test_browser_chat_example.py",
}

# Files under docs_src/ a page includes that are neither Python nor a page (configuration
# files), and the test that runs or parses each one.
CONFIG_TESTS = {
    "docs_src/operating/wsroom.conf": "tests/nginx_support.py",
    "docs_src/operating/docker-compose.yml": "tests/test_deployment.py",
    "docs_src/operating/wsroom-chat.service": "tests/test_deployment.py",
}

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")
INCLUDE = re.compile(r'^--8<-- "(?P<path>[^"]+)"$')


class Block:
    def __init__(self, page: str, line: int, language: str, body: list[str], section: str) -> None:
        self.page = page
        self.line = line
        self.language = language
        self.body = body
        self.section = section
        """The ``## `` heading the block is under."""

    def __repr__(self) -> str:
        return f"{self.page}:{self.line} ({self.language})"

    @property
    def include(self) -> str | None:
        """The path the block includes, if it is only a ``--8<--`` line."""
        lines = [line.strip() for line in self.body if line.strip()]
        match = INCLUDE.match(lines[0]) if len(lines) == 1 else None
        return match["path"] if match else None


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a page, at any indentation (tabs, admonitions, lists)."""
    found = []
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    section = ""
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            if lines[index].startswith("## "):
                section = lines[index][3:].strip()
            index += 1
            continue
        language = opening["info"].strip().split(" ")[0].lstrip(".").lower()
        body = []
        start = index + 1
        index += 1
        while index < len(lines):
            closing = FENCE.match(lines[index])
            if closing and closing["fence"].startswith(opening["fence"]) and not closing["info"]:
                break
            body.append(lines[index])
            index += 1
        found.append(Block(page.name, start, language, body, section))
        index += 1
    return found


PAGES = sorted(DOCS.glob("*.md"))
ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]
INCLUDES = sorted({block.include for block in ALL_BLOCKS if block.include})
DOCS_SRC_FILES = sorted(DOCS_SRC.rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# 1. Every docs_src file imports, as its page says to save it.


@contextlib.contextmanager
def on_path(folder: Path) -> Iterator[None]:
    """``folder`` first on ``sys.path``, then Getting started's (whose ``server.py``, the
    pages' running example, other pages import); the modules imported from them forgotten
    after."""
    before = set(sys.modules)
    folders = [str(folder), str(DOCS_SRC / "getting_started")]
    sys.path[:0] = folders
    try:
        yield
    finally:
        for entry in folders:
            sys.path.remove(entry)
        for name in set(sys.modules) - before:
            file = getattr(sys.modules[name], "__file__", None) or ""
            if file.startswith(str(DOCS_SRC)):
                del sys.modules[name]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", DOCS_SRC_FILES, ids=_rel)
def test_every_docs_src_file_imports(path: Path) -> None:
    with on_path(path.parent):
        namespace = runpy.run_path(str(path), run_name="docs_src")
    # A program keeps what it does behind main(): importing it starts nothing.
    assert namespace["__name__"] == "docs_src"


def load(path: str) -> ModuleType:
    """``docs_src/<path>`` as a fresh module (call inside :func:`on_path`)."""
    file = DOCS_SRC / path
    spec = importlib.util.spec_from_file_location(f"docs_src_{file.stem}", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def chat(url: str, path: str = "/ws") -> None:
    """What the getting-started chat does: join, say hello, refuse what is not text."""
    ann = await Client.connect(url, f"{path}?user=ann")
    try:
        joined = check_frame(await ann.request({"type": "join", "room": "lobby"}), "joined")
        assert joined["members"] == ["ann"]
        await ann.send({"type": "message", "room": "lobby", "data": "hello"})
        message = check_frame(await ann.recv_type("message"), "message")
        assert (message["from"], message["data"]) == ("ann", "hello")
        refused = await ann.request({"type": "message", "room": "lobby", "data": {"x": 1}})
        check_error(refused, "invalid_message", ann._ref)
    finally:
        await ann.close()


@contextlib.asynccontextmanager
async def running(
    main: Callable[[], Any], module: ModuleType, host: str = "127.0.0.1"
) -> AsyncIterator[str]:
    """Run a page's ``async def main()`` with its ``serve`` (on ``host``, port 8765) on
    127.0.0.1 and port 0; yield the URL."""
    from wsroom.adapters import websockets as adapter

    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    expected_host = host

    @contextlib.asynccontextmanager
    async def serve(manager: ConnectionManager, host: str, port: int, **options: Any) -> Any:
        assert (host, port) == (expected_host, 8765)
        async with adapter.serve(manager, "127.0.0.1", 0, **options) as server:
            started.set_result(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}")
            yield server

    module.serve = serve  # type: ignore[attr-defined]
    task = asyncio.create_task(main())
    try:
        yield await asyncio.wait_for(started, TIMEOUT)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, TIMEOUT)


# 2. The getting-started servers serve a real client.


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["server.py", "server_asyncio.py", "server_with_client.py"])
async def test_getting_started_asyncio_servers(name: str) -> None:
    with on_path(DOCS_SRC / "getting_started"):
        module = load(f"getting_started/{name}")
        async with running(module.main, module) as url:
            await chat(url)
            if name == "server_with_client.py":
                status, body = await asyncio.to_thread(
                    _get, url.replace("ws:", "http:") + "/wsroom.js"
                )
                assert status == 200 and b"export function connect(" in body


def _get(url: str) -> tuple[int, bytes]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        return response.status, response.read()


@pytest.mark.timeout(30)
async def test_getting_started_threading_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from wsroom.adapters import websockets_sync

    with on_path(DOCS_SRC / "getting_started"):
        module = load("getting_started/server_sync.py")
        servers: list[websockets_sync.Server] = []

        @contextlib.contextmanager
        def serve(manager: ConnectionManager, host: str, port: int) -> Iterator[Any]:
            assert (host, port) == ("127.0.0.1", 8765)
            with websockets_sync.serve(manager, host, 0) as server:
                servers.append(server)
                yield server

        monkeypatch.setattr(module, "websockets_sync", SimpleNamespace(serve=serve))
        thread = threading.Thread(target=module.main, daemon=True)
        thread.start()
        try:
            await wait_for(lambda: bool(servers))
            await chat(f"ws://127.0.0.1:{servers[0].socket.getsockname()[1]}")
        finally:
            if servers:
                await asyncio.to_thread(servers[0].shutdown)
            await asyncio.to_thread(thread.join, TIMEOUT)
        assert not thread.is_alive()


@pytest.mark.timeout(30)
async def test_getting_started_starlette_app() -> None:
    with on_path(DOCS_SRC / "getting_started"):
        module = load("getting_started/server_starlette.py")
        async with uvicorn_server(module.manager, module.app) as server:
            await chat(f"ws://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("factory", [websockets_asyncio_server, websockets_sync_server])
async def test_getting_started_room_on_the_other_adapters(factory: Any) -> None:
    with on_path(DOCS_SRC / "getting_started"):
        module = load("getting_started/other_origin.py")
        assert module.manager  # the page's manager with an allowed origin
        server = load("getting_started/server.py")
        manager = ConnectionManager(server.ChatRoom, authenticate=server.authenticate)
        async with factory(manager) as url:
            await chat(url)


# 3. The pages include their code rather than show it inline.


def inline_blocks(page: Path) -> list[Block]:
    return [
        block
        for block in blocks(page)
        if block.language in INCLUDED_LANGUAGES
        and block.include is None
        and not (page.name == SIGNATURE_PAGE and block.language == "python")
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_pages_have_no_inline_code(page: Path) -> None:
    inline = inline_blocks(page)
    assert not inline, f"inline code blocks, to move to docs_src/: {inline}"


@pytest.mark.parametrize("path", INCLUDES)
def test_every_included_file_exists_and_is_exercised(path: str) -> None:
    assert (ROOT / path).is_file(), path
    if path in CONFIG_TESTS:
        test = (ROOT / CONFIG_TESTS[path]).read_text(encoding="utf-8")
        assert Path(path).name in test, (path, CONFIG_TESTS[path])
    elif path.startswith("docs_src/"):
        # Python files by test_every_docs_src_file_imports; HTML pages by the scripts' check.
        assert path.endswith((".py", ".html", ".js")), path
    else:
        assert path in EXAMPLE_TESTS, f"{path}: which test runs it?"
        test = (ROOT / EXAMPLE_TESTS[path]).read_text(encoding="utf-8")
        assert Path(path).stem in test or Path(path).name in test, (path, EXAMPLE_TESTS[path])


def test_docs_src_file_names_are_unique() -> None:
    # Each folder is a reader's directory, not a package: mypy checks every file as a
    # top-level module named after it, so two files of one name would be one module.
    names = [path.stem for path in DOCS_SRC_FILES]
    assert len(names) == len(set(names)), sorted(names)


def test_every_docs_src_file_is_on_a_page() -> None:
    files = {_rel(path) for path in DOCS_SRC.rglob("*") if path.is_file()}
    files = {
        path for path in files if not path.endswith("__init__.py") and "__pycache__" not in path
    }
    assert files - set(INCLUDES) == set()


# 4. Shell commands stay inline, but name modules, files, options, extras and groups that
# exist.

COMMAND_MODULE = re.compile(r"python3? -m (?P<module>[\w.]+)")
SHELL_LANGUAGES = {"sh", "bash", "console", "shell"}
SHELL_TEXT = "\n".join(
    "\n".join(block.body) for block in ALL_BLOCKS if block.language in SHELL_LANGUAGES
)


def test_shell_commands_name_modules_and_files_that_exist() -> None:
    for block in ALL_BLOCKS:
        if block.language not in SHELL_LANGUAGES:
            continue
        text = "\n".join(block.body)
        for match in COMMAND_MODULE.finditer(text):
            module = match["module"]
            if module.split(".")[0] in {"pip", "venv", "pytest", "uvicorn", "http"}:
                continue
            assert importlib.util.find_spec(module) is not None, (block, module)
        for module in re.findall(r"--pyargs ([\w.]+)", text):
            assert importlib.util.find_spec(module) is not None, (block, module)
        pattern = r"(?<![\w/.$-])((?:benchmarks|docs|docs_src|examples|scripts|tests)/[\w./-]*\w)"
        for path in re.findall(pattern, text):
            assert (ROOT / path).exists(), (block, path)


@pytest.mark.timeout(60)
def test_shell_commands_use_options_the_cli_has() -> None:
    commands = re.findall(r"(?:^|\s)(?:python -m )?wsroom (\w+)([^\n#&]*)", SHELL_TEXT, re.M)
    assert commands
    helps: dict[str, str] = {}
    for command, arguments in commands:
        if command not in helps:
            helps[command] = subprocess.run(
                [sys.executable, "-m", "wsroom", command, "--help"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
        for option in re.findall(r"(--[\w-]+)", arguments):
            assert option in helps[command], f"wsroom {command} has no {option}"


def test_pip_commands_name_extras_and_groups_that_exist() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = set(project["project"]["optional-dependencies"])
    groups = set(project["dependency-groups"])
    for listed in re.findall(r"wsroom\[([\w,]+)\]", SHELL_TEXT):
        assert set(listed.split(",")) <= extras, listed
    for group in re.findall(r"--group (\w+)", SHELL_TEXT):
        assert group in groups, group


# 5. JavaScript: each included script (a .js file, or the module scripts of an .html page)
# type-checks against wsroom.d.ts, as tests/js/usage.ts does.

JS = ROOT / "tests" / "js"
SCRIPT = re.compile(r'<script type="module">\n(?P<code>.*?)</script>', re.DOTALL)
TSC_TIMEOUT = 120.0


def require_tsc() -> Path:
    """tests/js's TypeScript compiler; else skip, or fail under ``WSROOM_REQUIRE_JS=1``."""
    tsc = JS / "node_modules" / ".bin" / "tsc"
    if shutil.which("node") is not None and tsc.is_file():
        return tsc
    missing = "node or tests/js/node_modules is missing (run `npm ci` in tests/js)"
    if os.environ.get("WSROOM_REQUIRE_JS") == "1":
        pytest.fail(f"WSROOM_REQUIRE_JS=1, but {missing}")
    pytest.skip(missing)


@pytest.mark.timeout(TSC_TIMEOUT + 10)
def test_included_scripts_type_check_against_the_declarations(tmp_path: Path) -> None:
    files = []
    for path in INCLUDES:
        if not path.startswith("docs_src/"):
            continue
        if path.endswith(".js"):
            files.append(str(ROOT / path))
        elif path.endswith(".html"):
            scripts = SCRIPT.findall((ROOT / path).read_text(encoding="utf-8"))
            assert scripts, f"{path} has no module script"
            for number, code in enumerate(scripts):
                # Named after the page, so the compiler's messages say where to look.
                script = tmp_path / (path.replace("/", "__") + f".{number}.js")
                script.write_text(code, encoding="utf-8")
                files.append(str(script))
    assert files
    shims = tmp_path / "shims.d.ts"
    shims.write_text('declare module "ws" { export const WebSocket: unknown; }\n')
    files.append(str(shims))
    tsc = require_tsc()
    declarations = ROOT / "src" / "wsroom" / "browser" / "wsroom.d.ts"
    config = {
        "compilerOptions": {
            "target": "ES2022",
            "module": "ESNext",
            "moduleResolution": "Bundler",
            "lib": ["ES2022", "DOM"],
            "types": [],
            "allowJs": True,
            "checkJs": True,
            "strict": True,
            "noEmit": True,
            # Pages import the script the server serves, Node.js programs the package;
            # wsroom.d.ts declares both. ws, untyped, is declared below.
            "paths": {"/wsroom.js": [str(declarations)], "wsroom": [str(declarations)]},
        },
        "files": files,
    }
    (tmp_path / "tsconfig.json").write_text(json.dumps(config), encoding="utf-8")
    result = subprocess.run(
        [str(tsc), "--noEmit", "-p", str(tmp_path / "tsconfig.json")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=TSC_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout


# 6. Rooms: the page's rooms and handlers answer as its comments say.


@pytest.mark.timeout(30)
async def test_rooms_chat_room() -> None:
    from wsroom.testing import TestClient

    with on_path(DOCS_SRC / "rooms"):
        manager = load("rooms/chat_room.py").manager
    async with TestClient(manager, user="ann") as ann, TestClient(manager, user=None) as guest:
        check_error(await ann.join("team:red"), "forbidden", ann._ref)
        assert (await ann.join("lobby"))["type"] == "joined"
        assert (await ann.receive_type("topic"))["data"] == {"topic": ""}
        await guest.join("lobby")
        check_error(await guest.message("lobby", "hi"), "forbidden", guest._ref)
        await ann.request({"type": "set_topic", "room": "lobby", "data": "news"})
        topic = await guest.receive_type("topic")
        assert topic["data"] == {"topic": "news", "by": "ann"}


@pytest.mark.timeout(30)
async def test_rooms_table_room_answers_with_data() -> None:
    from wsroom.testing import TestClient

    with on_path(DOCS_SRC / "rooms"):
        manager = load("rooms/table_room.py").manager
    async with TestClient(manager, user="ann") as ann, TestClient(manager, user="bob") as bob:
        await ann.join("table:1")
        await bob.join("table:1")
        assert (await ann.request({"type": "sit", "room": "table:1"}))["data"] == 1
        assert (await bob.request({"type": "sit", "room": "table:1"}))["data"] == 2
        assert (await ann.request({"type": "sit", "room": "table:1"}))["data"] == 1
        dice = (await ann.request({"type": "roll", "room": "table:1"}))["data"]
        assert len(dice) == 2 and all(1 <= die <= 6 for die in dice)
        rolled = await bob.receive_type("rolled")
        assert rolled["data"] == {"user": "ann", "dice": dice}


@pytest.mark.timeout(30)
async def test_rooms_handlers_and_choose_room() -> None:
    from wsroom.testing import TestClient

    with on_path(DOCS_SRC / "rooms"):
        whoami = load("rooms/whoami.py").manager
        my_rooms = load("rooms/my_rooms.py").manager
        choose = load("rooms/choose_room.py")
    async with TestClient(whoami, user="ann") as ann:
        await ann.join("lobby")
        await ann.send({"type": "whoami"})
        assert (await ann.receive_type("you"))["data"] == {"user": "ann", "rooms": ["lobby"]}
    async with TestClient(my_rooms, user="ann") as ann:
        await ann.join("lobby")
        await ann.join("chat:1")
        assert (await ann.request({"type": "my_rooms"}))["data"] == ["chat:1", "lobby"]
    assert choose.choose_room("lobby") is choose.LobbyRoom
    assert choose.choose_room("chat:1") is choose.ChatRoom
    async with TestClient(choose.manager, user="ann") as ann:
        check_error(await ann.join("elsewhere"), "forbidden", ann._ref)
        assert (await ann.join("chat:1"))["type"] == "joined"


# 7. Server-side API: connection hooks, the portal from Flask's threads, a background loop.


@pytest.mark.timeout(30)
async def test_server_api_online_users() -> None:
    from wsroom.testing import TestClient

    with on_path(DOCS_SRC / "server_api"):
        module = load("server_api/online.py")
    async with TestClient(module.manager, path="/ws?user=ann") as ann:
        assert (await ann.receive_type("online"))["data"] == ["ann"]
        async with TestClient(module.manager, path="/ws?user=bob") as bob:
            assert (await bob.receive_type("online"))["data"] == ["ann", "bob"]
        await wait_for(lambda: dict(module.online) == {"ann": 1})
    await wait_for(lambda: not module.online)


@pytest.mark.timeout(30)
async def test_server_api_flask_views_reach_the_rooms() -> None:
    with on_path(DOCS_SRC / "server_api"):
        module = load("server_api/flask_news.py")
    flask = module.app.test_client()
    async with websockets_sync_server(module.manager) as url:
        reader = await Client.connect(url, "/ws?user=mallory")
        await reader.join("news")
        answer = await asyncio.to_thread(flask.post, "/announce", json={"text": "hi"})
        assert answer.get_json() == {"id": 1, "readers": ["mallory"]}
        message = check_frame(await reader.recv_type("message"), "message")
        assert message["data"] == {"text": "hi"}
        answer = await asyncio.to_thread(flask.post, "/ban/mallory")
        assert answer.get_json() == {"closed": 1}
        assert await reader.wait_closed() == 4003


@pytest.mark.timeout(30)
async def test_server_api_feed_and_background_loop(capsys: pytest.CaptureFixture[str]) -> None:
    with on_path(DOCS_SRC / "server_api"):
        feed = load("server_api/feed.py").feed
        background = load("server_api/background_loop.py")
    await asyncio.to_thread(background.main)
    assert capsys.readouterr().out == "None\n"
    manager = ConnectionManager()
    async with websockets_asyncio_server(manager) as url:
        client = await Client.connect(url)
        await client.join("prices")
        prices = iter([{"ACME": 100.0}, {"ACME": 101.0}])
        await asyncio.to_thread(feed, manager, prices)
        received = [await client.recv_type("message") for _ in range(2)]
        assert [frame["data"] for frame in received] == [{"ACME": 100.0}, {"ACME": 101.0}]


# 8. Limits: the settings build, and SIGTERM shuts the server down gracefully.


@pytest.mark.timeout(30)
async def test_limits_settings() -> None:
    from wsroom import Limits

    with on_path(DOCS_SRC / "limits"):
        chat = load("limits/chat_limits.py")
        load_test = load("limits/load_test_limits.py")
    assert chat.manager.limits.max_frame_size == 16 * 1024
    assert chat.manager.limits.rate == 20.0
    assert load_test.limits.max_queue == 4096
    assert load_test.manager.limits == Limits.without_rate_limits()


@pytest.mark.timeout(30)
async def test_limits_sigterm_closes_the_server_gracefully(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    handlers: dict[int, Callable[[], object]] = {}
    # The handler the program installs, called as the loop would on SIGTERM.
    monkeypatch.setattr(loop, "add_signal_handler", lambda sig, fn: handlers.__setitem__(sig, fn))
    with on_path(DOCS_SRC / "limits"):
        module = load("limits/sigterm.py")
    async with running(module.main, module, host="") as url:
        client = await Client.connect(url)
        await wait_for(lambda: signal.SIGTERM in handlers)
        handlers[signal.SIGTERM]()
        assert await client.wait_closed() == 1001


# 9. Testing: the page's test modules pass under pytest, as a reader runs them.


@pytest.mark.timeout(120)
def test_the_testing_pages_tests_pass() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "docs_src/testing"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stdout
    # Every test of the page ran and passed, none skipped.
    tests = sum(
        len(re.findall(r"^(?:async )?def test_", path.read_text(encoding="utf-8"), re.M))
        for path in (DOCS_SRC / "testing").glob("test_*.py")
    )
    assert re.search(rf"^{tests} passed in ", result.stdout, re.M), result.stdout


# 10. Adapters: each program serves a real client, and stops the way the page says.


def on_port_zero(original: Callable[..., Any], servers: list[Any], *, sync: bool = False) -> Any:
    """``original(handler, host, port, ...)`` on 127.0.0.1 and port 0 instead, as the
    same kind of context manager; what it yields is appended to ``servers``."""
    if sync:

        @contextlib.contextmanager
        def serve_sync(first: Any, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
            with original(first, "127.0.0.1", 0, *args, **kwargs) as server:
                servers.append(server)
                yield server

        return serve_sync

    @contextlib.asynccontextmanager
    async def serve(first: Any, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        async with original(first, "127.0.0.1", 0, *args, **kwargs) as server:
            servers.append(server)
            yield server

    return serve


def url_of(server: Any) -> str:
    sock = server.socket if hasattr(server, "socket") else server.sockets[0]
    return f"ws://127.0.0.1:{sock.getsockname()[1]}"


async def say_hello(url: str, room: str = "lobby", path: str = "/ws") -> None:
    """Join ``room`` and get one's own message back."""
    client = await Client.connect(url, path)
    try:
        check_frame(await client.join(room), "joined")
        await client.send({"type": "message", "room": room, "data": "hello"})
        assert (await client.recv_type("message"))["data"] == "hello"
    finally:
        await client.close()


def http_status(url: str) -> int:
    import urllib.error

    try:
        return _get(url.replace("ws:", "http:"))[0]
    except urllib.error.HTTPError as error:
        return error.code


async def until_serving(servers: list[Any], count: int = 1) -> None:
    await wait_for(lambda: len(servers) >= count)


@pytest.mark.timeout(30)
async def test_adapters_asyncio_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    with on_path(DOCS_SRC / "adapters"):
        module = load("adapters/websockets_serve.py")
    servers: list[Any] = []
    monkeypatch.setattr(module, "serve", on_port_zero(module.serve, servers))
    task = asyncio.create_task(module.main(ConnectionManager(), "127.0.0.1", 8765))
    try:
        await until_serving(servers)
        await say_hello(url_of(servers[0]))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, TIMEOUT)


@pytest.mark.timeout(30)
async def test_adapters_own_websockets_server(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    handlers: dict[int, Callable[[], object]] = {}
    monkeypatch.setattr(loop, "add_signal_handler", lambda sig, fn: handlers.__setitem__(sig, fn))
    with on_path(DOCS_SRC / "adapters"):
        module = load("adapters/own_websockets_server.py")
    servers: list[Any] = []
    monkeypatch.setattr(module, "serve", on_port_zero(module.serve, servers))
    task = asyncio.create_task(module.main())
    await until_serving(servers)
    url = url_of(servers[0])
    assert await asyncio.to_thread(http_status, url + "/healthz") == 200
    assert await asyncio.to_thread(http_status, url + "/elsewhere") == 404
    await say_hello(url)
    client = await Client.connect(url)
    handlers[signal.SIGTERM]()
    assert await client.wait_closed() == 1001
    await asyncio.wait_for(task, TIMEOUT)


async def run_in_thread(main: Callable[[], object], servers: list[Any]) -> threading.Thread:
    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    await until_serving(servers)
    return thread


@pytest.mark.timeout(30)
async def test_adapters_threading_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    with on_path(DOCS_SRC / "adapters"):
        module = load("adapters/sync_serve.py")
    servers: list[Any] = []
    from wsroom.adapters import websockets_sync

    serve = on_port_zero(websockets_sync.serve, servers, sync=True)
    monkeypatch.setattr(module, "websockets_sync", SimpleNamespace(serve=serve))
    thread = await run_in_thread(
        lambda: module.main(ConnectionManager(), "127.0.0.1", 8765), servers
    )
    await say_hello(url_of(servers[0]))
    await asyncio.to_thread(servers[0].shutdown)
    await asyncio.to_thread(thread.join, TIMEOUT)
    assert not thread.is_alive()


@pytest.mark.timeout(30)
async def test_adapters_threading_sigterm(monkeypatch: pytest.MonkeyPatch) -> None:
    from wsroom.adapters import websockets_sync

    handlers: dict[int, Callable[[int, object], object]] = {}
    monkeypatch.setattr(signal, "signal", lambda sig, fn: handlers.__setitem__(sig, fn))
    with on_path(DOCS_SRC / "adapters"):
        module = load("adapters/sync_sigterm.py")
    servers: list[Any] = []
    serve = on_port_zero(websockets_sync.serve, servers, sync=True)
    monkeypatch.setattr(module, "websockets_sync", SimpleNamespace(serve=serve))
    thread = await run_in_thread(module.main, servers)
    client = await Client.connect(url_of(servers[0]))
    await wait_for(lambda: signal.SIGTERM in handlers)
    handlers[signal.SIGTERM](signal.SIGTERM, None)
    assert await client.wait_closed() == 1001
    await asyncio.to_thread(thread.join, TIMEOUT)
    assert not thread.is_alive()


@pytest.mark.timeout(30)
async def test_adapters_blocking_work_in_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    from wsroom.testing import TestClient

    with on_path(DOCS_SRC / "adapters"):
        module = load("adapters/archived_room.py")
    saved: list[tuple[str, str | None, object]] = []
    monkeypatch.setattr(module, "save_to_database", lambda *args: saved.append(args))
    async with TestClient(ConnectionManager(module.ArchivedRoom), user="ann") as ann:
        await ann.join("lobby")
        await ann.message("lobby", "hi")
    assert saved == [("lobby", "ann", "hi")]


@pytest.mark.timeout(30)
async def test_adapters_own_threaded_server(monkeypatch: pytest.MonkeyPatch) -> None:
    with on_path(DOCS_SRC / "adapters"):
        module = load("adapters/own_sync_server.py")
    servers: list[Any] = []
    monkeypatch.setattr(module, "serve", on_port_zero(module.serve, servers, sync=True))
    thread = await run_in_thread(module.main, servers)
    url = url_of(servers[0])
    assert await asyncio.to_thread(http_status, url + "/healthz") == 200
    assert await asyncio.to_thread(http_status, url + "/elsewhere") == 404
    await say_hello(url)
    client = await Client.connect(url)
    # What Ctrl+C does: serve_forever() returns, then the rooms shut down.
    await asyncio.to_thread(servers[0].shutdown)
    assert await client.wait_closed() == 1001
    await asyncio.to_thread(thread.join, TIMEOUT)
    assert not thread.is_alive()


@pytest.mark.timeout(30)
async def test_adapters_both_servers_share_the_rooms(monkeypatch: pytest.MonkeyPatch) -> None:
    with on_path(DOCS_SRC / "adapters"):
        module = load("adapters/both_servers.py")
    servers: list[Any] = []
    monkeypatch.setattr(module, "serve", on_port_zero(module.serve, servers))
    monkeypatch.setattr(module, "sync_serve", on_port_zero(module.sync_serve, servers, sync=True))
    task = asyncio.create_task(module.main())
    try:
        await until_serving(servers, 2)
        ann = await Client.connect(url_of(servers[0]))
        bob = await Client.connect(url_of(servers[1]))
        await ann.join("lobby")
        await bob.join("lobby")
        await bob.send({"type": "message", "room": "lobby", "data": "across"})
        assert (await ann.recv_type("message"))["data"] == "across"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, TIMEOUT)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "name", ["starlette_routes", "starlette_endpoint", "uvicorn_run", "uvicorn_server_config"]
)
async def test_adapters_starlette_apps(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with on_path(DOCS_SRC / "adapters"):
        module = load(f"adapters/{name}.py")
    async with uvicorn_server(module.manager, module.app) as server:
        await say_hello(f"ws://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}")


@pytest.mark.timeout(30)
async def test_adapters_fastapi_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    import websockets

    with on_path(DOCS_SRC / "adapters"):
        module = load("adapters/fastapi_depends.py")
    async with uvicorn_server(module.manager, module.app) as server:
        url = f"ws://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        await say_hello(url, path="/ws?user=ann")
        with pytest.raises(websockets.InvalidStatus):
            await Client.connect(url, "/ws")


@contextlib.asynccontextmanager
async def aiohttp_running(app: Any) -> AsyncIterator[str]:
    """An aiohttp application on 127.0.0.1 and port 0, stopped as ``web.run_app`` stops it."""
    from aiohttp import web

    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"ws://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["aiohttp_setup", "aiohttp_routes"])
async def test_adapters_aiohttp_apps(name: str) -> None:
    with on_path(DOCS_SRC / "adapters"):
        module = load(f"adapters/{name}.py")
    async with aiohttp_running(module.app) as url:
        await say_hello(url)
        assert await asyncio.to_thread(http_status, url + "/ws") == 426
        client = await Client.connect(url)
        if name == "aiohttp_routes":
            assert await asyncio.to_thread(http_status, url + "/wsroom.js") == 200
    # The application's shutdown closed the client gracefully.
    assert await client.wait_closed() == 1001
    assert module.manager.closing


@pytest.mark.timeout(30)
async def test_adapters_aiohttp_own_handler() -> None:
    import websockets

    with on_path(DOCS_SRC / "adapters"):
        module = load("adapters/aiohttp_serve.py")
    async with aiohttp_running(module.app) as url:
        await say_hello(url, path="/ws?user=ann")
        with pytest.raises(websockets.InvalidStatus) as refused:
            await Client.connect(url, "/ws")
        assert refused.value.response.status_code == 401


@pytest.mark.timeout(30)
async def test_adapters_aiohttp_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiohttp import web

    loop = asyncio.get_running_loop()
    handlers: dict[int, Callable[[], object]] = {}
    monkeypatch.setattr(loop, "add_signal_handler", lambda sig, fn: handlers.__setitem__(sig, fn))
    sites: list[Any] = []

    class PortZero(web.TCPSite):
        def __init__(self, runner: Any, host: str, port: int) -> None:
            super().__init__(runner, "127.0.0.1", 0)
            sites.append(self)

    monkeypatch.setattr(web, "TCPSite", PortZero)
    with on_path(DOCS_SRC / "adapters"):
        module = load("adapters/aiohttp_runner.py")
    task = asyncio.create_task(module.main())
    try:
        await wait_for(lambda: signal.SIGTERM in handlers and bool(sites))
        url = f"ws://127.0.0.1:{sites[0].port}"
        await wait_for(lambda: sites[0].port != 0)
        await say_hello(url)
        client = await Client.connect(url)
        handlers[signal.SIGTERM]()
        assert await client.wait_closed() == 1001
        await asyncio.wait_for(task, TIMEOUT)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("name", "prefix"), [("asgi_alone", ""), ("asgi_mount", "/rooms")])
async def test_adapters_asgi_apps(name: str, prefix: str) -> None:
    with on_path(DOCS_SRC / "adapters"):
        module = load(f"adapters/{name}.py")
    async with uvicorn_server(module.manager, module.app, lifespan="on") as server:
        assert module.manager.loop is not None  # started by the lifespan
        url = f"ws://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        await say_hello(url, path=f"{prefix}/ws")
        assert await asyncio.to_thread(http_status, f"{url}{prefix}/ws") == 426
        status, body = await asyncio.to_thread(
            _get, f"{url}{prefix}/wsroom.js".replace("ws:", "http:")
        )
        assert status == 200 and b"export function connect(" in body
        client = await Client.connect(url, f"{prefix}/ws")
        await server.lifespan.shutdown()
        assert await client.wait_closed() == 1001


@pytest.mark.timeout(30)
async def test_adapters_asgi_serve_from_an_endpoint() -> None:
    import websockets

    with on_path(DOCS_SRC / "adapters"):
        module = load("adapters/asgi_serve.py")
    async with uvicorn_server(module.manager, module.app, lifespan="on") as server:
        url = f"ws://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        client = await Client.connect(url, additional_headers={"X-API-Key": "k-7f3a"})
        assert client.welcome["user"] == "build-bot"
        await client.close()
        with pytest.raises(websockets.InvalidStatus) as refused:
            await Client.connect(url, additional_headers={"X-API-Key": "guess"})
        assert refused.value.response.status_code == 403


@pytest.mark.timeout(30)
async def test_adapters_task_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    with on_path(DOCS_SRC / "adapters"):
        factory = load("adapters/task_adapter_server.py").task_adapter_server
        serving = load("adapters/task_adapter_serve.py")
    async with factory(ConnectionManager()) as url:
        await say_hello(url)
    servers: list[Any] = []
    monkeypatch.setattr(serving, "serve", on_port_zero(serving.serve, servers))
    stop = asyncio.Event()
    task = asyncio.create_task(serving.main(ConnectionManager(), stop))
    await until_serving(servers)
    await say_hello(url_of(servers[0]))
    stop.set()
    await asyncio.wait_for(task, TIMEOUT)


# The page's conftest.py passes the suite in tests/test_conformance_plugin.py; here, what
# the hook of its second version names, with and without a Redis.


@pytest.mark.parametrize("redis_url", [None, "redis://127.0.0.1:6379/0"])
def test_adapters_conformance_capabilities(
    redis_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsroom.conformance import ABORT, Server

    if redis_url is None:
        monkeypatch.delenv("REDIS_URL", raising=False)
    else:
        monkeypatch.setenv("REDIS_URL", redis_url)
    with on_path(DOCS_SRC / "adapters"):
        module = load("adapters/conformance_capabilities.py")
        factory = load("adapters/task_adapter_server.py").task_adapter_server
    assert module.pytest_plugins == ["wsroom.conformance.plugin"]
    servers = module.pytest_wsroom_servers(None)
    assert sorted(servers) == (["task"] if redis_url is None else ["task", "task+redis"])
    for name, server in servers.items():
        assert isinstance(server, Server)
        assert not server.can(ABORT)
        assert server.nodes == (2 if name == "task+redis" else 1)
    assert servers["task"].factory.__name__ == factory.__name__


# 11. Deployment: two nodes of the page's chat share a room through Redis.


@pytest.mark.timeout(60)
async def test_deployment_two_nodes_share_a_room(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.redis_support import delete_prefix, fresh_prefix, shared_redis_url
    from wsroom.backplane.redis import RedisBackplane

    url = shared_redis_url()
    if url is None:
        pytest.skip("no Redis server (scripts/test.sh starts one)")
    test_prefix = fresh_prefix()
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "add_signal_handler", lambda sig, fn: None)
    with on_path(DOCS_SRC / "deployment"):
        node = load("deployment/chat_node.py")
        clients = load("deployment/two_clients.py")
    servers: list[Any] = []
    monkeypatch.setattr(node, "REDIS_URL", url)
    # A prefix of the test's own, on a Redis other tests share.
    monkeypatch.setattr(
        node, "RedisBackplane", lambda u, prefix: RedisBackplane(u, prefix=test_prefix)
    )
    monkeypatch.setattr(node, "serve", on_port_zero(node.serve, servers))
    nodes = [asyncio.create_task(node.main(port)) for port in (8001, 8002)]
    try:
        await until_serving(servers, 2)
        ports = {
            ":8001/": f":{servers[0].sockets[0].getsockname()[1]}/",
            ":8002/": f":{servers[1].sockets[0].getsockname()[1]}/",
        }
        connect = clients.connect

        def to_the_nodes(address: str, **kwargs: Any) -> Any:
            for old, new in ports.items():
                address = address.replace(old, new)
            return connect(address, open_timeout=TIMEOUT, **kwargs)

        monkeypatch.setattr(clients, "connect", to_the_nodes)
        await asyncio.wait_for(clients.main(), TIMEOUT * 2)
    finally:
        for task in nodes:
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*nodes, return_exceptions=True), TIMEOUT)
        await delete_prefix(url, test_prefix)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("node ") and out[1].startswith("node ")
    assert out[2:4] == ["['alice']", "['alice', 'bob']"]
    assert "'event': 'join', 'user': 'bob'" in out[4]
    assert "'from': 'bob', 'data': 'hi'" in out[5]


@pytest.mark.timeout(30)
async def test_deployment_settings_and_publishers() -> None:
    with on_path(DOCS_SRC / "deployment"):
        burst = load("deployment/publish_burst.py")
        limits = load("deployment/shared_address_limits.py").limits
        proxy = load("deployment/proxy_manager.py").manager
    assert limits.address_rate == 1000.0 and limits.handshake_burst == 200
    from wsroom.testing import TestClient

    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    async with TestClient(proxy, path="/ws?user=ann", headers=forwarded) as ann:
        assert ann.connection is not None
        assert ann.connection.handshake.client_address == "203.0.113.9"
    manager = ConnectionManager()
    async with websockets_asyncio_server(manager) as url:
        client = await Client.connect(url)
        await client.join("prices")
        assert await burst.publish(manager, [{"p": 1}, {"p": 2}]) == [1, 2]
        await asyncio.to_thread(burst.publish_from_thread, manager, [{"p": 3}])
        ids = [(await client.recv_type("message"))["id"] for _ in range(3)]
        assert ids == [1, 2, 3]


# 12. Authentication and the home page.


@pytest.mark.timeout(30)
async def test_authentication_sessions() -> None:
    import websockets
    from websockets.typing import Origin

    with on_path(DOCS_SRC / "authentication"):
        module = load("authentication/sessions.py")
    app = Origin("https://app.example.com")

    def cookie(token: str) -> dict[str, str]:
        return {"Cookie": f"session={token}"}

    async with running(module.main, module) as url:

        async def refused(**kwargs: Any) -> int:
            with pytest.raises(websockets.InvalidStatus) as refusal:
                await Client.connect(url, **kwargs)
            return refusal.value.response.status_code

        assert await refused(origin=app) == 401
        assert await refused(additional_headers=cookie("tok-eve"), origin=app) == 403
        evil = Origin("https://evil.example")
        assert await refused(additional_headers=cookie("tok-bob"), origin=evil) == 403
        alice = await Client.connect(url, additional_headers=cookie("tok-alice"), origin=app)
        bearer = {"Authorization": "Bearer tok-bob"}
        bob = await Client.connect(url, additional_headers=bearer, origin=app)
        assert (alice.welcome["user"], bob.welcome["user"]) == ("alice", "bob")
        check_frame(await alice.join("admin:ops"), "joined")
        denied = await bob.request({"type": "join", "room": "admin:ops"})
        check_error(denied, "forbidden", bob._ref)
        note = await alice.request({"type": "direct", "to": "alice", "data": "note"})
        check_error(note, "forbidden", alice._ref)
        assert (await alice.request({"type": "direct", "to": "bob", "data": "hi"}))["type"] == "ack"


@pytest.mark.timeout(30)
async def test_authentication_strict_origins() -> None:
    from wsroom import HandshakeRejected
    from wsroom.testing import TestClient

    with on_path(DOCS_SRC / "authentication"):
        manager = load("authentication/strict_origins.py").manager
    with pytest.raises(HandshakeRejected) as refused:
        async with TestClient(manager):
            pass
    assert refused.value.status == 403
    async with TestClient(manager, headers={"Origin": "https://app.example.com"}) as client:
        assert client.welcome is not None


@pytest.mark.timeout(30)
async def test_index_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with on_path(DOCS_SRC / "index"):
        module = load("index/many_processes.py")
    async with running(module.main, module, host="") as url:
        await say_hello(url)


# 13. Browser client: each adapter serves wsroom.js beside the WebSocket.


def script_status(url: str) -> int:
    status, body = _get(url.replace("ws:", "http:") + "/wsroom.js")
    assert b"export function connect(" in body
    return status


@pytest.mark.timeout(30)
async def test_browser_client_script_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    with on_path(DOCS_SRC / "browser_client"):
        module = load("browser_client/script_asyncio.py")
    servers: list[Any] = []
    monkeypatch.setattr(module, "serve", on_port_zero(module.serve, servers))
    task = asyncio.create_task(module.main(ConnectionManager()))
    try:
        await until_serving(servers)
        assert await asyncio.to_thread(script_status, url_of(servers[0])) == 200
        await say_hello(url_of(servers[0]))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, TIMEOUT)


@pytest.mark.timeout(30)
async def test_browser_client_script_threaded(monkeypatch: pytest.MonkeyPatch) -> None:
    with on_path(DOCS_SRC / "browser_client"):
        module = load("browser_client/script_threaded.py")
    servers: list[Any] = []
    monkeypatch.setattr(module, "serve", on_port_zero(module.serve, servers, sync=True))
    thread = await run_in_thread(lambda: module.main(ConnectionManager()), servers)
    assert await asyncio.to_thread(script_status, url_of(servers[0])) == 200
    await say_hello(url_of(servers[0]))
    await asyncio.to_thread(servers[0].shutdown)
    await asyncio.to_thread(thread.join, TIMEOUT)
    assert not thread.is_alive()


@pytest.mark.timeout(30)
async def test_browser_client_script_starlette() -> None:
    with on_path(DOCS_SRC / "browser_client"):
        module = load("browser_client/script_starlette.py")
    async with uvicorn_server(module.manager, module.app) as server:
        url = f"ws://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        assert await asyncio.to_thread(script_status, url) == 200
        await say_hello(url)


@pytest.mark.timeout(30)
async def test_browser_client_script_aiohttp() -> None:
    with on_path(DOCS_SRC / "browser_client"):
        module = load("browser_client/script_aiohttp.py")
    async with aiohttp_running(module.app) as url:
        assert await asyncio.to_thread(script_status, url) == 200
        await say_hello(url)


# 13b. Coming from a hand-written ConnectionManager: the seed runs as the tutorials show it,
# and the same chat on wsroom serves a real client.


@pytest.mark.timeout(30)
async def test_coming_from_connectionmanager_seed() -> None:
    import websockets

    with on_path(DOCS_SRC / "coming_from_connectionmanager"):
        module = load("coming_from_connectionmanager/seed_chat.py")
    # The seed has no wsroom manager; an idle one only satisfies the server helper.
    async with uvicorn_server(ConnectionManager(), module.app) as server:
        url = f"ws://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        async with (
            websockets.connect(f"{url}/ws/1", open_timeout=TIMEOUT) as one,
            websockets.connect(f"{url}/ws/2", open_timeout=TIMEOUT) as two,
        ):
            await wait_for(lambda: len(module.manager.active_connections) == 2)
            await one.send("hi")
            assert await asyncio.wait_for(one.recv(), TIMEOUT) == "You wrote: hi"
            assert await asyncio.wait_for(one.recv(), TIMEOUT) == "Client #1 says: hi"
            assert await asyncio.wait_for(two.recv(), TIMEOUT) == "Client #1 says: hi"
            await two.close()
            assert await asyncio.wait_for(one.recv(), TIMEOUT) == "Client #2 left the chat"
        await wait_for(lambda: not module.manager.active_connections)


@pytest.mark.timeout(30)
async def test_coming_from_connectionmanager_on_wsroom() -> None:
    import websockets

    with on_path(DOCS_SRC / "coming_from_connectionmanager"):
        module = load("coming_from_connectionmanager/wsroom_chat.py")
    async with uvicorn_server(module.manager, module.app) as server:
        url = f"ws://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        await chat(url)
        # Refused before the upgrade, with the status the page names.
        with pytest.raises(websockets.InvalidStatus) as refused:
            await Client.connect(url, "/ws")
        assert refused.value.response.status_code == 401
        assert await asyncio.to_thread(http_status, f"{url}/ws") == 401
        assert await asyncio.to_thread(http_status, f"{url}/ws?user=ann") == 426
        assert await asyncio.to_thread(script_status, url) == 200
        # What the seed's "left the chat" broadcast becomes: presence, and history on join.
        ann = await Client.connect(url, "/ws?user=ann")
        bob = await Client.connect(url, "/ws?user=bob")
        try:
            check_frame(await ann.request({"type": "join", "room": "lobby"}), "joined")
            joined = check_frame(await bob.request({"type": "join", "room": "lobby"}), "joined")
            assert [entry["data"] for entry in joined["history"]] == ["hello"]
            presence = check_frame(await ann.recv_type("presence"), "presence")
            assert (presence["event"], presence["user"]) == ("join", "bob")
            await bob.close()
            presence = check_frame(await ann.recv_type("presence"), "presence")
            assert (presence["event"], presence["user"]) == ("leave", "bob")
        finally:
            await ann.close()


# 14. JSON: every frame a page shows is one the protocol allows, in its direction.


def client_fields() -> dict[str, set[str]]:
    """The fields of each built-in client type, from protocol.md's "Client to server"
    table (as tests/test_frames.py reads it), with ``type`` and ``ref``."""
    section = (DOCS / "protocol.md").read_text(encoding="utf-8").split("\n## Client to server\n")[1]
    fields = {}
    for line in section.split("\n## ")[0].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("| `") or len(cells) < 2:
            continue
        names = re.findall(r"`([^`]+)`", re.sub(r"\([^)]*\)", "", cells[1]))
        fields[re.findall(r"`([^`]+)`", cells[0])[0]] = {"type", "ref", *names}
    return fields


JSON_BLOCKS = [block for block in ALL_BLOCKS if block.language == "json"]


def test_there_are_json_frames_to_check() -> None:
    assert len([block for block in JSON_BLOCKS if block.page == "protocol.md"]) >= 20


@pytest.mark.parametrize("block", JSON_BLOCKS, ids=repr)
def test_json_blocks_are_protocol_frames(block: Block) -> None:
    from wsroom import frames
    from wsroom.protocol import MessageProtocol

    frame = json.loads("\n".join(block.body))
    assert isinstance(frame, dict) and isinstance(frame.get("type"), str), block
    kind = frame["type"]
    from_server = block.section == "Server to client" or (
        kind in frames.SERVER_TYPES and kind not in frames.CLIENT_TYPES
    )
    if from_server and kind in frames.SERVER_TYPES:
        check_frame(frame)
    elif from_server:
        # An application event, as Room.broadcast_event and manager.send_all make them.
        assert frame == frames.event(kind, frame.get("data"), frame.get("room")), block
    else:
        # What the server's own parser accepts, with only the fields the table lists.
        MessageProtocol().decode(json.dumps(frame))
        if kind in frames.CLIENT_TYPES:
            allowed = client_fields()[kind]
            assert set(frame) <= allowed, (block, set(frame) - allowed)


# 15. api.md: its signature blocks stay inline, but each one names a real object with the
# parameters the page gives it (names and kinds, in order).

SIGNATURE_START = re.compile(
    r"^(?P<indent>\s*)(?:async\s+)?def\s+(?P<name>\w+)\s*\(|^(?P<call>[A-Z]\w*)\("
)
CLASS_LINE = re.compile(r"^class\s+(?P<name>\w+)")
ATTRIBUTE_LINE = re.compile(r"^(?P<indent>\s*)(?P<name>[A-Za-z_]\w*)\s*(?::[^=]+)?(?:=.*)?$")
IMPORT_LINE = re.compile(r"^from\s+(?P<module>[\w.]+)\s+import\s+(?P<names>.+)$")


def api_blocks() -> list[tuple[str, Block]]:
    """api.md's Python blocks, each with the module of the ``## `wsroom...` `` section."""
    return [
        (block.section.strip("`"), block)
        for block in blocks(DOCS / "api.md")
        if block.language == "python" and block.include is None
    ]


def parameters_of_text(text: str) -> list[tuple[str, str]]:
    """(name, kind) of each parameter of ``name(...)`` as written in the docs."""
    inner = text[text.index("(") + 1 : _closing(text, text.index("("))]
    import ast

    args = ast.parse(f"def f({inner}): ...").body[0].args  # type: ignore[attr-defined]
    found = [(arg.arg, "POSITIONAL_ONLY") for arg in args.posonlyargs]
    found += [(arg.arg, "POSITIONAL_OR_KEYWORD") for arg in args.args]
    if args.vararg:
        found.append((args.vararg.arg, "VAR_POSITIONAL"))
    found += [(arg.arg, "KEYWORD_ONLY") for arg in args.kwonlyargs]
    if args.kwarg:
        found.append((args.kwarg.arg, "VAR_KEYWORD"))
    return found


def _closing(text: str, opening: int) -> int:
    depth = 0
    for index in range(opening, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            return index
    raise AssertionError(f"unbalanced: {text}")


def parameters_of(obj: Any) -> list[tuple[str, str]]:
    import inspect

    return [(p.name, p.kind.name) for p in inspect.signature(obj).parameters.values()]


def signatures(block: Block) -> Iterator[tuple[str | None, str, str]]:
    """(class or None, name, signature text) of each def or constructor call in a block."""
    lines = block.body
    owner: str | None = None
    index = 0
    while index < len(lines):
        line = lines[index].split("  #")[0].rstrip()
        if CLASS_LINE.match(line):
            owner = CLASS_LINE.match(line)["name"]  # type: ignore[index]
        elif line and not line[0].isspace() and not line.startswith(("@", "def ", "async ")):
            owner = None if not line.startswith("class ") else owner
        start = SIGNATURE_START.match(line)
        if start:
            text = line
            while text.count("(") > text.count(")"):
                index += 1
                text += "\n" + lines[index].split("  #")[0].rstrip()
            nested = bool(start["indent"])
            yield (owner if nested else None), start["name"] or start["call"], text
        index += 1


def names_imported(block: Block) -> dict[str, str]:
    found = {}
    for line in block.body:
        match = IMPORT_LINE.match(line)
        if match:
            for name in match["names"].split(","):
                found[name.strip()] = match["module"]
    return found


API_BLOCKS = api_blocks()


def test_api_blocks_are_under_module_sections() -> None:
    assert len(API_BLOCKS) >= 40
    for module, block in API_BLOCKS:
        assert module.startswith("wsroom"), block


@pytest.mark.parametrize(
    ("module_name", "block"), API_BLOCKS, ids=lambda v: repr(v) if isinstance(v, Block) else v
)
def test_api_signatures_match_the_code(module_name: str, block: Block) -> None:
    import dataclasses
    import importlib
    import inspect

    module = importlib.import_module(module_name)
    imported = names_imported(block)

    def resolve(name: str) -> Any:
        source = importlib.import_module(imported[name]) if name in imported else module
        assert hasattr(source, name), f"{block}: {source.__name__} has no {name}"
        return getattr(source, name)

    checked = 0
    classes = {}
    for line in block.body:
        match = CLASS_LINE.match(line)
        if match:
            classes[match["name"]] = resolve(match["name"])
    for owner, name, text in signatures(block):
        documented = parameters_of_text(text)
        if owner is None:
            target = resolve(name)
        else:
            attribute = inspect.getattr_static(classes[owner], name)
            assert attribute is not None, f"{block}: {owner} has no {name}"
            if isinstance(attribute, property):
                target = attribute.fget
            elif isinstance(attribute, classmethod | staticmethod):
                target = getattr(classes[owner], name)
                if isinstance(attribute, classmethod):
                    documented = documented[1:]  # cls
            else:
                target = attribute
        actual = parameters_of(target)
        assert documented == actual, f"{block}: {owner or ''}.{name}{text[len(name) :]}\n{actual}"
        checked += 1
    # Attributes and module-level names the block lists exist too.
    owner = None
    depth = 0  # inside a signature's parentheses, checked above
    for line in block.body:
        line = line.split("  #")[0].rstrip()
        inside, depth = depth > 0, depth + line.count("(") - line.count(")")
        if inside or not line or line.startswith(("@", "from ", "import ")):
            continue
        if SIGNATURE_START.match(line):
            continue
        if CLASS_LINE.match(line):
            owner = classes[CLASS_LINE.match(line)["name"]]  # type: ignore[index]
            checked += 1
            continue
        attribute = ATTRIBUTE_LINE.match(line)
        if attribute is None or attribute["name"] in {"def", "async", "class", "return"}:
            continue
        if attribute["indent"] and owner is not None:
            name = attribute["name"]
            fields = (
                {f.name for f in dataclasses.fields(owner)}
                if dataclasses.is_dataclass(owner)
                else set()
            )
            annotated = {
                key for cls in owner.__mro__ for key in getattr(cls, "__annotations__", {})
            }
            source = inspect.getsource(owner)
            assert (
                name in fields
                or name in annotated
                or hasattr(owner, name)
                or f"self.{name}" in source
            ), f"{block}: {owner.__name__} has no {name}"
            checked += 1
        elif not attribute["indent"]:
            owner = None
            resolve(attribute["name"])
            checked += 1
    assert checked, f"{block}: nothing to check"
    # A dataclass's block lists its public fields, all of them, in order.
    if "@dataclass" in "\n".join(block.body):
        for cls in classes.values():
            documented_fields = [
                match["name"]
                for line in block.body
                if (match := ATTRIBUTE_LINE.match(line.split("  #")[0].rstrip()))
                and match["indent"]
                and not SIGNATURE_START.match(line)
                and not line.strip().startswith("@")
            ]
            public = [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
            assert documented_fields == public, f"{block}: {cls.__name__} fields {public}"


# 16. Coming from python-socketio and Django Channels: the peer's program imports, and
# wsroom's serves real clients.


@pytest.mark.timeout(30)
async def test_coming_from_socketio_the_peer_program_imports() -> None:
    pytest.importorskip("socketio")
    with on_path(DOCS_SRC / "coming_from_socketio"):
        module = load("coming_from_socketio/socketio_chat.py")
    assert {"connect", "join", "leave", "message", "disconnect"} <= set(module.sio.handlers["/"])
    # A bad token is refused before any session is saved.
    assert await module.connect("sid", {}, {"token": "wrong"}) is False
    assert await module.connect("sid", {}, None) is False


@pytest.mark.timeout(30)
async def test_coming_from_socketio_the_wsroom_program() -> None:
    import websockets

    with on_path(DOCS_SRC / "coming_from_socketio"):
        module = load("coming_from_socketio/chat_on_wsroom.py")
    async with running(module.main, module) as url:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await Client.connect(url, "/ws?token=wrong")
        assert refused.value.response.status_code == 401
        ann = await Client.connect(url, "/ws?token=tok-ann")
        bob = await Client.connect(url, "/ws?token=tok-bob")
        check_frame(await ann.join("lobby"), "joined")
        joined = check_frame(await bob.join("lobby"), "joined")
        assert joined["members"] == ["ann", "bob"]
        await ann.send({"type": "message", "room": "lobby", "data": {"text": "hi"}})
        message = check_frame(await bob.recv_type("message"), "message")
        assert (message["from"], message["data"]) == ("ann", {"text": "hi"})
        refused_text = await ann.request({"type": "message", "room": "lobby", "data": "hi"})
        check_error(refused_text, "invalid_message", ann._ref)
        answer = await ann.request({"type": "my_rooms", "room": "lobby"})
        assert (answer["type"], answer["data"]) == ("ack", ["lobby"])
        elsewhere = {"type": "message", "room": "elsewhere", "data": {"text": "hi"}}
        check_error(await bob.request(elsewhere), "not_joined", bob._ref)
        await bob.send({"type": "direct", "to": "ann", "data": "psst"})
        direct = check_frame(await ann.recv_type("direct"), "direct")
        assert (direct["from"], direct["data"]) == ("bob", "psst")
        await ann.close()
        await bob.close()


@pytest.mark.timeout(30)
async def test_coming_from_channels_wsroom_next_to_django() -> None:
    import websockets

    async def django_stand_in(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"django: " + scope["path"].encode()})

    with on_path(DOCS_SRC / "coming_from_channels"):
        module = load("coming_from_channels/django_next_door.py")
    app = module.application(django_stand_in)
    async with uvicorn_server(module.manager, app) as server:
        url = f"ws://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        status, body = await asyncio.to_thread(_get, url.replace("ws:", "http:") + "/admin/")
        assert (status, body) == (200, b"django: /admin/")
        with pytest.raises(websockets.InvalidStatus) as refused:
            await Client.connect(url, "/ws")
        assert refused.value.response.status_code == 401
        ann = await Client.connect(url, "/ws", additional_headers={"Cookie": "sessionid=k4ann"})
        bob = await Client.connect(url, "/ws", additional_headers={"Cookie": "sessionid=k4bob"})
        assert (ann.welcome["user"], bob.welcome["user"]) == ("ann", "bob")
        check_frame(await ann.join("staff:ops"), "joined")
        denied = await bob.request({"type": "join", "room": "staff:ops"})
        check_error(denied, "forbidden", bob._ref)
        await bob.join("lobby")
        await ann.join("lobby")
        await ann.send({"type": "message", "room": "lobby", "data": "hello"})
        message = check_frame(await bob.recv_type("message"), "message")
        assert (message["from"], message["data"]) == ("ann", "hello")
        await ann.close()
        await bob.close()


# Operating wsroom: the admin view on each adapter, behind HTTP Basic authentication.

ADMIN_PASSWORD = "correct horse"


async def check_admin_view(port: int, path: str = "/admin") -> None:
    """The page's view at ``path``: a 401 asking for Basic credentials, then the page and
    the snapshot with them."""
    import base64

    from tests.helpers import http_request

    status, headers, _ = await http_request(port, f"{path}/snapshot.json")
    assert (status, headers["www-authenticate"]) == (401, 'Basic realm="wsroom admin"')
    wrong = base64.b64encode(b"admin:guess").decode()
    status, _, _ = await http_request(port, f"{path}/", headers=f"Authorization: Basic {wrong}\r\n")
    assert status == 401
    right = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    credentials = f"Authorization: Basic {right}\r\n"
    status, _, page = await http_request(port, f"{path}/", headers=credentials)
    assert status == 200 and b'src="admin.js"' in page
    status, _, body = await http_request(port, f"{path}/snapshot.json", headers=credentials)
    assert status == 200 and json.loads(body)["version"] == 1


@pytest.fixture
def admin_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSROOM_ADMIN_PASSWORD", ADMIN_PASSWORD)


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("admin_password")
async def test_operating_admin_view_on_websockets() -> None:
    with on_path(DOCS_SRC / "operating"):
        module = load("operating/admin_websockets.py")
    async with running(module.main, module) as url:
        await say_hello(url)
        await check_admin_view(int(url.rsplit(":", 1)[1]))


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("admin_password")
async def test_operating_admin_view_on_the_threading_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from wsroom.adapters import websockets_sync

    with on_path(DOCS_SRC / "operating"):
        module = load("operating/admin_sync.py")
    servers: list[Any] = []
    serve = on_port_zero(websockets_sync.serve, servers, sync=True)
    adapter = SimpleNamespace(serve=serve, admin_view=websockets_sync.admin_view)
    monkeypatch.setattr(module, "websockets_sync", adapter)
    thread = await run_in_thread(module.main, servers)
    try:
        await say_hello(url_of(servers[0]))
        await check_admin_view(servers[0].socket.getsockname()[1])
    finally:
        await asyncio.to_thread(servers[0].shutdown)
        await asyncio.to_thread(thread.join, TIMEOUT)
    assert not thread.is_alive()


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("admin_password")
async def test_operating_admin_view_on_starlette() -> None:
    with on_path(DOCS_SRC / "operating"):
        module = load("operating/admin_starlette.py")
    async with uvicorn_server(module.manager, module.app) as server:
        port = server.servers[0].sockets[0].getsockname()[1]
        await say_hello(f"ws://127.0.0.1:{port}")
        await check_admin_view(port)


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("admin_password")
async def test_operating_admin_view_on_the_asgi_adapter() -> None:
    with on_path(DOCS_SRC / "operating"):
        module = load("operating/admin_asgi.py")
    async with uvicorn_server(module.manager, module.app) as server:
        port = server.servers[0].sockets[0].getsockname()[1]
        await say_hello(f"ws://127.0.0.1:{port}")
        await check_admin_view(port)


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("admin_password")
async def test_operating_admin_view_beside_the_client_script() -> None:
    from wsroom.adapters.websockets import serve

    with on_path(DOCS_SRC / "operating"):
        module = load("operating/admin_combined.py")
    options = {"process_request": module.process_request}
    async with serve(module.manager, "127.0.0.1", 0, **options) as server:
        port = server.sockets[0].getsockname()[1]
        await say_hello(f"ws://127.0.0.1:{port}")
        await check_admin_view(port, "/ops/admin")
        status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/wsroom.js")
        assert status == 200 and b"export function connect(" in body


@pytest.mark.timeout(30)
async def test_operating_admin_check_refuses_without_a_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import base64

    from wsroom import Handshake, HandshakeRejected

    monkeypatch.delenv("WSROOM_ADMIN_PASSWORD", raising=False)
    with on_path(DOCS_SRC / "operating"):
        module = load("operating/admin_check.py")
    # No password set: even the empty one is refused.
    empty = "Basic " + base64.b64encode(b"admin:").decode()
    request = Handshake.from_target("/admin/", [("Authorization", empty)])
    with pytest.raises(HandshakeRejected) as refused:
        module.is_operator(request)
    assert refused.value.status == 401
