"""The hook through which a project names the servers the suite runs against."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from wsroom.conformance._server import Server, ServerFactory


@pytest.hookspec
def pytest_wsroom_servers(config: pytest.Config) -> Mapping[str, Server | ServerFactory]:
    """The servers to run the conformance suite against, by name (the tests' ids).

    Implement it in a ``conftest.py`` that loads the plugin
    (``pytest_plugins = ["wsroom.conformance.plugin"]``). Each value is a server factory (a
    callable taking a ``ConnectionManager`` and returning an async context manager that
    yields ``ws://127.0.0.1:<port>``) or a :class:`wsroom.conformance.Server` that also
    says what the adapter lacks. The mappings of every implementation are merged; a name
    given twice is an error.
    """
    raise NotImplementedError  # a specification: the implementations are the projects'
