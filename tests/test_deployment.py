"""docs/operating.md's deployment recipes, run against the real servers: the ``uvicorn``
command, ``uvicorn --workers 2`` and gunicorn with two uvicorn workers each serve
docs_src/operating/node_app.py in processes of their own, stopped with SIGTERM to the PID
the test started. wsroom's drain (``wsroom.adapters.uvicorn.lifespan``) must close every
client with 1001 after delivering every message acknowledged before, although uvicorn alone
closes them with 1012; over Redis, the workers share rooms. The docker-compose file and the
systemd unit shown are parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import websockets

from tests.helpers import ROOT, TIMEOUT, Client, ExampleProcess, example_command, wait_for
from tests.redis_support import delete_prefix, fresh_prefix

PYTHON = sys.executable
OPERATING = ROOT / "docs_src" / "operating"
APP = ("--app-dir", str(OPERATING), "node_app:app")

# The commands docs/operating.md gives, on 127.0.0.1 and any free port, and how many worker
# processes each runs.
SERVERS: dict[str, tuple[tuple[str, ...], int]] = {
    "uvicorn": ((PYTHON, "-m", "uvicorn", *APP, "--port", "0"), 1),
    "uvicorn --workers 2": ((PYTHON, "-m", "uvicorn", *APP, "--port", "0", "--workers", "2"), 2),
    "gunicorn uvicorn_worker": (
        (
            *(PYTHON, "-m", "gunicorn", "--chdir", str(OPERATING), "node_app:app"),
            *("--bind", "127.0.0.1:0", "--workers", "2"),
            *("--worker-class", "uvicorn_worker.UvicornWorker"),
        ),
        2,
    ),
    # Deprecated by uvicorn in favour of the uvicorn-worker package, and still common.
    "gunicorn uvicorn.workers": (
        (
            *(PYTHON, "-m", "gunicorn", "--chdir", str(OPERATING), "node_app:app"),
            *("--bind", "127.0.0.1:0", "--workers", "2"),
            *("--worker-class", "uvicorn.workers.UvicornWorker"),
        ),
        2,
    ),
}

# A graceful stop takes well under a second here; the bound leaves room for a loaded machine
# and stays far below wsroom's 5 s drain timeout plus uvicorn's and gunicorn's own.
EXIT_BOUND = 4 * TIMEOUT


@contextlib.asynccontextmanager
async def server(name: str, env: dict[str, str] | None = None) -> AsyncIterator[ExampleProcess]:
    """``SERVERS[name]`` running until every worker completed its startup; whatever is left
    of its processes at the end is killed, by PID."""
    command, workers = SERVERS[name]
    async with running(command, workers, env) as process:
        yield process


@contextlib.asynccontextmanager
async def running(
    command: tuple[str, ...], workers: int = 1, env: dict[str, str] | None = None
) -> AsyncIterator[ExampleProcess]:
    """``command`` running until its ``workers`` completed their startup."""
    async with example_command(*command, ready="127.0.0.1:", env=env) as process:
        started = asyncio.create_task(
            process.wait_output("Application startup complete.", count=workers)
        )
        try:
            await started
            yield process
        finally:
            started.cancel()
            children = _children(process.process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.process.kill()
            for child in children:
                with contextlib.suppress(psutil.Error):
                    child.kill()


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


@dataclass
class Member:
    """A client in the room: what it was acknowledged and received, and how it ended."""

    client: Client
    pid: int
    sent: dict[int, str] = field(default_factory=dict)
    acked: set[str] = field(default_factory=set)
    received: set[str] = field(default_factory=set)
    close_code: int | None = None


async def connect_members(url: str, workers: int, per_worker: int = 2) -> list[Member]:
    """Connect until each worker process holds ``per_worker`` clients (the kernel picks the
    worker of each connection); the others are closed."""
    members: list[Member] = []
    spare: list[Client] = []
    for number in range(100):
        # From addresses of their own: the recipe keeps wsroom's handshake rate per address,
        # which a hundred connections in a burst from one address would spend.
        address = f"127.0.0.{2 + number % 50}"
        client = await Client.connect(url, f"/ws?user=user-{number}", local_addr=(address, 0))
        ack = await client.request({"type": "node"})
        pid = ack["data"]["pid"]
        if sum(member.pid == pid for member in members) < per_worker:
            members.append(Member(client, pid))
        else:
            spare.append(client)
        if len(members) == workers * per_worker:
            break
    for client in spare:
        await client.close()
    assert len({member.pid for member in members}) == workers, "a worker got no client"
    assert len(members) == workers * per_worker
    return members


async def talk(member: Member, acked_enough: asyncio.Event) -> None:
    """Send messages to the room until the server closes; note every ack and message."""
    ws = member.client.ws

    async def read() -> None:
        async for raw in ws:
            frame = json.loads(raw)
            if frame["type"] == "message":
                member.received.add(frame["data"])
            elif frame["type"] == "ack" and frame.get("ref") in member.sent:
                member.acked.add(member.sent[frame["ref"]])
                if len(member.acked) >= 5:
                    acked_enough.set()

    reader = asyncio.create_task(read())
    with contextlib.suppress(websockets.ConnectionClosed):
        for ref in range(1, 10_000):
            if reader.done():
                break
            member.sent[ref] = text = f"{member.client.welcome['user']}:{ref}"
            frame = {"type": "message", "room": "drain", "ref": ref, "data": text}
            await ws.send(json.dumps(frame))
            # Paced to stay under the per-address rate limit: every client is 127.0.0.1.
            await asyncio.sleep(0.03)
    with contextlib.suppress(websockets.ConnectionClosed):
        await reader
    rcvd = ws.protocol.close_rcvd
    member.close_code = rcvd.code if rcvd is not None else None


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("name", sorted(SERVERS))
async def test_sigterm_drains_every_client_with_1001_after_what_was_acknowledged(
    name: str,
) -> None:
    workers = SERVERS[name][1]
    async with server(name) as process:
        url = f"ws://127.0.0.1:{process.port}"
        members = await connect_members(url, workers)
        for member in members:
            await member.client.join("drain")
        flowing = [asyncio.Event() for _ in members]
        talking = [
            asyncio.create_task(talk(member, event))
            for member, event in zip(members, flowing, strict=True)
        ]
        # Messages in flight from every client when the signal comes.
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in flowing)), TIMEOUT)
        started = asyncio.get_running_loop().time()
        returncode = await asyncio.wait_for(process.stop(signal.SIGTERM), EXIT_BOUND)
        stopped = asyncio.get_running_loop().time() - started
        await asyncio.wait_for(asyncio.gather(*talking), TIMEOUT)

    assert [member.close_code for member in members] == [1001] * len(members), process.log
    for member in members:
        # Members of one worker share its room (no Redis here): each got every message
        # acknowledged to any of them, before its close frame.
        same_worker = [other for other in members if other.pid == member.pid]
        acknowledged = set().union(*(other.acked for other in same_worker))
        assert acknowledged <= member.received, sorted(acknowledged - member.received)[:5]
    # uvicorn re-raises the signal once stopped (-SIGTERM); a supervisor exits with 0.
    assert returncode in (0, -signal.SIGTERM), (returncode, process.log)
    await wait_for(lambda: not any(psutil.pid_exists(m.pid) for m in members), TIMEOUT)
    print(f"{name}: stopped {stopped:.2f} s after SIGTERM")


# The other forms of the drain, and its edges, under the uvicorn command: applications
# written next to node_app, in a module of the test's own.
VARIANTS = """\
import asyncio
import contextlib

from starlette.applications import Starlette

from node_app import authenticate, manager
from wsroom import ConnectionManager, Room
from wsroom.adapters import uvicorn as wsroom_uvicorn
from wsroom.adapters.starlette import routes


@contextlib.asynccontextmanager
async def own_lifespan(app):
    print("own startup; wsroom started:", manager.loop is not None, flush=True)
    yield
    print("own shutdown; wsroom closing:", manager.closing, flush=True)


# The middleware around an application with a lifespan of its own.
middleware = wsroom_uvicorn.GracefulShutdown(
    Starlette(routes=routes("/ws", manager), lifespan=own_lifespan), manager
)

# The middleware around an application that does not speak the lifespan protocol.
plain = Starlette(routes=routes("/ws", manager))


async def no_lifespan(scope, receive, send):
    if scope["type"] == "lifespan":
        raise RuntimeError("no lifespan here")
    await plain(scope, receive, send)


bare = wsroom_uvicorn.GracefulShutdown(no_lifespan, manager)

# Installed twice for one manager: once is what happens.
twice = wsroom_uvicorn.GracefulShutdown(
    Starlette(routes=routes("/ws", manager), lifespan=wsroom_uvicorn.lifespan(manager)), manager
)


# A room whose hook hangs as its clients leave: the drain never ends by itself.
class StuckRoom(Room):
    async def on_leave(self, conn):
        await asyncio.sleep(120)


stuck_manager = ConnectionManager(StuckRoom, authenticate=authenticate)
stuck = Starlette(
    routes=routes("/ws", stuck_manager), lifespan=wsroom_uvicorn.lifespan(stuck_manager)
)
"""


def variant(tmp_path: Path, name: str) -> tuple[str, ...]:
    (tmp_path / "variants.py").write_text(VARIANTS, encoding="utf-8")
    if name == "server":
        # wsroom's own uvicorn Server runs node_app, whose lifespan then leaves it the drain.
        program = (
            f"import sys; sys.path.insert(0, {str(OPERATING)!r}); import node_app; "
            "from wsroom.adapters import uvicorn; "
            "uvicorn.run(node_app.app, node_app.manager, host='127.0.0.1', port=0)"
        )
        return (PYTHON, "-c", program)
    return (
        *(PYTHON, "-m", "uvicorn", "--app-dir", str(OPERATING), f"variants:{name}"),
        *("--port", "0"),
    )


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("name", "signum"),
    [
        pytest.param(name, signum, id=f"{name}-{signum.name}")
        for name, signum in [
            ("middleware", signal.SIGTERM),
            ("bare", signal.SIGTERM),
            ("twice", signal.SIGTERM),
            ("server", signal.SIGTERM),
            ("middleware", signal.SIGINT),  # Ctrl+C
        ]
    ],
)
async def test_every_form_of_the_drain(tmp_path: Path, name: str, signum: int) -> None:
    env = {"PYTHONPATH": str(tmp_path)}
    async with running(variant(tmp_path, name), env=env) as process:
        members = await connect_members(f"ws://127.0.0.1:{process.port}", 1)
        for member in members:
            await member.client.join("drain")
        flowing = [asyncio.Event() for _ in members]
        talking = [asyncio.create_task(talk(m, e)) for m, e in zip(members, flowing, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in flowing)), TIMEOUT)
        returncode = await asyncio.wait_for(process.stop(signum), EXIT_BOUND)
        await asyncio.wait_for(asyncio.gather(*talking), TIMEOUT)
    # uvicorn re-raises SIGTERM once stopped; SIGINT's KeyboardInterrupt ends it with 0, as
    # wsroom's Server does after its own drain.
    stopped_by_uvicorn = signum == signal.SIGTERM and name != "server"
    assert returncode == (-signum if stopped_by_uvicorn else 0), process.log
    assert [member.close_code for member in members] == [1001, 1001], process.log
    acknowledged = members[0].acked | members[1].acked
    assert acknowledged <= members[0].received and acknowledged <= members[1].received
    if name == "middleware":
        # The manager starts before the application's startup; its clients are closed
        # before the application's shutdown runs.
        assert "own startup; wsroom started: True" in process.log
        assert "own shutdown; wsroom closing: True" in process.log
    assert "not installed" not in process.log


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_second_ctrl_c_stops_a_drain_that_hangs(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(tmp_path)}
    async with running(variant(tmp_path, "stuck"), env=env) as process:
        client = await Client.connect(f"ws://127.0.0.1:{process.port}", "/ws?user=ann")
        await client.join("lobby")
        process.process.send_signal(signal.SIGINT)
        # The drain has begun: new clients are refused.
        url = f"ws://127.0.0.1:{process.port}"
        with pytest.raises(websockets.InvalidStatus) as refused:
            while True:
                await (await Client.connect(url, "/ws?user=bob")).close()
                await asyncio.sleep(0.05)
        assert refused.value.response.status_code == 503
        # The room's hook would hold it for two minutes; Ctrl+C again stops it now.
        returncode = await asyncio.wait_for(process.stop(signal.SIGINT), 3 * TIMEOUT)
    assert returncode == 0, process.log


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_without_the_drain_uvicorn_closes_with_1012(tmp_path: Path) -> None:
    # What the drain is for: the same application without wsroom's lifespan.
    source = (OPERATING / "node_app.py").read_text(encoding="utf-8")
    marker = "    lifespan=wsroom_uvicorn.lifespan(manager),\n"
    assert marker in source
    (tmp_path / "plain_app.py").write_text(source.replace(marker, ""), encoding="utf-8")
    command = (PYTHON, "-m", "uvicorn", "--app-dir", str(tmp_path), "plain_app:app", "--port", "0")
    async with example_command(*command, ready="127.0.0.1:") as process:
        await process.wait_output("Application startup complete.")
        client = await Client.connect(f"ws://127.0.0.1:{process.port}", "/ws?user=ann")
        await client.join("lobby")
        await process.stop(signal.SIGTERM)
        assert await client.wait_closed() == 1012


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("name", ["uvicorn --workers 2", "gunicorn uvicorn_worker"])
async def test_workers_share_rooms_through_redis(name: str, shared_url: str) -> None:
    prefix = fresh_prefix()
    try:
        async with server(name, env={"REDIS_URL": shared_url, "REDIS_PREFIX": prefix}) as process:
            url = f"ws://127.0.0.1:{process.port}"
            a, b = (member.client for member in await connect_members(url, 2, per_worker=1))
            a_user, b_user = a.welcome["user"], b.welcome["user"]

            # Presence across the two processes, then messages both ways.
            await a.join("lobby")
            assert sorted((await b.join("lobby"))["members"]) == sorted([a_user, b_user])
            presence = await a.recv_type("presence")
            assert (presence["event"], presence["user"]) == ("join", b_user)
            await a.send({"type": "message", "room": "lobby", "data": "from worker A"})
            message = await b.recv_type("message")
            assert (message["from"], message["data"]) == (a_user, "from worker A")
            await b.send({"type": "message", "room": "lobby", "data": "from worker B"})
            assert (await a.recv_type("message"))["from"] == a_user  # its own first
            message = await a.recv_type("message")
            assert (message["from"], message["data"]) == (b_user, "from worker B")
            await b.send({"type": "direct", "to": a_user, "data": "psst"})
            direct = await a.recv_type("direct")
            assert (direct["from"], direct["data"]) == (b_user, "psst")

            assert await asyncio.wait_for(process.stop(signal.SIGTERM), EXIT_BOUND) == 0
            assert list(await asyncio.gather(a.wait_closed(), b.wait_closed())) == [1001, 1001]
        # Each worker's drain took its presence out of Redis.
        from redis import asyncio as aioredis

        redis = aioredis.from_url(shared_url)
        try:
            assert await redis.zcard(f"{prefix}:nodes") == 0
        finally:
            await redis.aclose()
    finally:
        await delete_prefix(shared_url, prefix)


# The files shown but not run here: the docker-compose file and the systemd unit.

COMPOSE = OPERATING / "docker-compose.yml"
UNIT = OPERATING / "wsroom-chat.service"


def gunicorn_accepts(arguments: list[str]) -> None:
    """gunicorn loads node_app with these arguments (``--check-config``): every option
    exists and the application imports."""
    result = subprocess.run(
        [PYTHON, "-m", "gunicorn", "--check-config", "--chdir", str(OPERATING), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "REDIS_URL": "redis://127.0.0.1:6379/0"},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(60)
def test_the_docker_compose_file() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    assert set(services) == {"app", "nginx", "redis"}
    app, proxy = services["app"], services["nginx"]
    assert app["command"][0] == "gunicorn"
    gunicorn_accepts(app["command"][1:])
    assert app["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert app["environment"]["CLIENT_ADDRESS_HEADER"] == "X-Forwarded-For"
    assert "--bind=127.0.0.1:8000" in app["command"]  # what wsroom.conf's upstream names
    # nginx shares the app's network namespace, and serves the tested configuration.
    assert proxy["network_mode"] == "service:app"
    [volume] = proxy["volumes"]
    source, target, _ = volume.split(":")
    assert (OPERATING / source).resolve() == OPERATING / "wsroom.conf"
    assert target.startswith("/etc/nginx/conf.d/")
    assert app["ports"] == ["80:80"] and "listen 80;" in (OPERATING / "wsroom.conf").read_text()


def unit_sections(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit's sections and their settings (a key may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"a setting outside any section: {line}"
        key, equals, value = line.partition("=")
        assert equals and key.strip() and key.strip().isalnum(), line
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.mark.timeout(60)
def test_the_systemd_unit(tmp_path: Path) -> None:
    text = UNIT.read_text(encoding="utf-8")
    unit = unit_sections(text)
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    [exec_start] = service["ExecStart"]
    executable, *arguments = shlex.split(exec_start)
    assert executable.endswith("/gunicorn")
    gunicorn_accepts(arguments)
    # SIGTERM to gunicorn alone, which drains its workers, within the stop timeout.
    assert service["KillSignal"] == ["SIGTERM"] and service["KillMode"] == ["mixed"]
    graceful = float(arguments[arguments.index("--graceful-timeout") + 1])
    assert 5 < graceful < float(service["TimeoutStopSec"][0])
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    # systemd's own check, with an executable that exists here.
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(executable, str(Path(PYTHON).parent / "gunicorn")))
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=30, check=False
    )
    assert (result.returncode, result.stderr.strip()) == (0, ""), result.stderr
