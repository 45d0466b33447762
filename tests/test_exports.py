"""The public API is what __all__ says, and nothing unsafe is imported."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import wsroom

SRC = Path(wsroom.__file__).resolve().parent
PUBLIC_MODULES = [
    "wsroom",
    "wsroom.backplane",
    "wsroom.testing",
    "wsroom.conformance",
    "wsroom.adapters.websockets",
    "wsroom.adapters.websockets_sync",
    "wsroom.adapters.starlette",
    "wsroom.adapters.aiohttp",
    "wsroom.adapters.asgi",
    "wsroom.backplane.redis",
    "wsroom.threads",
    "wsroom.demo",
    "wsroom.browser",
    "wsroom.admin",
    "wsroom.metrics",
    "wsroom.exceptions",
    "wsroom.protocol",
    "wsroom.handshake",
    "wsroom.limits",
    "wsroom.connection",
    "wsroom.room",
    "wsroom.manager",
]


def test_all_names_exist_and_are_documented() -> None:
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        assert module.__doc__, f"{module_name} has no docstring"
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type) or inspect.isfunction(obj):
                assert obj.__doc__, f"{module_name}.{name} has no docstring"


def test_top_level_reexports_every_core_name() -> None:
    core = ["exceptions", "protocol", "handshake", "limits", "connection", "room"]
    expected = set()
    for module_name in core:
        expected |= set(importlib.import_module(f"wsroom.{module_name}").__all__)
    assert expected <= set(wsroom.__all__)
    assert len(wsroom.__all__) == len(set(wsroom.__all__))


def test_no_pickle_marshal_or_eval_anywhere() -> None:
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec"), f"{path}: {node.func.id}()"
                continue
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in ("pickle", "marshal", "shelve", "dill"), (
                    f"{path}: {name}"
                )


def test_py_typed_is_shipped() -> None:
    assert (SRC / "py.typed").exists()
