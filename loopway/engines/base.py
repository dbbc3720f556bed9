"""The engine interface: token ids and plain structs in, an async stream of deltas out.

An engine never sees a request object, a socket or a header. It is told the rendered tokens of
the whole context and how many of them it has already seen on this conversation
(``known_prefix``), so prefix caching can be exact without re-reading history, and the context's
items, for engines that speak a message API upstream.

``open`` returns once the engine has accepted the request: an upstream that refuses it (a 4xx)
raises ``ApiError`` there, before the client is told a response was created, so the client gets
the matching error instead of a failed response. Closing the returned iterator (or cancelling the
task consuming it) cancels the generation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, Protocol

import msgspec

from loopway.protocol.items import Item
from loopway.protocol.request import JsonSchemaFormat
from loopway.protocol.tools import ToolChoice, ToolSet
from loopway.tokens.sequence import TokenSequence


class EngineRequest(msgspec.Struct, kw_only=True):
    model: str
    tokens: TokenSequence
    known_prefix: int  # tokens of ``tokens`` this conversation already sent to the engine
    items: Sequence[Item]
    known_items: int = 0  # items of ``items`` that the previous response's context already had
    response_id: str = ""
    previous_response_id: str | None = None
    instructions: str | None
    tools: ToolSet
    tool_choice: ToolChoice
    parallel_tool_calls: bool
    max_output_tokens: int | None
    json_schema: JsonSchemaFormat | None
    temperature: float
    top_p: float
    reasoning_effort: str | None = None  # "minimal" … "xhigh"; None: the model's default
    reasoning_summary: str | None = None  # "auto", "concise", "detailed"; None: no summary
    # Where the conversation's prefix is likely cached, for engines with several replicas:
    replica: str | None = None  # the replica that served the previous response
    session: str | None = None  # a WebSocket connection's id: its turns stay on one replica
    route_prefix: int = 0  # tokens of ``tokens`` that identify the conversation (header + first item)


class TextDelta(msgspec.Struct):
    text: str


class ReasoningDelta(msgspec.Struct):
    """A piece of the model's reasoning: its raw text, or (``summary``) its summary for the user."""

    text: str
    summary: bool = False


class ToolCallDelta(msgspec.Struct):
    """A piece of the ``index``-th tool call; ``call_id``, ``name`` (and the ``namespace`` of a tool
    declared inside a namespace tool) come with its first piece."""

    index: int
    arguments: str
    call_id: str | None = None
    name: str | None = None
    namespace: str | None = None


class Finish(msgspec.Struct, kw_only=True):
    reason: Literal["stop", "length", "tool_calls", "content_filter"]
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int = 0
    replica: str | None = None  # which of several upstream replicas served it


Delta = TextDelta | ReasoningDelta | ToolCallDelta | Finish


class ModelInfo(msgspec.Struct):
    id: str
    context_window: int
    created: int = 0
    owned_by: str = "loopway"


class EngineError(Exception):
    """A failure of the engine itself: the response fails with ``server_error``."""

    def __init__(self, message: str, code: str = "server_error") -> None:
        super().__init__(message)
        self.code = code


class ReplicaStatus(msgspec.Struct, frozen=True):
    """One replica of an engine with several, as a dashboard shows it."""

    name: str
    healthy: bool
    in_flight: int


class Engine(Protocol):
    def models(self) -> list[ModelInfo]: ...

    def replicas(self) -> list[ReplicaStatus]:
        """The engine's replicas when it has several (an upstream fleet); empty otherwise."""
        ...

    async def open(self, request: EngineRequest) -> AsyncIterator[Delta]: ...

    def start(self) -> None:
        """Called once the event loop runs (background work such as health probes starts here)."""
        ...

    async def aclose(self) -> None: ...


def find_model(engine: Engine, model: str) -> ModelInfo | None:
    for info in engine.models():
        if info.id == model:
            return info
    return None


def describe(info: ModelInfo) -> dict[str, Any]:
    return {"id": info.id, "object": "model", "created": info.created, "owned_by": info.owned_by}
