"""The conformance suite's pytest plugin: ``pytest_plugins = ["wsroom.conformance.plugin"]``.

It runs each test of the suite (the ``test_*.py`` modules beside it, collected with
``pytest --pyargs wsroom.conformance``) once per server that the project's
``pytest_wsroom_servers`` hook names, and makes them asyncio tests with a timeout whatever
the project's configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from wsroom.conformance._server import InvalidServer, Server, as_server

_SUITE = Path(__file__).resolve().parent
_SERVERS = pytest.StashKey[list[Server]]()
# Each test's own limit, unless the project's configuration or the test gives one: a hung
# adapter fails its test instead of the run.
_TEST_TIMEOUT = 60


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """Declare ``pytest_wsroom_servers``, which the project's ``conftest.py`` implements."""
    from wsroom.conformance import _hookspec

    pluginmanager.add_hookspecs(_hookspec)


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to run without the plugins the suite needs (the ``conformance`` extra)."""
    missing = [name for name in ("asyncio", "timeout") if not config.pluginmanager.hasplugin(name)]
    if missing:
        raise pytest.UsageError(
            f"wsroom.conformance needs pytest-{' and pytest-'.join(missing)}: "
            'pip install "wsroom[conformance]"'
        )
    config.addinivalue_line(
        "markers",
        "one_node(reason): the test ends before any room (a handshake, a frame refused by "
        "validation), where a second node cannot change the outcome: it runs on one-node "
        "servers only.",
    )


def _in_suite(path: Path) -> bool:
    return path.resolve().parent == _SUITE


def pytest_collectstart(collector: pytest.Collector) -> None:
    """Make the suite's tests asyncio tests with a timeout, whatever the project's
    configuration (pytest-asyncio in strict mode, no pytest-timeout setting); stop the run
    at the first module of the suite if the servers to run it against are wrong."""
    if isinstance(collector, pytest.Module) and _in_suite(collector.path):
        try:
            _servers(collector.config)
        except pytest.UsageError as exc:
            # Here rather than while the module's tests are generated, where it would be
            # one collection error per module: the run stops once, with the message.
            pytest.exit(str(exc), returncode=pytest.ExitCode.USAGE_ERROR)
        collector.add_marker(pytest.mark.asyncio)
        if not _timeout_configured(collector.config):
            collector.add_marker(pytest.mark.timeout(_TEST_TIMEOUT))


def _timeout_configured(config: pytest.Config) -> bool:
    """Whether pytest-timeout was given a timeout: option, environment or configuration."""
    return bool(
        config.getoption("timeout", None)
        or os.environ.get("PYTEST_TIMEOUT")
        or config.getini("timeout")
    )


def _servers(config: pytest.Config) -> list[Server]:
    """The servers every ``pytest_wsroom_servers`` implementation named, in their order."""
    if _SERVERS not in config.stash:
        found: dict[str, Server] = {}
        try:
            results = config.hook.pytest_wsroom_servers(config=config)
        except InvalidServer as exc:
            raise pytest.UsageError(f"wsroom.conformance: {exc}") from None
        for mapping in results:
            if not isinstance(mapping, Mapping):
                raise pytest.UsageError(
                    "wsroom.conformance: pytest_wsroom_servers must return a mapping of names "
                    f"to servers, not {mapping!r}"
                )
            for name, server in mapping.items():
                if not isinstance(name, str) or not name:
                    raise pytest.UsageError(f"wsroom.conformance: a server's name {name!r}")
                if name in found:
                    raise pytest.UsageError(f"wsroom.conformance: two servers named {name!r}")
                try:
                    found[name] = as_server(name, server)
                except InvalidServer as exc:
                    raise pytest.UsageError(f"wsroom.conformance: {exc}") from None
        if not found:
            raise pytest.UsageError(
                "wsroom.conformance: no server to run the suite against. In a conftest.py "
                'beside pytest_plugins = ["wsroom.conformance.plugin"], define '
                "pytest_wsroom_servers(config) returning {name: server factory}."
            )
        config.stash[_SERVERS] = list(found.values())
    return config.stash[_SERVERS]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test of the suite once per server (``start_server``), the ids their names;
    a test marked ``one_node`` on the one-node servers only."""
    if "start_server" in metafunc.fixturenames and _in_suite(metafunc.definition.path):
        chosen = _servers(metafunc.config)
        if metafunc.definition.get_closest_marker("one_node") is not None:
            chosen = [server for server in chosen if server.nodes == 1]
        metafunc.parametrize("start_server", chosen, ids=[server.name for server in chosen])
