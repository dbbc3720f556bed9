"""Responses ↔ Chat Completions, both ways, as pure functions and a chunk decoder (sans-I/O).

Reasoning models stream their thought as ``delta.reasoning_content`` (vLLM's reasoning parsers,
SGLang, llama.cpp, DeepSeek, Qwen3) or ``delta.reasoning`` (newer vLLM, gpt-oss): either becomes
reasoning deltas. Going out, a reasoning item's text goes back on the assistant message that follows
it, in the field the upstream reads (``reasoning_field``; the one it streamed, by default), since
gpt-oss needs its earlier reasoning across tool calls.

Tools declared inside a ``namespace`` tool (Codex's ``multi_agent_v1``) have no namespaces in Chat
Completions: they go upstream under unique flat names (``multi_agent_v1__spawn_agent``), and calls
come back under their own name with their namespace (``ToolNames``).

Outbound: instructions become the system message; items become messages (consecutive function
calls fold into one assistant message's ``tool_calls``; outputs become ``tool`` messages); function
tools, ``tool_choice``, parallel calls, ``json_schema`` formats and ``max_output_tokens`` map to
their Chat Completions fields. Inbound: streamed chunks become engine deltas; tool-call deltas stay
keyed by their index and keep the upstream ``call_id``; finish reasons map to ``stop``, ``length``,
``tool_calls`` or ``content_filter``; usage (cached tokens included) comes from the usage chunk.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from loopway.engines.base import Delta, EngineRequest, Finish, ReasoningDelta, TextDelta, ToolCallDelta
from loopway.protocol.items import (
    FunctionCall,
    FunctionCallOutput,
    InputFile,
    InputImage,
    InputText,
    McpCall,
    Message,
    OutputText,
    Reasoning,
    Refusal,
    text_of,
)
from loopway.protocol.tools import FunctionTool

MAX_TOKEN_COUNT = 1 << 30  # past this an upstream's usage is not a count: loopway's own is used instead


def token_count(value: Any, fallback: Any) -> int:
    """An upstream's token count, when it is one (a whole number from 0 to ``MAX_TOKEN_COUNT``); else
    ``fallback()``, loopway's own count: a hostile or broken upstream's usage never reaches a client."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return fallback()
    if value != value or not 0 <= value <= MAX_TOKEN_COUNT or value != int(value):
        return fallback()
    return int(value)


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


class ToolNames:
    """Flat Chat Completions names for a request's function tools, and the way back."""

    def __init__(self, functions: Sequence[FunctionTool]) -> None:
        self._flat: dict[tuple[str | None, str], str] = {}
        self._back: dict[str, tuple[str | None, str]] = {}
        taken = {t.name for t in functions if t.namespace is None}
        for tool in functions:
            flat = tool.name if tool.namespace is None else _unique(f"{tool.namespace}__{tool.name}", taken)
            taken.add(flat)
            self._flat[(tool.namespace, tool.name)] = flat
            self._back[flat] = (tool.namespace, tool.name)

    def flat(self, namespace: str | None, name: str) -> str:
        return self._flat.get((namespace, name)) or (f"{namespace}__{name}" if namespace else name)

    def original(self, flat: str) -> tuple[str | None, str]:
        return self._back.get(flat, (None, flat))


def _unique(name: str, taken: set[str]) -> str:
    """A Chat Completions function name: at most 64 of ``[A-Za-z0-9_-]``, not already used."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    if len(name) > 64 or name in taken:
        digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
        name = f"{name[:55]}_{digest}"
    return name


REASONING_FIELDS = ("reasoning_content", "reasoning")


def mcp_answer(call: McpCall) -> str:
    """What an MCP call answered, as a tool message's text: its output, or its error."""
    if call.error is not None:
        return msgspec.json.encode({"error": call.error}).decode()
    return call.output or ""


def messages_of(
    instructions: str | None, items: Any, names: ToolNames | None = None, reasoning_field: str | None = "reasoning_content"
) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    thought: str | None = None  # reasoning waiting for the assistant message it preceded
    for item in items:
        if isinstance(item, Reasoning):
            text = "".join(p.text for p in item.content) if item.content else "".join(s.text for s in item.summary)
            thought = (thought or "") + text
            continue
        if isinstance(item, Message):
            role = "system" if item.role == "developer" else item.role
            messages.append({"role": role, "content": _content(item.content)})
        elif isinstance(item, FunctionCall):
            name = names.flat(item.namespace, item.name) if names else item.name
            call = {"id": item.call_id, "type": "function", "function": {"name": name, "arguments": item.arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant" and isinstance(last.get("content"), str):
                last["tool_calls"] = [call]
            else:  # "" rather than null: llama-cpp-python refuses a null content and its templates need one
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutput):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": text_of(item.output)})
        elif isinstance(item, McpCall):  # a call loopway ran: the model's call and the tool's answer
            name = names.flat(item.server_label, item.name) if names else f"{item.server_label}__{item.name}"
            call = {"id": item.id, "type": "function", "function": {"name": name, "arguments": item.arguments}}
            messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            messages.append({"role": "tool", "tool_call_id": item.id, "content": mcp_answer(item)})
        else:  # hosted-tool items have no Chat Completions form; the upstream does not see them
            continue
        last = messages[-1]
        if thought and reasoning_field and last["role"] == "assistant" and reasoning_field not in last:
            last[reasoning_field] = thought
        thought = None
    return messages


def _tool_choice(request: EngineRequest, names: ToolNames) -> Any:
    choice = request.tool_choice
    if choice.names is not None and len(choice.names) == 1 and choice.mode == "required":
        tool = request.tools.function(choice.names[0])
        return {"type": "function", "function": {"name": names.flat(tool.namespace if tool else None, choice.names[0])}}
    return choice.mode


def body_of(
    request: EngineRequest, upstream_model: str, reasoning_field: str | None = "reasoning_content"
) -> dict[str, Any]:
    tool_names = ToolNames(request.tools.functions)
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": messages_of(request.instructions, request.items, tool_names, reasoning_field),
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
                        "name": tool_names.flat(t.namespace, t.name),
                        "description": t.description,
                        "parameters": t.parameters or {"type": "object", "properties": {}},
                        "strict": t.strict,
                    }.items()
                    if v is not None
                },
            }
            for t in functions
        ]
        body["tool_choice"] = _tool_choice(request, tool_names)
        body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.json_schema is not None:
        schema = request.json_schema
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": schema.name, "schema": schema.schema, "strict": bool(schema.strict)},
        }
    if request.max_output_tokens is not None:
        body["max_tokens"] = request.max_output_tokens
    if request.reasoning_effort is not None:
        body["reasoning_effort"] = request.reasoning_effort
    return body


class ChunkDecoder:
    """Chat Completions stream chunks → engine deltas; ``finish`` once the stream has ended."""

    def __init__(self, names: ToolNames | None = None) -> None:
        self.names = names or ToolNames([])
        self.reasoning_field: str | None = None  # which field the upstream streamed its reasoning in
        self.reasoning_chars = 0
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
            for field in REASONING_FIELDS:
                if delta.get(field):
                    self.reasoning_field = field
                    self.reasoning_chars += len(delta[field])
                    deltas.append(ReasoningDelta(delta[field]))
            if delta.get("content"):
                self.output_chars += len(delta["content"])
                deltas.append(TextDelta(delta["content"]))
            for call in delta.get("tool_calls") or []:
                function = call.get("function") or {}
                arguments = function.get("arguments") or ""
                self.output_chars += len(arguments)
                namespace, name = self.names.original(function["name"]) if function.get("name") else (None, None)
                deltas.append(
                    ToolCallDelta(
                        index=int(call.get("index", 0)),
                        arguments=arguments,
                        call_id=call.get("id"),
                        name=name,
                        namespace=namespace,
                    )
                )
            if choice.get("finish_reason"):
                self.reason = _FINISH.get(choice["finish_reason"], "stop")
                self.finished = True
        return deltas

    def finish(self, prompt_tokens: int, count_output: Any, count_reasoning: Any = lambda: 0) -> Finish:
        """The Finish delta; without upstream usage, tokens are counted here (o200k_base)."""
        usage = self.usage or {}
        details = usage.get("prompt_tokens_details") or {}
        output_details = usage.get("completion_tokens_details") or {}
        reasoning = output_details.get("reasoning_tokens") if isinstance(output_details, dict) else None
        details = details if isinstance(details, dict) else {}
        input_tokens = token_count(usage.get("prompt_tokens"), lambda: prompt_tokens)
        return Finish(
            reason=self.reason,  # type: ignore[arg-type]
            input_tokens=input_tokens,
            cached_tokens=min(input_tokens, token_count(details.get("cached_tokens"), lambda: 0)),
            output_tokens=token_count(usage.get("completion_tokens"), count_output),
            reasoning_tokens=token_count(reasoning, count_reasoning),
        )
