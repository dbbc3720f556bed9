"""Conversations: appending renders only new items, and equals rendering the history whole."""

from __future__ import annotations

from loopway.core.context.conversation import Conversation
from loopway.protocol.items import FunctionCall, FunctionCallOutput, InputText, Message
from loopway.protocol.tools import EMPTY_TOOLS, parse_tools
from loopway.tokens.render import Renderer

R = Renderer()
HISTORY = [
    Message(role="user", content="read src/app.py"),
    FunctionCall(call_id="c1", name="read_file", arguments='{"path":"src/app.py"}'),
    FunctionCallOutput(call_id="c1", output="print('hi')"),
    Message(role="assistant", content="It prints hi."),
]


def test_appending_equals_rendering_whole():
    step = Conversation.start(R, "be brief", EMPTY_TOOLS, HISTORY[:1])
    for item in HISTORY[1:]:
        step = step.append(R, [item])
    whole = Conversation.start(R, "be brief", EMPTY_TOOLS, HISTORY)
    assert step.tokens.ids() == whole.tokens.ids()


def test_string_content_renders_like_a_text_part():
    as_string = R.item(Message(role="user", content="hello there"))
    as_parts = R.item(Message(role="user", content=[InputText(text="hello there")]))
    assert as_string == as_parts


def test_ids_and_status_do_not_change_rendering():
    plain = R.item(FunctionCall(call_id="c", name="f", arguments="{}"))
    echoed = R.item(FunctionCall(call_id="c", name="f", arguments="{}", id="fc_1", status="completed"))
    assert plain == echoed


def test_rebase_keeps_tokens_when_header_is_unchanged_and_rerenders_otherwise():
    base = Conversation.start(R, "rules", EMPTY_TOOLS, HISTORY)
    assert base.rebase(R, "rules", EMPTY_TOOLS) is base
    tools = parse_tools([{"type": "function", "name": "f"}])
    changed = base.rebase(R, "rules", tools)
    assert changed.tokens.ids() == Conversation.start(R, "rules", tools, HISTORY).tokens.ids()


def test_calls_are_known_per_branch():
    base = Conversation.start(R, None, EMPTY_TOOLS, HISTORY[:1])
    left = base.append(R, [FunctionCall(call_id="left", name="f", arguments="{}")])
    right = base.append(R, [FunctionCall(call_id="right", name="f", arguments="{}")])
    assert left.has_call("left") and not left.has_call("right")
    assert right.has_call("right") and not right.has_call("left")
    assert not base.has_call("left")


def test_mcp_items_are_found_by_label_and_id_in_their_own_view():
    """The latest successful listing of a server, an approval request by id, and whether an approved
    call ran; a shorter view that shares a longer branch's buffer finds its own, not the branch's."""
    from loopway.protocol.items import McpApprovalRequest, McpCall, McpListedTool, McpListTools

    failed = McpListTools(id="mcpl_0", server_label="docs", tools=[], error="down")
    listed = McpListTools(id="mcpl_1", server_label="docs", tools=[McpListedTool(name="search", input_schema={})])
    asked = McpApprovalRequest(id="mcpr_1", server_label="docs", name="search", arguments="{}")
    base = Conversation.start(R, None, EMPTY_TOOLS, HISTORY[:1])
    assert base.mcp_tools_listed("docs") is None
    first = base.append(R, [failed])
    assert first.mcp_tools_listed("docs") is None  # a failed listing is listed again
    second = first.append(R, [listed, asked])
    assert second.mcp_tools_listed("docs") is listed and second.mcp_approval_request("mcpr_1") is asked
    assert not second.mcp_call_approved("mcpr_1")
    relisted = McpListTools(id="mcpl_2", server_label="docs", tools=[])
    longer = second.append(
        R, [McpCall(server_label="docs", name="search", arguments="{}", approval_request_id="mcpr_1"), relisted]
    )
    assert longer.mcp_call_approved("mcpr_1") and longer.mcp_tools_listed("docs") is relisted
    assert second.mcp_tools_listed("docs") is listed and not second.mcp_call_approved("mcpr_1")
    assert second.mcp_approval_request("mcpr_9") is None
