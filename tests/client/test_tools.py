"""The tool registry: schemas from type hints, errors as results, sync tools off the event loop."""

from __future__ import annotations

import threading
from typing import Literal

import pytest

from loopway.client.tools import ToolRegistry, schema_from_signature


def test_schema_from_type_hints():
    def edit(
        path: str,
        line: int,
        mode: Literal["a", "b"] = "a",
        tags: list[str] | None = None,
        ratio: float = 1.0,
        dry: bool = False,
    ) -> str:
        return ""

    assert schema_from_signature(edit) == {
        "type": "object",
        "additionalProperties": False,
        "required": ["path", "line"],
        "properties": {
            "path": {"type": "string"},
            "line": {"type": "integer"},
            "mode": {"type": "string", "enum": ["a", "b"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "ratio": {"type": "number"},
            "dry": {"type": "boolean"},
        },
    }


def test_missing_hint_is_refused():
    def bad(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(TypeError):
        ToolRegistry().register(bad)


def test_definitions_and_explicit_schema():
    tools = ToolRegistry()

    @tools.register
    def greet(name: str) -> str:
        """Say hello.

        Longer text that is not the description."""
        return f"hello {name}"

    tools.register(lambda **kw: "ok", name="raw", description="d", parameters={"type": "object"})
    greet_def, raw_def = tools.definitions()
    assert greet_def == {
        "type": "function",
        "name": "greet",
        "description": "Say hello.",
        "strict": True,
        "parameters": schema_from_signature(greet),
    }
    assert raw_def["parameters"] == {"type": "object"} and raw_def["strict"] is False


async def test_calls_return_results_and_errors_as_text():
    tools = ToolRegistry()
    seen_threads = []

    @tools.register
    def add(a: int, b: int) -> int:
        seen_threads.append(threading.current_thread())
        return a + b

    @tools.register
    async def boom() -> str:
        raise ValueError("nope")

    assert await tools.call("add", '{"a": 2, "b": 3}') == "5"
    assert seen_threads[0] is not threading.main_thread()
    assert await tools.call("boom", "{}") == "error: ValueError: nope"
    assert (await tools.call("missing", "{}")).startswith("error: no tool")
    assert (await tools.call("add", "[1]")).startswith("error:")
    assert (await tools.call("add", "{not json")).startswith("error:")
