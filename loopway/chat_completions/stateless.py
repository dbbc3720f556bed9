"""The sim engine as a Chat Completions server: a stateless request straight to the engine.

No conversation state, no store: each request is rendered and generated as it comes, with the
engine's own prefix cache deciding ``cached_tokens``, as a vLLM server does. ``prepare`` is pure
(parse, validate, render), so a transport can run it off the loop for a large body. ``ChunkEncoder`` turns
deltas into ``chat.completion.chunk`` objects as vLLM streams them: the role first, content and
``reasoning_content`` deltas, tool calls by their own index (0, 1, … among calls) with id and name
on their first piece, ``finish_reason`` on the last choice chunk, and usage
(``prompt_tokens_details.cached_tokens``) in a last chunk with no choices when
``stream_options.include_usage`` asks for it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from loopway.core.context.conversation import Conversation
from loopway.engines.base import Delta, Engine, EngineRequest, Finish, ReasoningDelta, TextDelta, ToolCallDelta, find_model
from loopway.protocol.bounds import JsonBounds
from loopway.protocol.chat_request import ChatRequest, parse_chat
from loopway.protocol.errors import invalid_request, model_not_found, server_error
from loopway.protocol.items import FunctionCallOutput
from loopway.protocol.request import decode_json
from loopway.tokens.render import Renderer


class ChatCompletions:
    def __init__(self, engine: Engine, renderer: Renderer | None = None) -> None:
        self.engine = engine
        self.renderer = renderer or Renderer()

    def prepare(self, body: bytes, limits: JsonBounds) -> tuple[ChatRequest, EngineRequest]:
        """A request body, decoded within ``limits``, validated and rendered for the engine."""
        chat = parse_chat(decode_json(body, limits), limits)
        return chat, self.engine_request(chat)

    def engine_request(self, chat: ChatRequest) -> EngineRequest:
        info = find_model(self.engine, chat.model)
        if info is None:
            raise model_not_found(chat.model)
        conversation = Conversation.start(self.renderer, chat.instructions, chat.tools, chat.items)
        for item in chat.items:
            if isinstance(item, FunctionCallOutput) and not conversation.has_call(item.call_id):
                raise invalid_request(
                    f"A 'tool' message must answer a tool call of an earlier assistant message: no call {item.call_id!r}.",
                    param="messages",
                    code="tool_call_not_found",
                )
        if len(conversation.tokens) > info.context_window:
            raise invalid_request(
                f"This model's maximum context length is {info.context_window} tokens; the messages hold "
                f"{len(conversation.tokens)}.",
                param="messages",
                code="context_length_exceeded",
            )
        return EngineRequest(
            model=chat.model,
            tokens=conversation.tokens,
            known_prefix=0,
            items=conversation.items,
            instructions=chat.instructions,
            tools=chat.tools,
            tool_choice=chat.tool_choice,
            parallel_tool_calls=chat.parallel_tool_calls,
            max_output_tokens=chat.max_output_tokens,
            json_schema=chat.json_schema,
            temperature=chat.temperature,
            top_p=chat.top_p,
            reasoning_effort=chat.reasoning_effort,
        )

    async def chunks(self, chat: ChatRequest, request: EngineRequest) -> AsyncIterator[dict[str, Any]]:
        """The streamed answer; raises ``ApiError`` before the first chunk when the engine refuses it."""
        deltas = await self.engine.open(request)
        return self._stream(ChunkEncoder(chat.model), deltas, chat.include_usage)

    async def _stream(
        self, encoder: ChunkEncoder, deltas: AsyncIterator[Delta], include_usage: bool
    ) -> AsyncIterator[dict[str, Any]]:
        opened = False
        async for delta in deltas:
            if not opened:  # after the prefill, with the first token, as vLLM sends it: its time is TTFT
                yield encoder.opening()
                opened = True
            chunk = encoder.feed(delta)
            if chunk is not None:
                yield chunk
        if include_usage and encoder.finish is not None:
            yield encoder.usage_chunk()

    async def complete(self, chat: ChatRequest, request: EngineRequest) -> dict[str, Any]:
        encoder = ChunkEncoder(chat.model)
        async for delta in await self.engine.open(request):
            encoder.feed(delta)
        return encoder.completion()


def usage_of(finish: Finish) -> dict[str, Any]:
    return {
        "prompt_tokens": finish.input_tokens,
        "completion_tokens": finish.output_tokens,
        "total_tokens": finish.input_tokens + finish.output_tokens,
        "prompt_tokens_details": {"cached_tokens": finish.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": finish.reasoning_tokens},
    }


class ChunkEncoder:
    """Engine deltas → ``chat.completion.chunk`` dicts (streaming), or one ``chat.completion``."""

    def __init__(self, model: str) -> None:
        self.id = "chatcmpl-" + secrets.token_hex(16)
        self.model = model
        self.created = int(time.time())
        self._calls: dict[int, int] = {}  # the engine's output index → the call's index among calls
        self.text: list[str] = []
        self.thought: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.finish: Finish | None = None

    def _object(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, **fields}

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._object("chat.completion.chunk", choices=[choice])

    def opening(self) -> dict[str, Any]:
        return self._chunk({"role": "assistant", "content": ""})

    def feed(self, delta: Delta) -> dict[str, Any] | None:
        if isinstance(delta, TextDelta):
            self.text.append(delta.text)
            return self._chunk({"content": delta.text})
        if isinstance(delta, ReasoningDelta):
            if delta.summary:
                return None  # Chat Completions has no summaries; the raw reasoning went out already
            self.thought.append(delta.text)
            return self._chunk({"reasoning_content": delta.text})
        if isinstance(delta, ToolCallDelta):
            return self._chunk({"tool_calls": [self._call(delta)]})
        self.finish = delta
        return self._chunk({}, delta.reason)

    def _call(self, delta: ToolCallDelta) -> dict[str, Any]:
        index = self._calls.get(delta.index)
        if index is None:
            index = self._calls[delta.index] = len(self._calls)
            call_id = delta.call_id or "call_" + secrets.token_hex(12)  # the sim's own calls come without one
            function = {"name": delta.name, "arguments": delta.arguments}
            self.tool_calls.append({"id": call_id, "type": "function", "function": dict(function)})
            return {"index": index, "id": call_id, "type": "function", "function": function}
        self.tool_calls[index]["function"]["arguments"] += delta.arguments
        return {"index": index, "function": {"arguments": delta.arguments}}

    def usage_chunk(self) -> dict[str, Any]:
        assert self.finish is not None
        return self._object("chat.completion.chunk", choices=[], usage=usage_of(self.finish))

    def completion(self) -> dict[str, Any]:
        """The whole answer, for ``stream: false``, once every delta was fed."""
        if self.finish is None:
            raise server_error("The model ended without finishing the answer.")
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.text) or None, "refusal": None}
        if self.thought:
            message["reasoning_content"] = "".join(self.thought)
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish.reason}
        return self._object("chat.completion", choices=[choice], usage=usage_of(self.finish))
