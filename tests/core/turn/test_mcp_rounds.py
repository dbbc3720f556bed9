"""A turn's MCP state: what the engine is offered, what a call becomes, and what may run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from loopway.core.context.conversation import Conversation
from loopway.core.turn import mcp_rounds as mcp
from loopway.mcp.client import McpResult
from loopway.mcp.sessions import McpRuntime, McpSettings
from loopway.protocol.errors import ApiError
from loopway.protocol.items import McpApprovalRequest, McpApprovalResponse, McpCall, McpListedTool, McpListTools, Message
from loopway.protocol.tools import parse_tools
from loopway.tokens.render import Renderer

URL = "http://127.0.0.1:9/mcp"
READ = McpListedTool(name="read", input_schema={"type": "object"}, annotations={"readOnlyHint": True})
WRITE = McpListedTool(name="write", input_schema={"type": "object"})
LISTING = McpListTools(id="mcpl_1", server_label="docs", tools=[READ, WRITE])
RUNTIME = McpRuntime(McpSettings(allow="127.0.0.1"))


def tools(**spec: Any):
    return parse_tools(
        [{"type": "function", "name": "local"}, {"type": "mcp", "server_label": "docs", "server_url": URL, **spec}]
    )


def context(*items: Any) -> Conversation:
    return Conversation.start(Renderer(), None, tools(), [Message(role="user", content="hi"), *items])


class FakeSessions:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def session(self, spec: Any) -> FakeSessions:
        return self

    async def call_tool(self, name: str, arguments: dict) -> McpResult:
        self.calls.append((name, arguments))
        return McpResult(output=f"ran {name}")


def test_a_listing_in_the_context_is_reused_and_offered_in_the_servers_namespace():
    turn = mcp.prepare(tools(allowed_tools=["read"]), context(LISTING), [], RUNTIME, None)
    assert turn is not None and turn.unlisted() == []
    offered = turn.engine_tools(tools(allowed_tools=["read"])).functions
    assert [(f.name, f.namespace, f.mcp) for f in offered] == [("local", None, False), ("read", "docs", True)]
    assert mcp.prepare(tools(), context(), [], RUNTIME, None).unlisted()[0].server_label == "docs"


def test_what_a_call_becomes():
    turn = mcp.prepare(tools(require_approval={"never": {"read_only": True}}), context(LISTING), [], RUNTIME, None)
    assert turn.call_kind("docs", "read") == ("mcp_call", "docs")
    assert turn.call_kind("docs", "write") == ("mcp_approval", "docs")
    assert turn.call_kind(None, "local") == ("function", "")


def test_only_listed_and_allowed_tools_run_and_only_within_the_budget():
    async def scenario():
        turn = mcp.prepare(tools(allowed_tools=["read"], require_approval="never"), context(LISTING), [], RUNTIME, 3)
        turn.sessions = FakeSessions()
        calls = [
            McpCall(id=f"mcp_{i}", server_label="docs", name=name, arguments=arguments)
            for i, (name, arguments) in enumerate(
                [("write", "{}"), ("invented", "{}"), ("read", "[1]"), ("read", '{"p": 1}')]
            )
        ]
        for call in calls:
            turn.start_call(call)
        return [await turn.result(c) for c in calls], turn.sessions.calls

    results, ran = asyncio.run(scenario())
    assert (
        ran == []
    )  # write: not allowed; invented: not listed; the third: not an object; the fourth: past max 3 (refused calls count)
    messages = [error["message"] for _, error in results]
    assert "not offered" in messages[0] and "not offered" in messages[1]
    assert "not a JSON object" in messages[2] and "max_tool_calls (3)" in messages[3]


def test_an_approval_runs_its_call_once_and_names_a_known_request():
    asked = McpApprovalRequest(id="mcpr_1", server_label="docs", name="write", arguments='{"p": 1}')
    yes = McpApprovalResponse(approval_request_id="mcpr_1", approve=True)
    turn = mcp.prepare(tools(), context(LISTING, asked, yes), [yes], RUNTIME, None)
    assert [(c.name, c.arguments, c.approval_request_id) for c in turn.approved] == [("write", '{"p": 1}', "mcpr_1")]
    ran = McpCall(server_label="docs", name="write", arguments="{}", approval_request_id="mcpr_1")
    assert mcp.prepare(tools(), context(LISTING, asked, yes, ran), [yes, ran], RUNTIME, None).approved == []
    no = McpApprovalResponse(approval_request_id="mcpr_1", approve=False)
    assert mcp.prepare(tools(), context(LISTING, asked, no), [no], RUNTIME, None).approved == []
    stray = McpApprovalResponse(approval_request_id="mcpr_9", approve=True)
    with pytest.raises(ApiError) as info:
        mcp.prepare(tools(), context(LISTING, stray), [stray], RUNTIME, None)
    assert info.value.param == "input[0].approval_request_id"


def test_a_url_not_allowed_and_a_server_without_mcp_are_400s():
    with pytest.raises(ApiError) as info:
        mcp.prepare(tools(), context(), [], McpRuntime(McpSettings(allow="")), None)
    assert info.value.code == "mcp_server_not_allowed" and info.value.param == "tools[1].server_url"
