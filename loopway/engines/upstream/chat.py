"""Responses ↔ Chat Completions, both ways, as pure functions and a chunk decoder (sans-I/O).

Outbound: instructions become the system message; items become messages (consecutive function
calls fold into one assistant message's ``tool_calls``; outputs become ``tool`` messages); function
tools, ``tool_choice``, parallel calls, ``json_schema`` formats and ``max_output_tokens`` map to
their Chat Completions fields. Inbound: streamed chunks become engine deltas; tool-call deltas stay
keyed by their index and keep the upstream ``call_id``; finish reasons map to ``stop``, ``length``,
``tool_calls`` or ``content_filter``; usage (cached tokens included) comes from the usage chunk.
"""

from __future__ import annotations

from typing import Any

from loopway.engines.base import Delta, EngineRequest, Finish, TextDelta, ToolCallDelta
from loopway.protocol.items import (
    FunctionCall,
    FunctionCallOutput,
    InputFile,
    InputImage,
    InputText,
    Message,
    OutputText,
    Refusal,
    text_of,
)

_FINISH = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def _content(content: Any) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not any(isinstance(p, (InputImage, InputFile)) for p in content):
        return text_of(content)
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, (InputText, OutputText)):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, Refusal):
            parts.append({"type": "text", "text": part.refusal})
        elif isinstance(part, InputImage) and part.image_url:
            parts.append({"type": "image_url", "image_url": {"url": part.image_url, "detail": part.detail}})
        elif isinstance(part, InputFile) and part.file_data:
            parts.append({"type": "file", "file": {"file_data": part.file_data, "filename": part.filename}})
    return parts


def messages_of(instructions: str | None, items: Any) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        if isinstance(item, Message):
            role = "system" if item.role == "developer" else item.role
            messages.append({"role": role, "content": _content(item.content)})
        elif isinstance(item, FunctionCall):
            call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant" and isinstance(last.get("content"), str):
                last["tool_calls"] = [call]
            else:  # "" rather than null: llama-cpp-python refuses a null content and its templates need one
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutput):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": text_of(item.output)})
        # Reasoning and hosted-tool items have no Chat Completions form; the upstream does not see them.
    return messages


def _tool_choice(request: EngineRequest) -> Any:
    choice = request.tool_choice
    if choice.names is not None and len(choice.names) == 1 and choice.mode == "required":
        return {"type": "function", "function": {"name": choice.names[0]}}
    return choice.mode


def body_of(request: EngineRequest, upstream_model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": messages_of(request.instructions, request.items),
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": request.temperature,
        "top_p": request.top_p,
    }
    names = request.tool_choice.names
    functions = [t for t in request.tools.functions if names is None or t.name in names]
    if functions and request.tool_choice.mode != "none":
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    k: v
                    for k, v in {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters or {"type": "object", "properties": {}},
                        "strict": t.strict,
                    }.items()
                    if v is not None
                },
            }
            for t in functions
        ]
        body["tool_choice"] = _tool_choice(request)
        body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.json_schema is not None:
        schema = request.json_schema
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": schema.name, "schema": schema.schema, "strict": bool(schema.strict)},
        }
    if request.max_output_tokens is not None:
        body["max_tokens"] = request.max_output_tokens
    return body


class ChunkDecoder:
    """Chat Completions stream chunks → engine deltas; ``finish`` once the stream has ended."""

    def __init__(self) -> None:
        self.reason = "stop"
        self.finished = False  # a finish_reason arrived: the upstream ended the answer on purpose
        self.usage: dict[str, Any] | None = None
        self.output_chars = 0

    def feed(self, chunk: dict[str, Any]) -> list[Delta]:
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        deltas: list[Delta] = []
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self.output_chars += len(delta["content"])
                deltas.append(TextDelta(delta["content"]))
            for call in delta.get("tool_calls") or []:
                function = call.get("function") or {}
                arguments = function.get("arguments") or ""
                self.output_chars += len(arguments)
                deltas.append(
                    ToolCallDelta(
                        index=int(call.get("index", 0)),
                        arguments=arguments,
                        call_id=call.get("id"),
                        name=function.get("name"),
                    )
                )
            if choice.get("finish_reason"):
                self.reason = _FINISH.get(choice["finish_reason"], "stop")
                self.finished = True
        return deltas

    def finish(self, prompt_tokens: int, count_output: Any) -> Finish:
        """The Finish delta; without upstream usage, tokens are counted here (o200k_base)."""
        usage = self.usage or {}
        details = usage.get("prompt_tokens_details") or {}
        output_details = usage.get("completion_tokens_details") or {}
        return Finish(
            reason=self.reason,  # type: ignore[arg-type]
            input_tokens=int(usage.get("prompt_tokens", prompt_tokens)),
            cached_tokens=int(details.get("cached_tokens") or 0),
            output_tokens=int(usage["completion_tokens"]) if "completion_tokens" in usage else count_output(),
            reasoning_tokens=int(output_details.get("reasoning_tokens") or 0),
        )
