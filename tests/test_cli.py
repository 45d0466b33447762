"""The ``wsroom`` command run as a user runs it: a process of its own, its exit status, what it
prints. A mistake ends in one line, never a traceback; the demo logs no line per request."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

import wsroom
from tests.helpers import TIMEOUT, Client, demo_command, free_port, http_request

TRANSPORTS = ["asyncio", "sync", "starlette", "asgi", "aiohttp"]


def run_wsroom(*arguments: str, blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``python -m wsroom ARGUMENTS``; the modules in ``blocked`` fail to import in it, as
    when the extra that brings them is not installed."""
    if blocked:
        code = (
            "import runpy, sys\n"
            f"for name in {blocked!r}:\n"
            "    sys.modules[name] = None  # 'import name' raises ImportError\n"
            f"sys.argv = ['wsroom', *{arguments!r}]\n"
            "runpy.run_module('wsroom', run_name='__main__', alter_sys=True)\n"
        )
        command = [sys.executable, "-c", code]
    else:
        command = [sys.executable, "-m", "wsroom", *arguments]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    """Assert the command failed with ``status`` and no traceback; return its last line."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    if status == 2:  # argparse: a usage synopsis, then the one line that says what is wrong
        assert lines[0].startswith("usage: wsroom"), result.stderr
        assert all(line.startswith(("usage:", " ")) for line in lines[:-1]), result.stderr
    else:  # nothing else: the demo logs no INFO lines before it fails
        assert len(lines) == 1, result.stderr
    return lines[-1]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another socket listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_version() -> None:
    result = run_wsroom("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wsroom {wsroom.__version__}"


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_a_port_out_of_range_is_a_usage_error(port: str) -> None:
    line = one_line_error(run_wsroom("demo", "--port", port), 2)
    assert line.startswith("wsroom demo: error: argument --port: "), line
    assert "0 to 65535" in line or "not a port number" in line, line


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_port_in_use_is_one_line(transport: str, busy_port: int) -> None:
    line = one_line_error(run_wsroom("demo", "--port", str(busy_port), "--transport", transport), 1)
    assert line == f"wsroom demo: cannot listen on 127.0.0.1:{busy_port}: Address already in use"


@pytest.mark.parametrize(
    "url", ["notaurl", "http://127.0.0.1:6379/0", "redis://[::1", "redis://h:x/0"]
)
def test_an_unparseable_redis_url_is_a_usage_error(url: str) -> None:
    line = one_line_error(run_wsroom("demo", "--redis", url), 2)
    assert line.startswith("wsroom demo: error: argument --redis: not a Redis URL ("), line
    assert "redis://127.0.0.1:6379/0" in line  # an example of what to write


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_unreachable_redis_is_one_line(transport: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    result = run_wsroom("demo", "--port", "0", "--redis", url, "--transport", transport)
    line = one_line_error(result, 1)
    assert line.startswith(f"wsroom demo: cannot reach Redis at {url}: "), line


def test_redis_without_the_extra_names_the_pip_command() -> None:
    result = run_wsroom("demo", "--redis", "redis://127.0.0.1:6379/0", blocked=("redis",))
    line = one_line_error(result, 1)
    assert "needs redis-py" in line and line.endswith("pip install 'wsroom[redis]'"), line


@pytest.mark.parametrize("missing", ["starlette", "uvicorn"])
def test_starlette_without_the_extra_names_the_pip_command(missing: str) -> None:
    result = run_wsroom("demo", "--transport", "starlette", blocked=(missing,))
    line = one_line_error(result, 1)
    assert "needs Starlette and uvicorn" in line, line
    assert line.endswith("pip install 'wsroom[starlette]'"), line


def test_aiohttp_without_the_extra_names_the_pip_command() -> None:
    result = run_wsroom("demo", "--transport", "aiohttp", blocked=("aiohttp",))
    line = one_line_error(result, 1)
    assert "needs aiohttp" in line, line
    assert line.endswith("pip install 'wsroom[aiohttp]'"), line


def test_asgi_without_uvicorn_names_the_pip_command() -> None:
    result = run_wsroom("demo", "--transport", "asgi", blocked=("uvicorn",))
    line = one_line_error(result, 1)
    assert "--transport asgi needs uvicorn" in line, line
    assert line.endswith("pip install 'wsroom[uvicorn]'"), line


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_demo_prints_no_line_per_request_or_connection(transport: str) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsroom",
        "demo",
        "--port",
        str(port),
        "--transport",
        transport,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,  # the log and the announcement, in their order
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        first = await asyncio.wait_for(process.stdout.readline(), TIMEOUT * 2)
        assert first == f"wsroom demo: open http://127.0.0.1:{port}/\n".encode(), first
        # Two page loads, as a browser makes them, then two people chatting.
        for _ in range(2):
            for path in ("/", "/wsroom.js", "/favicon.svg"):
                assert (await http_request(port, path))[0] == 200
        alice = await Client.connect(f"ws://127.0.0.1:{port}", "/ws?name=alice")
        bob = await Client.connect(f"ws://127.0.0.1:{port}", "/ws?name=bob")
        await alice.join("lobby")
        await bob.join("lobby")
        await alice.send({"type": "message", "room": "lobby", "data": "hi"})
        assert (await bob.recv_type("message"))["data"] == "hi"
        await alice.close()
        await bob.close()
        process.send_signal(signal.SIGINT)
        rest = await asyncio.wait_for(process.stdout.read(), TIMEOUT * 2)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = (first + rest).decode()
    for websockets_info in ("server listening", "connection open", "connection closed"):
        assert websockets_info not in output, output
    assert " INFO " not in output, output
    assert "GET /" not in output and "HTTP/1.1" not in output, output  # no access log
    assert output.splitlines()[-1] == "wsroom demo: shutting down", output


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_demo_admin_serves_the_admin_view_behind_the_token_it_prints(
    transport: str,
) -> None:
    async with demo_command("--admin", "--transport", transport) as (port, process):
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), TIMEOUT * 2)).decode()
        prefix = f"wsroom demo: admin view at http://127.0.0.1:{port}/admin/?token="
        assert line.startswith(prefix), line
        token = line.strip().removeprefix(prefix)
        assert len(token) >= 24 and token.isascii(), token

        alice = await Client.connect(f"ws://127.0.0.1:{port}", "/ws?name=alice")
        await alice.join("lobby")
        status, headers, body = await http_request(port, f"/admin/?token={token}")
        assert status == 200 and b'src="admin.js"' in body, (status, body)
        assert "script-src 'self'" in headers["content-security-policy"]
        status, _, body = await http_request(port, f"/admin/snapshot.json?token={token}")
        assert status == 200, body
        snapshot = json.loads(body)
        assert snapshot["rooms"][0]["users"] == ["alice"]
        # Without the token, or with another one, nothing but a 403.
        for query in ("", "?token=", f"?token={token[:-1]}", "?token=%C3%A9t%C3%A9", "?token=%FF"):
            for path in ("/admin/", "/admin/snapshot.json"):
                status, _, body = await http_request(port, path + query)
                assert (status, body) == (403, b"Forbidden\n"), (path, query)
        # The chat is served as before.
        assert (await http_request(port, "/"))[0] == 200
        await alice.close()
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), TIMEOUT * 2) == 0


@pytest.mark.timeout(30)
async def test_demo_without_admin_has_no_admin_view() -> None:
    async with demo_command() as (port, process):
        assert (await http_request(port, "/admin/"))[0] == 404
        assert (await http_request(port, "/admin/snapshot.json?token="))[0] == 404
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), TIMEOUT * 2) == 0
