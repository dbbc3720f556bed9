"""The agent loop against a real loopway server, over every transport."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from loopway.client import (
    AgentError,
    AgentLoop,
    HttpChainedTransport,
    HttpStatelessTransport,
    ToolRegistry,
    WebSocketTransport,
    make_transport,
)
from tests.conftest import MODEL, Server

TASK = "read src/a.py and src/b.py and src/c.py"


def file_tools(delay: float = 0.0) -> tuple[ToolRegistry, list[str]]:
    tools, read = ToolRegistry(), []

    @tools.register
    async def read_file(path: str) -> str:
        """Read a file."""
        read.append(path)
        await asyncio.sleep(delay)
        return f"# {path}\nvalue = {len(read)}\n"

    return tools, read


@pytest.mark.parametrize("kind", ["http-stateless", "http-chained", "ws"])
async def test_loop_completes_over_each_transport(server: Server, kind: str):
    tools, read = file_tools()
    transport = make_transport(kind, server.url, "sk-test", store=kind == "http-chained")
    try:
        result = await AgentLoop(transport, tools, model=MODEL).run(TASK)
    finally:
        await transport.aclose()
    assert read == ["src/a.py", "src/b.py", "src/c.py"]
    assert len(result.turns) == 4 and "src/c.py" in result.output_text
    assert all(t.to_first_event_s > 0 and t.model_s > 0 for t in result.turns)
    assert [i.get("type") for i in result.items].count("function_call_output") == 3


def test_transports_send_what_their_mode_says():
    from loopway.client.transports import TurnRequest

    turn = TurnRequest(
        model="m",
        instructions=None,
        tools=[],
        history=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        new_items=[{"role": "user", "content": "b"}],
        previous_response_id="resp_1",
    )
    assert turn.body(full=True, store=False)["input"] == turn.history
    chained = turn.body(full=False, store=True)
    assert chained["input"] == turn.new_items and chained["previous_response_id"] == "resp_1" and chained["store"]


async def test_tools_start_before_the_response_completes(tmp_path: Path):
    trace = tmp_path / "trace.json"
    trace.write_text(
        json.dumps(
            {
                "turns": [
                    {
                        "output": [
                            {"type": "function_call", "name": "probe", "arguments": {}},
                            {"type": "message", "text": "word " * 300},
                        ]
                    }
                ]
            }
        )
    )
    server = Server(tmp_path, "--sim-trace", str(trace), "--sim-decode-tps", "2000", "--store", "memory")
    tools, started = ToolRegistry(), []

    @tools.register
    async def probe() -> str:
        """Record when it runs."""
        started.append(time.perf_counter())
        return "ok"

    transport = WebSocketTransport(server.url)
    completed: list[float] = []
    original = transport.stream

    async def watched(turn):
        async for event in original(turn):
            if event["type"] == "response.completed":
                completed.append(time.perf_counter())
            yield event

    transport.stream = watched  # type: ignore[method-assign]
    try:
        await AgentLoop(transport, tools, model=MODEL).run("go")
    finally:
        await transport.aclose()
        server.stop()
    assert started and completed and started[0] < completed[0] - 0.05  # ran while 300 tokens still streamed


async def test_parallel_calls_run_concurrently(server: Server):
    tools, read = file_tools(delay=0.4)
    transport = WebSocketTransport(server.url)
    try:
        result = await AgentLoop(transport, tools, model=MODEL).run("read both src/x.py and src/y.py")
    finally:
        await transport.aclose()
    assert sorted(read) == ["src/x.py", "src/y.py"] and result.turns[0].calls == 2
    assert result.turns[0].tool_run_s >= 0.8 and result.turns[0].tool_s < 0.7


@pytest.mark.parametrize("store", [False, True])
async def test_websocket_reconnects_when_the_server_closes_the_socket(tmp_path: Path, store: bool):
    server = Server(tmp_path, "--ws-connection-max-age-s", "0.3", "--store", "memory")
    tools, read = file_tools(delay=0.35)  # each tool outlives the connection
    transport = WebSocketTransport(server.url, store=store)
    try:
        result = await AgentLoop(transport, tools, model=MODEL).run(TASK)
    finally:
        await transport.aclose()
        server.stop()
    assert read == ["src/a.py", "src/b.py", "src/c.py"] and "src/c.py" in result.output_text
    assert transport.reconnects >= 2


async def test_websocket_falls_back_to_http_when_the_upgrade_is_refused(tmp_path: Path):
    server = Server(tmp_path, "--websocket", "off", "--store", "memory")
    tools, read = file_tools()
    transport = WebSocketTransport(server.url)
    try:
        result = await AgentLoop(transport, tools, model=MODEL).run(TASK)
    finally:
        await transport.aclose()
        server.stop()
    assert isinstance(transport.fallback, HttpStatelessTransport) and len(read) == 3
    assert "src/c.py" in result.output_text


async def test_server_errors_surface_as_agent_errors(server: Server):
    tools, _ = file_tools()
    for transport in (HttpChainedTransport(server.url), WebSocketTransport(server.url)):
        try:
            with pytest.raises(AgentError, match="model_not_found"):
                await AgentLoop(transport, tools, model="no-such-model").run("hi")
        finally:
            await transport.aclose()
