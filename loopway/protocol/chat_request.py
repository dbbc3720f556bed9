"""Chat Completions requests in, as the parts of a Responses request.

The sim engine answers ``POST /v1/chat/completions`` so a few sim processes can stand in for a
fleet of vLLM servers (and other gateways can use loopway as a deterministic engine). A request
becomes what a Responses request would have been: leading system/developer messages the
instructions, messages and tool calls the items, ``tools`` the function tools; then the parsers
of the Responses API validate it, so both APIs refuse the same things the same way.
(``chat_completions.stateless`` answers with chunks.)
"""

from __future__ import annotations

from typing import Any

import msgspec

from loopway.protocol import bounds
from loopway.protocol.bounds import DEFAULT_BOUNDS, JsonBounds
from loopway.protocol.errors import invalid_request
from loopway.protocol.items import Item, parse_input
from loopway.protocol.request import JsonSchemaFormat
from loopway.protocol.tools import ToolChoice, ToolSet, parse_tool_choice, parse_tools


class ChatBody(msgspec.Struct, kw_only=True):
    """The fields the sim reads; others (``seed``, ``user``, penalties) are accepted and ignored."""

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool = True
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None


class ChatRequest(msgspec.Struct, kw_only=True):
    model: str
    instructions: str | None
    items: list[Item]
    tools: ToolSet
    tool_choice: ToolChoice
    parallel_tool_calls: bool
    stream: bool
    include_usage: bool
    max_output_tokens: int | None
    json_schema: JsonSchemaFormat | None
    temperature: float
    top_p: float
    reasoning_effort: str | None


def parse_chat(raw: Any, limits: JsonBounds = DEFAULT_BOUNDS) -> ChatRequest:
    bounds.check_input_items(raw, limits, field="messages")
    try:
        body = msgspec.convert(raw, ChatBody)
    except msgspec.ValidationError as exc:
        raise invalid_request(f"Invalid request: {exc}", code="invalid_value") from None
    if body.n != 1:
        raise invalid_request("Only n=1 is supported.", param="n", code="invalid_value")
    if not body.messages:
        raise invalid_request("'messages' must hold at least one message.", param="messages", code="empty_array")
    instructions, items = _input_of(body.messages)
    tools = parse_tools([_responses_tool(t, i) for i, t in enumerate(body.tools or [])])
    choice = body.tool_choice
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        choice = {"type": "function", "name": choice["function"].get("name")}
    limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if limit is not None and limit < 1:
        raise invalid_request("'max_tokens' must be at least 1.", param="max_tokens", code="invalid_value")
    return ChatRequest(
        model=body.model,
        instructions=instructions,
        items=parse_input(items, "messages"),
        tools=tools,
        tool_choice=parse_tool_choice(choice if choice is not None else "auto", tools),
        parallel_tool_calls=body.parallel_tool_calls,
        stream=body.stream,
        include_usage=bool((body.stream_options or {}).get("include_usage")),
        max_output_tokens=limit,
        json_schema=_json_schema(body.response_format),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        reasoning_effort=body.reasoning_effort,
    )


def _input_of(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """Leading system and developer messages → instructions; the rest → Responses input items."""
    leading: list[str] = []
    items: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid_request("Each message must be an object.", param=f"messages[{index}]", code="invalid_type")
        role = message.get("role")
        if role in ("system", "developer") and not items:
            leading.append(_text(message.get("content"), index))
        elif role in ("system", "developer", "user"):
            items.append({"type": "message", "role": role, "content": _parts(message.get("content"), index)})
        elif role == "assistant":
            items += _assistant(message, index)
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                raise invalid_request(
                    "A tool message needs 'tool_call_id'.",
                    param=f"messages[{index}].tool_call_id",
                    code="missing_required_parameter",
                )
            items.append(
                {"type": "function_call_output", "call_id": call_id, "output": _text(message.get("content"), index)}
            )
        else:
            raise invalid_request(f"Unknown message role {role!r}.", param=f"messages[{index}].role", code="invalid_value")
    return ("\n\n".join(leading) if leading else None), items


def _assistant(message: dict[str, Any], index: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    thought = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(thought, str) and thought:
        items.append({"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": thought}]})
    text = _text(message.get("content"), index)
    if text:
        items.append({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]})
    for n, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(call.get("id"), str):
            raise invalid_request(
                "A tool call needs 'id' and 'function'.", param=f"messages[{index}].tool_calls[{n}]", code="invalid_value"
            )
        arguments = function.get("arguments")
        items.append(
            {
                "type": "function_call",
                "call_id": call["id"],
                "name": function.get("name"),
                "arguments": arguments if isinstance(arguments, str) else msgspec.json.encode(arguments or {}).decode(),
            }
        )
    return items


def _text(content: Any, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise invalid_request("Invalid message content.", param=f"messages[{index}].content", code="invalid_type")


def _parts(content: Any, index: int) -> str | list[dict[str, Any]]:
    if not isinstance(content, list):
        return _text(content, index)
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"type": "input_text", "text": part.get("text", "")})
        elif kind == "image_url":
            url = part.get("image_url")
            parts.append({"type": "input_image", "image_url": url.get("url") if isinstance(url, dict) else url})
        else:
            raise invalid_request(
                f"Unsupported content part {kind!r}.", param=f"messages[{index}].content", code="invalid_value"
            )
    return parts


def _responses_tool(tool: Any, index: int) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    if not isinstance(function, dict):
        raise invalid_request(
            "Only function tools are supported: {'type': 'function', 'function': {...}}.",
            param=f"tools[{index}]",
            code="invalid_value",
        )
    return {"type": "function", **function}


def _json_schema(response_format: dict[str, Any] | None) -> JsonSchemaFormat | None:
    if not response_format or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema") or {}
    if not isinstance(spec.get("schema"), dict):
        raise invalid_request(
            "response_format.json_schema needs a 'schema' object.", param="response_format", code="invalid_value"
        )
    return JsonSchemaFormat(name=str(spec.get("name", "response")), schema=spec["schema"], strict=spec.get("strict"))
