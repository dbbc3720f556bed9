"""The Chat Completions translator: requests out, recorded and transcribed streams in."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from loopway.core.context.conversation import Conversation
from loopway.core.turn.assembler import EventAssembler
from loopway.engines.base import EngineRequest, Finish, TextDelta, ToolCallDelta
from loopway.engines.upstream.chat_bridge import ChunkDecoder, ToolNames, body_of, messages_of
from loopway.protocol.events import encode_event
from loopway.protocol.items import (
    FunctionCall,
    FunctionCallOutput,
    InputImage,
    InputText,
    Message,
    Reasoning,
    ReasoningText,
    SummaryText,
)
from loopway.protocol.request import JsonSchemaFormat
from loopway.protocol.response import Response
from loopway.protocol.tools import ToolChoice, parse_tool_choice, parse_tools
from loopway.tokens.render import Renderer
from tests.openapi import validate_event

FIXTURES = Path(__file__).parent / "fixtures"
TOOLS = parse_tools(
    [
        {
            "type": "function",
            "name": "read_file",
            "description": "Read",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
        {"type": "function", "name": "run", "strict": True},
    ]
)


def request(items, choice: ToolChoice | None = None, **kw) -> EngineRequest:
    conversation = Conversation.start(Renderer(), "be brief", TOOLS, items)
    fields = dict(
        model="pub",
        tokens=conversation.tokens,
        known_prefix=0,
        items=items,
        instructions="be brief",
        tools=TOOLS,
        tool_choice=choice or ToolChoice("auto"),
        parallel_tool_calls=True,
        max_output_tokens=None,
        json_schema=None,
        temperature=0.5,
        top_p=0.9,
    )
    return EngineRequest(**{**fields, **kw})


def test_items_become_messages_with_folded_tool_calls():
    items = [
        Message(role="developer", content="rules"),
        Message(role="user", content="read both"),
        Message(role="assistant", content="Sure."),
        FunctionCall(call_id="c1", name="read_file", arguments='{"path":"a"}'),
        FunctionCall(call_id="c2", name="read_file", arguments='{"path":"b"}'),
        FunctionCallOutput(call_id="c1", output="A"),
        FunctionCallOutput(call_id="c2", output="B"),
    ]
    assert messages_of("be brief", items) == [
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "read both"},
        {
            "role": "assistant",
            "content": "Sure.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": '{"path":"a"}'}},
                {"id": "c2", "type": "function", "function": {"name": "read_file", "arguments": '{"path":"b"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "A"},
        {"role": "tool", "tool_call_id": "c2", "content": "B"},
    ]


def test_images_become_content_parts():
    message = Message(
        role="user", content=[InputText(text="what?"), InputImage(image_url="data:image/png;base64,xx", detail="low")]
    )
    assert messages_of(None, [message])[0]["content"] == [
        {"type": "text", "text": "what?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,xx", "detail": "low"}},
    ]


def test_body_maps_tools_choice_format_and_limits():
    schema = JsonSchemaFormat(name="out", schema={"type": "object"}, strict=True)
    named = parse_tool_choice({"type": "function", "name": "run"}, TOOLS)
    body = body_of(
        request([Message(role="user", content="x")], named, max_output_tokens=64, json_schema=schema), "upstream-model"
    )
    assert body["model"] == "upstream-model" and body["stream"] and body["stream_options"] == {"include_usage": True}
    assert body["tool_choice"] == {"type": "function", "function": {"name": "run"}}
    assert [t["function"]["name"] for t in body["tools"]] == ["run"]  # only the forced function is offered
    assert body["tools"][0]["function"]["strict"] is True and body["parallel_tool_calls"] is True
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
    }
    assert body["max_tokens"] == 64 and body["temperature"] == 0.5 and body["top_p"] == 0.9
    none = body_of(request([Message(role="user", content="x")], parse_tool_choice("none", TOOLS)), "m")
    assert "tools" not in none


def decode(name: str) -> tuple[list, Finish]:
    decoder = ChunkDecoder()
    deltas = []
    for line in (FIXTURES / name).read_text().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            deltas += decoder.feed(json.loads(line[6:]))
    return deltas, decoder.finish(999, lambda: 7)


def assemble(deltas, finish) -> list[dict]:
    assembler = EventAssembler(Response(id="resp_1", created_at=1, status="in_progress", model="m"))
    events = assembler.opening()
    for delta in [*deltas, finish]:
        events += assembler.feed(delta)
    out = [msgspec.json.decode(encode_event(e)) for e in events]
    for event in out:
        validate_event(event)
    return out


def test_vllm_parallel_tool_calls_keep_index_and_upstream_ids():
    deltas, finish = decode("vllm-parallel-tool-calls.sse")
    assert finish.reason == "tool_calls" and (finish.input_tokens, finish.cached_tokens, finish.output_tokens) == (
        120,
        96,
        30,
    )
    events = assemble(deltas, finish)
    output = events[-1]["response"]["output"]
    assert [o["type"] for o in output] == ["message", "function_call", "function_call"]
    assert [(o["call_id"], json.loads(o["arguments"])) for o in output[1:]] == [
        ("chatcmpl-tool-1", {"path": "src/a.py"}),
        ("chatcmpl-tool-2", {"path": "src/b.py"}),
    ]
    assert events[-1]["response"]["usage"]["input_tokens_details"]["cached_tokens"] == 96


def test_openai_tool_call_stream():
    deltas, finish = decode("openai-tool-call.sse")
    output = assemble(deltas, finish)[-1]["response"]["output"]
    assert output == [
        {
            "type": "function_call",
            "id": output[0]["id"],
            "call_id": "call_Xy",
            "name": "get_weather",
            "arguments": '{"location":"Paris"}',
            "status": "completed",
        }
    ]
    assert finish.output_tokens == 17


def test_recorded_llamacpp_streams():
    deltas, finish = decode("llamacpp-tool-call.sse")
    assert {d.name for d in deltas if isinstance(d, ToolCallDelta)} == {"read_file"}
    assert {d.index for d in deltas if isinstance(d, ToolCallDelta)} == {0}
    assert finish.reason == "tool_calls" and finish.input_tokens == 999 and finish.output_tokens == 7  # no usage sent
    output = assemble(deltas, finish)[-1]["response"]["output"]
    assert len(output) == 1 and output[0]["call_id"].startswith("call__0_read_file")
    text, text_finish = decode("llamacpp-text.sse")
    assert all(isinstance(d, TextDelta) for d in text) and text_finish.reason == "length"
    assert assemble(text, text_finish)[-1]["type"] == "response.incomplete"


class _Reply:
    def __init__(self, status: int, body: object) -> None:
        import httpx

        self.response = httpx.Response(status, json=body)


def test_upstream_errors_map_to_client_errors_or_engine_failures():
    from loopway.engines.base import EngineError
    from loopway.engines.upstream.replica import upstream_error
    from loopway.protocol.errors import ApiError

    bad = upstream_error(
        _Reply(
            400,
            {
                "error": {
                    "message": "too long",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            },
        ).response
    )
    assert isinstance(bad, ApiError) and (bad.status, bad.code, bad.param) == (400, "context_length_exceeded", "messages")
    limited = upstream_error(_Reply(429, {"error": "slow down"}).response)
    assert isinstance(limited, ApiError) and limited.status == 429 and "slow down" in limited.message
    for status in (401, 403, 500, 503):
        assert isinstance(upstream_error(_Reply(status, {"error": {"message": "x"}}).response), EngineError)


NAMESPACED = parse_tools(
    [
        {"type": "function", "name": "spawn_agent", "parameters": {"type": "object", "properties": {}}},
        {
            "type": "namespace",
            "name": "multi_agent_v1",
            "description": "Sub-agents",
            "tools": [{"type": "function", "name": "spawn_agent", "parameters": {"type": "object", "properties": {}}}],
        },
    ]
)


def test_namespaced_tools_go_upstream_under_unique_flat_names_and_come_back_with_their_namespace():
    items = [
        Message(role="user", content="spawn one"),
        FunctionCall(call_id="c1", name="spawn_agent", arguments="{}", namespace="multi_agent_v1"),
        FunctionCallOutput(call_id="c1", output="started"),
    ]
    body = body_of(request(items, tools=NAMESPACED), "m")
    assert [t["function"]["name"] for t in body["tools"]] == ["spawn_agent", "multi_agent_v1__spawn_agent"]
    assert body["messages"][2]["tool_calls"][0]["function"]["name"] == "multi_agent_v1__spawn_agent"
    decoder = ChunkDecoder(ToolNames(NAMESPACED.functions))
    call = {"index": 0, "id": "c2", "function": {"name": "multi_agent_v1__spawn_agent", "arguments": "{}"}}
    (delta,) = decoder.feed({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
    assert (delta.namespace, delta.name) == ("multi_agent_v1", "spawn_agent")
    plain = {"index": 1, "id": "c3", "function": {"name": "spawn_agent", "arguments": "{}"}}
    (delta,) = decoder.feed({"choices": [{"index": 0, "delta": {"tool_calls": [plain]}}]})
    assert (delta.namespace, delta.name) == (None, "spawn_agent")


def test_flat_names_stay_within_the_chat_completions_limits():
    long = parse_tools([{"type": "namespace", "name": "n" * 40, "tools": [{"type": "function", "name": "f" * 40}]}])
    flat = ToolNames(long.functions).flat("n" * 40, "f" * 40)
    assert len(flat) <= 64 and ToolNames(long.functions).original(flat) == ("n" * 40, "f" * 40)


@pytest.mark.parametrize(
    ("fixture", "field", "reasoning", "answer"),
    [
        ("vllm-reasoning-content.sse", "reasoning_content", "The user wants the file read.", None),
        ("vllm-gpt-oss-reasoning.sse", "reasoning", "We have the output; answer briefly.", "It prints hi."),
        ("llamacpp-deepseek-reasoning.sse", "reasoning_content", "Two plus two is four.", "4"),
    ],
)
def test_upstream_reasoning_streams_become_a_reasoning_item(fixture: str, field: str, reasoning: str, answer: str | None):
    decoder = ChunkDecoder()
    deltas: list = []
    for line in (FIXTURES / fixture).read_text().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            deltas += decoder.feed(json.loads(line[6:]))
    finish = decoder.finish(999, lambda: 7, lambda: 3)
    assert decoder.reasoning_field == field
    events = assemble(deltas, finish)
    response = events[-1]["response"]
    thought = response["output"][0]
    assert thought["type"] == "reasoning" and thought["content"][0]["text"] == reasoning
    if answer is not None:
        assert response["output"][1]["content"][0]["text"] == answer
    assert response["usage"]["output_tokens_details"]["reasoning_tokens"] in (8, 3)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning", None])
def test_earlier_reasoning_goes_back_on_the_assistant_message_it_preceded(field: str | None):
    items = [
        Message(role="user", content="read a.py"),
        Reasoning(id="rs_1", summary=[], content=[ReasoningText(text="Read it first.")]),
        FunctionCall(call_id="c1", name="read_file", arguments='{"path":"a.py"}'),
        FunctionCallOutput(call_id="c1", output="print('hi')"),
        Reasoning(id="rs_2", summary=[SummaryText(text="Now answer.")]),
        Message(role="assistant", content="It prints hi."),
    ]
    messages = messages_of(None, items, reasoning_field=field)
    assistant = [m for m in messages if m["role"] == "assistant"]
    if field is None:
        assert all("reasoning_content" not in m and "reasoning" not in m for m in assistant)
    else:
        assert [m.get(field) for m in assistant] == ["Read it first.", "Now answer."]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]


def test_mcp_calls_go_upstream_as_tool_calls_under_flat_names():
    """A server's tools go up as ``label__tool``; a call loopway ran goes as the call and its
    answer (its error, when it failed), in Chat Completions and in a Responses upstream alike."""
    from loopway.engines.upstream.engines import responses_body
    from loopway.protocol.items import McpApprovalRequest, McpCall, McpListedTool, McpListTools
    from loopway.protocol.tools import FunctionTool

    listed = McpListTools(server_label="docs", tools=[McpListedTool(name="search", input_schema={"type": "object"})])
    ran = McpCall(id="mcp_1", server_label="docs", name="search", arguments='{"q":"x"}', output="found it")
    failed = McpCall(
        id="mcp_2",
        server_label="docs",
        name="search",
        arguments="{}",
        error={"type": "http_error", "code": 500, "message": "down"},
    )
    asked = McpApprovalRequest(id="mcpr_1", server_label="docs", name="search", arguments="{}")
    items = [Message(role="user", content="find x"), listed, ran, failed, asked]
    search = FunctionTool(name="search", parameters={"type": "object"}, namespace="docs", mcp=True)
    tools = msgspec.structs.replace(TOOLS, functions=[*TOOLS.functions, search])
    chat = body_of(request(items, tools=tools), "m")
    assert "docs__search" in [t["function"]["name"] for t in chat["tools"]]
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant", "tool", "assistant", "tool"]
    assert chat["messages"][2]["tool_calls"][0]["function"] == {"name": "docs__search", "arguments": '{"q":"x"}'}
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "mcp_1", "content": "found it"}
    assert json.loads(chat["messages"][5]["content"]) == {"error": {"type": "http_error", "code": 500, "message": "down"}}
    responses = responses_body(request(items, tools=tools), "m")
    assert [i["type"] for i in responses["input"]] == [
        "message",
        "function_call",
        "function_call_output",
        "function_call",
        "function_call_output",
    ]
    assert responses["input"][1]["name"] == "docs__search" and "docs__search" in [t["name"] for t in responses["tools"]]
    assert ToolNames(tools.functions).original("docs__search") == ("docs", "search")
