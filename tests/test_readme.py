"""The README's examples are real: its server is examples/chat.py, and its test passes."""

from __future__ import annotations

import asyncio
import re
import runpy
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.helpers import TIMEOUT, Client

ROOT = Path(__file__).resolve().parent.parent


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def _example() -> dict[str, Any]:
    return runpy.run_path(str(ROOT / "examples" / "chat.py"), run_name="example")


# What examples/chat.py adds to the README's server, line for line: the port as an argument
# (tests start it on port 0) and wsroom.js for pages, as the other chat examples serve it.
EXAMPLE_ADDITIONS = [
    ("import asyncio\n\n", "import asyncio\nimport sys\n\n"),
    ("websockets import serve\n", "websockets import client_script, serve\n"),
    ("async def main() -> None:", "async def main(port: int = 8765) -> None:"),
    (
        '    async with serve(manager, "127.0.0.1", 8765) as server:\n',
        '    async with serve(manager, "127.0.0.1", port, process_request=client_script()) '
        "as server:\n"
        "        port = server.sockets[0].getsockname()[1]  # the one chosen when PORT is 0\n"
        '        print(f"chat on ws://127.0.0.1:{port}/?user=alice, wsroom.js at /wsroom.js", '
        "flush=True)\n",
    ),
]


def test_readme_server_is_the_example_file() -> None:
    example = (ROOT / "examples" / "chat.py").read_text()
    server = _python_blocks()[0]
    # The file adds a docstring and a __main__ guard around asyncio.run(main()).
    body = server.replace("\n\n\nasyncio.run(main())\n", "")
    for readme, added in EXAMPLE_ADDITIONS:
        body = body.replace(readme, added)
    assert body.strip() in example


async def test_readme_test_passes() -> None:
    namespace = _example()
    exec(_python_blocks()[1], namespace)
    await namespace["test_staff_rooms_are_private"]()


async def test_example_server_over_a_socket() -> None:
    namespace = _example()
    manager = namespace["ConnectionManager"](
        namespace["ChatRoom"], authenticate=namespace["authenticate"]
    )
    from wsroom.adapters.websockets import serve

    async with serve(manager, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        with pytest.raises(websockets.InvalidStatus) as refused:
            await Client.connect(url, "/")
        assert refused.value.response.status_code == 401
        alice = await Client.connect(url, "/?user=alice")
        bob = await Client.connect(url, "/?user=bob")
        assert (await alice.join("staff:ops"))["members"] == ["alice"]
        answer = await bob.request({"type": "join", "room": "staff:ops"})
        assert answer["code"] == "forbidden"
        await alice.join("lobby")
        await bob.join("lobby")
        await bob.send({"type": "typing", "room": "lobby"})
        typing = await alice.recv_type("typing")
        assert typing == {"type": "typing", "room": "lobby", "data": {"user": "bob"}}
        await asyncio.wait_for(asyncio.gather(alice.close(), bob.close()), TIMEOUT)
