"""Server events: the same payloads over SSE and WebSocket, from one encoder.

``stream_id`` is set only for events of a named WebSocket lane and is otherwise absent from the
wire (``UNSET``), as the contract requires of the default lane and of HTTP.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from loopway.protocol.errors import ApiError
from loopway.protocol.items import ContentPart, ReasoningText, SummaryText, encode_hook
from loopway.protocol.response import OutputItem, Response


class Event(msgspec.Struct, gc=False, tag_field="type", kw_only=True):
    sequence_number: int | UnsetType = UNSET
    stream_id: str | UnsetType = UNSET

    @property
    def type(self) -> str:
        return self.__struct_config__.tag  # type: ignore[return-value]


class ResponseEvent(Event, kw_only=True):
    response: Response


class ResponseCreated(ResponseEvent, tag="response.created"):
    pass


class ResponseQueued(ResponseEvent, tag="response.queued"):
    pass


class ResponseInProgress(ResponseEvent, tag="response.in_progress"):
    pass


class ResponseCompleted(ResponseEvent, tag="response.completed"):
    pass


class ResponseIncomplete(ResponseEvent, tag="response.incomplete"):
    pass


class ResponseFailed(ResponseEvent, tag="response.failed"):
    pass


TERMINAL_EVENTS = (ResponseCompleted, ResponseIncomplete, ResponseFailed)


def is_terminal(event: object) -> bool:
    """Whether ``event`` ends its response (exactly one per response does)."""
    return isinstance(event, TERMINAL_EVENTS)


class OutputItemAdded(Event, tag="response.output_item.added", kw_only=True):
    output_index: int
    item: OutputItem


class OutputItemDone(Event, tag="response.output_item.done", kw_only=True):
    output_index: int
    item: OutputItem


class ContentPartAdded(Event, tag="response.content_part.added", kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    part: ContentPart | ReasoningText


class ContentPartDone(Event, tag="response.content_part.done", kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    part: ContentPart | ReasoningText


class OutputTextDelta(Event, tag="response.output_text.delta", kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any] = msgspec.field(default_factory=list)


class OutputTextDone(Event, tag="response.output_text.done", kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any] = msgspec.field(default_factory=list)


class FunctionCallArgumentsDelta(Event, tag="response.function_call_arguments.delta", kw_only=True):
    item_id: str
    output_index: int
    delta: str


class FunctionCallArgumentsDone(Event, tag="response.function_call_arguments.done", kw_only=True):
    item_id: str
    output_index: int
    name: str
    arguments: str


class McpCallArgumentsDelta(Event, tag="response.mcp_call_arguments.delta", kw_only=True):
    item_id: str
    output_index: int
    delta: str


class McpCallArgumentsDone(Event, tag="response.mcp_call_arguments.done", kw_only=True):
    item_id: str
    output_index: int
    arguments: str


class McpItemEvent(Event, kw_only=True):
    """The progress of an MCP call or tool listing: which item, where in the output."""

    item_id: str
    output_index: int


class McpCallInProgress(McpItemEvent, tag="response.mcp_call.in_progress"):
    pass


class McpCallCompleted(McpItemEvent, tag="response.mcp_call.completed"):
    pass


class McpCallFailed(McpItemEvent, tag="response.mcp_call.failed"):
    pass


class McpListToolsInProgress(McpItemEvent, tag="response.mcp_list_tools.in_progress"):
    pass


class McpListToolsCompleted(McpItemEvent, tag="response.mcp_list_tools.completed"):
    pass


class McpListToolsFailed(McpItemEvent, tag="response.mcp_list_tools.failed"):
    pass


class ReasoningTextDelta(Event, tag="response.reasoning_text.delta", kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    delta: str


class ReasoningTextDone(Event, tag="response.reasoning_text.done", kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    text: str


class ReasoningSummaryPartAdded(Event, tag="response.reasoning_summary_part.added", kw_only=True):
    item_id: str
    output_index: int
    summary_index: int
    part: SummaryText


class ReasoningSummaryPartDone(Event, tag="response.reasoning_summary_part.done", kw_only=True):
    item_id: str
    output_index: int
    summary_index: int
    part: SummaryText


class ReasoningSummaryTextDelta(Event, tag="response.reasoning_summary_text.delta", kw_only=True):
    item_id: str
    output_index: int
    summary_index: int
    delta: str


class ReasoningSummaryTextDone(Event, tag="response.reasoning_summary_text.done", kw_only=True):
    item_id: str
    output_index: int
    summary_index: int
    text: str


class StreamError(Event, tag="error", kw_only=True):
    """The SSE ``error`` event (flat, per ``ResponseErrorEvent``)."""

    code: str | None
    message: str
    param: str | None


class WsError(Event, tag="error", kw_only=True):
    """The WebSocket ``error`` event (``ResponseWsError``): nested payload plus HTTP status."""

    status: int
    error: dict[str, Any]

    @classmethod
    def of(cls, err: ApiError, stream_id: str | None = None) -> WsError:
        payload = err.payload() | ({"headers": err.headers} if err.headers else {})
        return cls(status=err.status, error=payload, stream_id=stream_id if stream_id else UNSET)


class SteerRef(msgspec.Struct, gc=False):
    id: str
    previous_response_id: str


class SteerAccepted(Event, tag="response.steer.accepted", kw_only=True):
    steer: SteerRef


class SteerPending(Event, tag="response.steer.pending", kw_only=True):
    steer: SteerRef
    reason: str = "waiting_for_required_input"
    required_input: list[dict[str, Any]] = msgspec.field(default_factory=list)


class SteerFailed(Event, tag="response.steer.failed", kw_only=True):
    steer: dict[str, Any]
    error: dict[str, Any]


_ENCODER = msgspec.json.Encoder(enc_hook=encode_hook)


def encode_event(event: Event) -> bytes:
    """The one JSON encoding of a server event, for SSE ``data:`` lines and WebSocket frames."""
    return _ENCODER.encode(event)


def sse_frame(event: Event) -> bytes:
    """``event:`` + one ``data:`` line, LF only: what strict SSE parsers (Open Responses) need."""
    return b"event: " + event.type.encode() + b"\ndata: " + _ENCODER.encode(event) + b"\n\n"
