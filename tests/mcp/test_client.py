"""loopway's MCP client against the official ``mcp`` package's server, and beside its own client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import mcp
import pytest

from loopway.mcp.allow import McpAllowList
from loopway.mcp.client import AnswerBudget, McpLimits, McpSession
from loopway.mcp.network import guarded_client
from tests.mcp.notes import NotesServer

LIMITS = McpLimits(call_timeout_s=5, list_timeout_s=5)


def session_for(server: NotesServer, limits: McpLimits = LIMITS, headers: dict | None = None, allow: str = "") -> McpSession:
    http = guarded_client(McpAllowList.parse(allow or server.allow))
    return McpSession(http, server.url, headers or {}, limits)


def run(coroutine):
    return asyncio.run(coroutine)


def test_lists_and_calls_what_the_reference_client_sees(notes: NotesServer):
    """The same tools (names, schemas, annotations) and the same answers as ``mcp.Client``."""

    async def ours():
        session = session_for(notes)
        tools = await session.list_tools()
        result = await session.call_tool("read_note", {"path": "notes/a.md"})
        await session.aclose()
        return tools, result

    async def reference():
        async with mcp.Client(notes.url) as client:
            listed = await client.list_tools()
            called = await client.call_tool("read_note", {"path": "notes/a.md"})
            return listed.tools, called

    tools, result = run(ours())
    expected, called = run(reference())
    assert [t.name for t in tools] == [t.name for t in expected] == ["read_note", "write_note", "count_calls"]
    for mine, theirs in zip(tools, expected, strict=True):
        assert mine.input_schema == theirs.input_schema and mine.description == theirs.description
    assert tools[0].annotations == {"readOnlyHint": True}
    assert result.failure is None and result.output == called.content[0].text
    assert result.output == "the note at notes/a.md says: remember the milk"


def test_a_tool_that_fails_is_a_tool_execution_error(notes: NotesServer):
    async def calls():
        session = session_for(notes)
        return await session.call_tool("read_note", {"path": "fail/x.md"}), await session.call_tool("nosuch", {})

    failed, unknown = run(calls())
    assert failed.output is None and failed.failure.kind == "mcp_tool_execution_error"
    assert failed.failure.wire()["type"] == "mcp_tool_execution_error"
    assert "fail/x.md" in str(failed.failure.wire()["content"])
    assert unknown.failure.kind == "mcp_tool_execution_error" and "nosuch" in unknown.failure.message


def test_a_slow_call_times_out_as_a_protocol_error(notes: NotesServer):
    async def call():
        session = session_for(notes, McpLimits(call_timeout_s=0.5, list_timeout_s=5))
        started = asyncio.get_running_loop().time()
        result = await session.call_tool("read_note", {"path": "slow/x.md"})
        return result, asyncio.get_running_loop().time() - started

    result, took = run(call())
    assert took < 2.5
    assert result.failure.wire() == {
        "type": "mcp_protocol_error",
        "code": -32001,
        "message": "The MCP server did not answer within 0.5 s.",
    }


def test_an_answer_past_the_byte_cap_is_dropped(notes: NotesServer):
    async def calls():
        session = session_for(notes, McpLimits(max_response_bytes=20_000))
        return await session.call_tool("read_note", {"path": "big/50000"}), await session.call_tool(
            "read_note", {"path": "big/5000"}
        )

    over, under = run(calls())
    assert over.failure.kind == "mcp_protocol_error" and "exceeded 20000 bytes" in over.failure.message
    assert under.output == "x" * 5000


def test_answers_past_the_processs_budget_fail_their_call_and_give_the_budget_back(notes: NotesServer):
    """The process's budget of answer bytes being read at once (``McpLimits.answer_bytes_in_flight``):
    a read that would pass it fails its call, saying why; a finished read gives its bytes back."""

    async def calls():
        http = guarded_client(McpAllowList.parse(notes.allow))
        budget = AnswerBudget(20_000)
        session = McpSession(http, notes.url, {}, LIMITS, budget=budget)
        small = await session.call_tool("read_note", {"path": "big/5000"})
        held = budget.used
        budget.take(18_000)  # others' answers, being read right now
        crowded = await session.call_tool("read_note", {"path": "big/5000"})
        budget.give_back(18_000)
        again = await session.call_tool("read_note", {"path": "big/5000"})
        return small, held, crowded, again, budget.used

    small, held, crowded, again, left = run(calls())
    assert small.output == "x" * 5000 and again.output == "x" * 5000
    assert crowded.failure is not None and "too many MCP answers at once" in crowded.failure.message
    assert held == 0 and left == 0


def test_a_server_that_dies_mid_call_is_an_http_error(fresh_notes: NotesServer):
    result = run(session_for(fresh_notes).call_tool("read_note", {"path": "crash/now.md"}))
    assert not fresh_notes.alive()
    assert result.failure.kind == "http_error" and "Could not reach the MCP server" in result.failure.message


def test_a_forgotten_session_is_opened_again(notes: NotesServer):
    async def calls():
        session = session_for(notes)
        await session.list_tools()
        session._session_id = "0" * 32  # as after the server restarted: it answers 404
        result = await session.call_tool("read_note", {"path": "notes/b.md"})
        return session.initializations, result

    initializations, result = run(calls())
    assert initializations == 2 and result.failure is None


def test_credentials_reach_the_server(tmp_path: Path):
    server = NotesServer(tmp_path, token="s3cret")
    try:
        ok = run(session_for(server, headers={"Authorization": "Bearer s3cret", "X-Team": "blue"}).list_tools())
        with pytest.raises(Exception) as refused:
            run(session_for(server).list_tools())
    finally:
        server.stop()
    assert [t.name for t in ok][:1] == ["read_note"]
    assert refused.value.failure.wire() == {
        "type": "http_error",
        "code": 401,
        "message": "The MCP server answered HTTP 401 Unauthorized.",
    }
    assert '"x-team": "blue"' in server.headers_seen()


def test_the_connection_goes_only_to_a_vetted_address(notes: NotesServer):
    """A name that resolves to loopback is refused unless loopback is listed; when it is, the
    socket goes to the address that was checked."""
    url = f"http://notes.test:{notes.port}/mcp"

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"] if host == "notes.test" else []

    async def listing(allow: str):
        http = guarded_client(McpAllowList.parse(allow), resolver)
        try:
            return await McpSession(http, url, {}, LIMITS).list_tools()
        finally:
            await http.aclose()

    with pytest.raises(Exception) as refused:
        run(listing(f"notes.test:{notes.port}"))
    assert "not an address this server may connect to" in refused.value.failure.message
    assert [t.name for t in run(listing(f"notes.test:{notes.port}, 127.0.0.1"))][0] == "read_note"


def test_server_sent_events_parse_the_same_however_they_are_chunked():
    from loopway.mcp.client import SseMessages

    stream = b'event: message\r\ndata: {"a":\ndata: 1}\r\n\r\n: comment\n\ndata: {"b": 2}\n\n'
    whole = SseMessages().feed(stream)
    assert whole == [b'{"a":\n1}', b'{"b": 2}']
    bytewise = SseMessages()
    assert [m for i in range(len(stream)) for m in bytewise.feed(stream[i : i + 1])] == whole
    # one byte at a time costs linear time: a megabyte line fed bytewise is fast
    long = SseMessages()
    for _ in range(1 << 20):
        long.feed(b"x")
    assert long.feed(b"\n\n") == []
