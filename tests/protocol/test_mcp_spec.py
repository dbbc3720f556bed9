"""``{"type": "mcp"}`` tools and MCP items: parsed strictly, secrets kept out of every echo."""

from __future__ import annotations

import json
from typing import Any

import pytest

from loopway.protocol.errors import ApiError
from loopway.protocol.items import ENCODER as ITEMS
from loopway.protocol.items import McpApprovalResponse, McpCall, McpListedTool, McpListTools, items_from_json, normalized
from loopway.protocol.request import parse_create

URL = "https://mcp.example.com/mcp"


def tools_of(*tools: dict[str, Any], **body: Any):
    return parse_create(json.dumps({"model": "m", "input": "hi", "tools": list(tools), **body}).encode()).tools


def error_of(*tools: dict[str, Any], **body: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        tools_of(*tools, **body)
    assert info.value.status == 400
    return info.value


def mcp(**fields: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "docs", "server_url": URL, **fields}


def test_a_spec_with_every_field():
    tools = tools_of(
        mcp(
            allowed_tools={"tool_names": ["search", "fetch"], "read_only": True},
            require_approval={"never": {"tool_names": ["search"]}, "always": {"read_only": False}},
            headers={"X-Key": "k"},
            authorization="tok",
            server_description="the docs",
        )
    )
    (spec,) = tools.mcp
    search = McpListedTool(name="search", input_schema={}, annotations={"readOnlyHint": True})
    write = McpListedTool(name="write", input_schema={})
    assert spec.allows(search) and not spec.allows(write)
    assert not spec.needs_approval(search) and spec.needs_approval(write)
    assert spec.request_headers() == {"X-Key": "k", "Authorization": "Bearer tok"}
    assert tools.functions == []  # nothing callable until the server is listed


def test_approval_is_always_unless_said_otherwise():
    (spec,) = tools_of(mcp()).mcp
    assert spec.needs_approval(McpListedTool(name="any", input_schema={}))
    (never,) = tools_of(mcp(require_approval="never")).mcp
    assert not never.needs_approval(None)


def test_the_echo_keeps_no_secret():
    tools = tools_of(mcp(headers={"X-Key": "k"}, authorization="tok"))
    assert tools.echo == [{"type": "mcp", "server_label": "docs", "server_url": URL, "headers": None}]


def test_sessions_are_keyed_by_credentials():
    a, b, c = (tools_of(mcp(authorization=t)).mcp[0] for t in ("one", "two", "one"))
    assert a.identity == c.identity != b.identity


@pytest.mark.parametrize(
    "tool,param,code",
    [
        ({"type": "mcp", "server_url": URL}, "tools[0].server_label", "missing_required_parameter"),
        (mcp(server_label="has space"), "tools[0].server_label", "invalid_value"),
        (mcp(server_label="9lives"), "tools[0].server_label", "invalid_value"),
        ({"type": "mcp", "server_label": "x"}, "tools[0].server_url", "missing_required_parameter"),
        (
            {"type": "mcp", "server_label": "x", "connector_id": "connector_gmail"},
            "tools[0].connector_id",
            "unsupported_parameter",
        ),
        (mcp(headers={"X": 1}), "tools[0].headers", "invalid_type"),
        (mcp(headers={"Bad Name": "v"}), "tools[0].headers", "invalid_value"),
        (mcp(headers={"X": "a\r\nInjected: 1"}), "tools[0].headers", "invalid_value"),
        (mcp(headers={f"H{i}": "v" for i in range(40)}), "tools[0].headers", "invalid_value"),
        (mcp(authorization=5), "tools[0].authorization", "invalid_type"),
        (mcp(require_approval="sometimes"), "tools[0].require_approval", "invalid_value"),
        (mcp(require_approval={"maybe": {}}), "tools[0].require_approval", "invalid_value"),
        (mcp(allowed_tools={"tool_names": "search"}), "tools[0].allowed_tools.tool_names", "invalid_type"),
        (mcp(allowed_tools={"names": ["a"]}), "tools[0].allowed_tools", "invalid_value"),
    ],
)
def test_bad_specs_name_their_parameter(tool: dict[str, Any], param: str, code: str):
    err = error_of(tool)
    assert (err.param, err.code) == (param, code)


def test_labels_are_unique_and_not_a_namespace():
    assert error_of(mcp(), mcp()).code == "duplicate_tool_name"
    namespace = {"type": "namespace", "name": "docs", "description": "d", "tools": [{"type": "function", "name": "f"}]}
    assert error_of(mcp(), namespace).code == "duplicate_tool_name"
    assert error_of(*[mcp(server_label=f"s{i}") for i in range(17)]).param == "tools"


def test_tool_choice_cannot_force_mcp():
    assert error_of(mcp(), tool_choice={"type": "mcp", "server_label": "docs"}).code == "unsupported_tool_choice"
    assert error_of(mcp(), tool_choice="required").param == "tool_choice"


def test_mcp_items_round_trip_typed():
    listing = McpListTools(server_label="docs", tools=[McpListedTool(name="search", input_schema={"type": "object"})])
    call = McpCall(server_label="docs", name="search", arguments="{}", output="found", approval_request_id="mcpr_1")
    answer = McpApprovalResponse(approval_request_id="mcpr_1", approve=False, reason="no")
    items = [normalized(i) for i in (listing, call, answer)]
    assert [i.id.split("_")[0] for i in items] == ["mcpl", "mcp", "mcpa"]
    decoded = items_from_json(ITEMS.encode(items))
    assert decoded == items
    assert json.loads(ITEMS.encode([call]))[0]["error"] is None  # present, as OpenAI sends it


@pytest.mark.parametrize(
    "field",
    [
        {"authorization": " s3cr3t"},
        {"authorization": "s3cr3t\n"},
        {"authorization": "s3c\x00r3t"},
        {"authorization": "s3cr3tö"},
        {"headers": {"X-Key": "s3cr3t\r\n"}},
        {"headers": {"X-Key": "s3cr3té"}},
        {"headers": {"Host": "internal.example"}},
        {"headers": {"Transfer-Encoding": "chunked"}},
        {"headers": {"content-length": "5"}},
        {"headers": {"Connection": "keep-alive"}},
        {"headers": {"Mcp-Session-Id": "someone-elses"}},
    ],
)
def test_credentials_and_headers_are_checked_before_use_and_never_echoed(field: dict):
    """A token read from a file with its newline, a NUL, a non-ASCII byte, or a header that frames or
    routes the request: a 400 naming the field, and the message never repeats the value."""
    with pytest.raises(ApiError) as refused:
        tools_of(mcp(**field))
    assert refused.value.status == 400 and refused.value.code == "invalid_value"
    assert refused.value.param.startswith(("tools[0].authorization", "tools[0].headers"))
    values = field.get("headers", {}).values() if "headers" in field else [field["authorization"]]
    for value in values:
        assert value.strip() not in refused.value.message
