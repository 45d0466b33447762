"""A private nginx (Debian's package) in front of servers under test, configured with the
file docs/operating.md shows (docs_src/operating/wsroom.conf), only its ports changed.

nginx runs in the foreground (``daemon off; master_process on;``) with its own prefix, pid
file, temporary and log directories under a temporary directory, on a free port of
127.0.0.1, and is stopped by its PID (its workers with it, by theirs if need be).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

import psutil
import pytest

from tests.helpers import ROOT, TIMEOUT, free_port
from wsroom import ConnectionManager

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
"""The nginx executable, or ``None`` when it is not installed (scripts/test.sh installs it)."""

SITE = ROOT / "docs_src" / "operating" / "wsroom.conf"
"""The configuration docs/operating.md shows."""

_LISTEN = re.compile(r"^(\s*)listen 80;$", re.M)
_UPSTREAM = re.compile(r"^(\s*)server 127\.0\.0\.1:8000;$", re.M)


def site_config(
    listen: int, upstreams: Sequence[int], timeouts: Mapping[str, float] | None = None
) -> str:
    """The documented configuration listening on 127.0.0.1:``listen``, in front of the
    servers on 127.0.0.1 at ``upstreams``; ``timeouts`` shortens some of its timeouts
    (``{"client_header_timeout": 2}``), for tests that measure them."""
    text = SITE.read_text(encoding="utf-8")
    assert len(_LISTEN.findall(text)) == 1 and len(_UPSTREAM.findall(text)) == 1, SITE
    for name, seconds in (timeouts or {}).items():
        text, found = re.subn(rf"\b{name}(\s+)\d+s;", rf"{name}\g<1>{seconds:g}s;", text)
        assert found == 1, f"{SITE} sets no {name}"
    text = _LISTEN.sub(lambda m: f"{m[1]}listen 127.0.0.1:{listen};", text)
    servers = "\n".join(f"    server 127.0.0.1:{port};" for port in upstreams)
    return _UPSTREAM.sub(lambda m: servers, text)


def main_config(root: Path) -> str:
    """What Debian's /etc/nginx/nginx.conf would hold, for a private nginx under ``root``."""
    return f"""\
daemon off;
master_process on;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/temp/body;
    proxy_temp_path {root}/temp/proxy;
    fastcgi_temp_path {root}/temp/fastcgi;
    uwsgi_temp_path {root}/temp/uwsgi;
    scgi_temp_path {root}/temp/scgi;
    include {root}/wsroom.conf;
}}
"""


class Nginx:
    """A running private nginx: its port, process and directory."""

    def __init__(
        self, upstreams: Sequence[int], *, timeouts: Mapping[str, float] | None = None
    ) -> None:
        assert NGINX is not None, "nginx is not installed"
        self._directory = tempfile.TemporaryDirectory(prefix="wsroom-nginx-")
        self.root = Path(self._directory.name)
        (self.root / "logs").mkdir()
        (self.root / "temp").mkdir()
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        try:
            for _ in range(3):  # another program may take the free port first
                self.port = free_port()
                site = site_config(self.port, upstreams, timeouts)
                (self.root / "wsroom.conf").write_text(site, encoding="utf-8")
                (self.root / "nginx.conf").write_text(main_config(self.root), encoding="utf-8")
                self.process = subprocess.Popen(
                    [NGINX, "-p", str(self.root), "-c", "nginx.conf", "-e", "logs/error.log"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                if self._listening():
                    return
                self._stop_process()
            raise RuntimeError(f"nginx did not start: {self.error_log}")
        except BaseException:
            self.stop()
            raise

    @property
    def error_log(self) -> str:
        """What nginx logged (warnings and errors)."""
        path = self.root / "logs" / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _listening(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.005)
        return False

    def _stop_process(self) -> None:
        # SIGTERM is nginx's fast shutdown; its workers, killed by their PIDs if the master
        # had to be killed.
        process, self.process = self.process, None
        if process is None:
            return
        try:
            workers = psutil.Process(process.pid).children(recursive=True)
        except psutil.Error:
            workers = []
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for worker in workers:
            with contextlib.suppress(psutil.Error):
                worker.kill()

    def stop(self) -> None:
        """Stop nginx by its PID and remove its directory."""
        try:
            self._stop_process()
        finally:
            self._directory.cleanup()


@contextlib.contextmanager
def nginx(
    upstreams: Sequence[int], *, timeouts: Mapping[str, float] | None = None
) -> Iterator[Nginx]:
    """nginx with the documented configuration in front of ``upstreams`` (see
    :func:`site_config` for ``timeouts``)."""
    proxy = Nginx(upstreams, timeouts=timeouts)
    try:
        yield proxy
    finally:
        proxy.stop()


@contextlib.asynccontextmanager
async def nginx_websockets_server(manager: ConnectionManager) -> AsyncIterator[str]:
    """A conformance server factory: ``wsroom.adapters.websockets.serve`` on 127.0.0.1
    behind nginx; yields nginx's ``ws://`` URL."""
    from wsroom.adapters.websockets import serve

    if NGINX is None:
        pytest.skip("nginx is not installed (scripts/test.sh installs it)")
    async with serve(manager, "127.0.0.1", 0) as server:
        upstream = server.sockets[0].getsockname()[1]
        proxy = await asyncio.to_thread(Nginx, [upstream])
        try:
            yield f"ws://127.0.0.1:{proxy.port}"
        finally:
            await asyncio.to_thread(proxy.stop)
