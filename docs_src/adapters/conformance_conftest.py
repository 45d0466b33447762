# conftest.py: the conformance suite against TaskAdapter.
import pytest

from wsroom.conformance import ServerFactory

from task_adapter_server import task_adapter_server

pytest_plugins = ["wsroom.conformance.plugin"]


def pytest_wsroom_servers(config: pytest.Config) -> dict[str, ServerFactory]:
    # Every test of the suite runs once per server named here; the name is in its id.
    return {"task": task_adapter_server}
