"""openai-agents 0.24, langchain-openai 1.7 and pydantic-ai 2.68 against loopway, each in its own venv."""

from __future__ import annotations

import pytest

from tests.clients.conftest import run_python
from tests.conftest import MODEL, Serve, Server


@pytest.fixture(scope="module")
def server(serve: Serve) -> Server:
    return serve("--sim-decode-tps", "20000", "--store", "memory")


@pytest.mark.parametrize("transport", ["http", "websocket"])
def test_openai_agents_streamed_run_with_two_tools_and_a_handoff(server: Server, transport: str):
    seen = run_python("agents_run.py", server.url, MODEL, transport)
    assert seen["calls"] == ["read_file src/calc.py", "run_tests tests/test_calc.py"]
    assert seen["last_agent"] == "reviewer" and "transfer_to_reviewer" in seen["output"]
    assert "run_item_stream_event" in seen["events"] and "agent_updated_stream_event" in seen["events"]


def test_langchain_openai_tool_loop_with_and_without_previous_response_id(server: Server):
    seen = run_python("langchain_loop.py", server.url, MODEL)
    for mode in ("plain", "chained"):
        assert seen[mode]["calls"] == [["read_file", {"path": "src/app.py"}]]
        assert "hello from app.py" in seen[mode]["answer"]


def test_pydantic_ai_tool_loop_over_http_and_websocket(server: Server):
    seen = run_python("pydantic_ai_loop.py", server.url, MODEL)
    assert seen["calls"] == ["src/app.py", "src/app.py"]
    assert "hello from app.py" in seen["http"] and "hello from app.py" in seen["websocket"]
