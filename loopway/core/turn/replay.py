"""The event stream of a finished response, rebuilt from the response itself.

``GET /v1/responses/{id}?stream=true`` replays a stored response. Background responses keep
their original events; for the others the response's items are fed back through the
``EventAssembler`` that streamed them live, one delta per part, with the same item ids, so a
replay has the live stream's events in the live stream's order: the order is written once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from loopway.core.turn.assembler import EventAssembler
from loopway.engines.base import ReasoningDelta, TextDelta, ToolCallDelta
from loopway.protocol import response as wire
from loopway.protocol.events import Event
from loopway.protocol.items import (
    FunctionCall,
    McpApprovalRequest,
    McpCall,
    McpListTools,
    Message,
    OutputText,
    Reasoning,
)
from loopway.protocol.response import OutputItem, Response, Usage


def stored_replay(kept: bytes | None, response: bytes, starting_after: int) -> AsyncIterator[Event | dict[str, Any]]:
    """What ``GET …?stream=true`` sends for a stored response: the events it kept (a background
    response's, as JSON), else its events rebuilt; those numbered after ``starting_after``."""
    events: list[Any] = msgspec.json.decode(kept) if kept is not None else rebuild_events(wire.decode(response))
    return _after(events, starting_after)


async def _after(events: list[Any], starting_after: int) -> AsyncIterator[Event | dict[str, Any]]:
    for event in events:
        number = event.get("sequence_number", -1) if isinstance(event, dict) else event.sequence_number
        if isinstance(number, int) and number > starting_after:
            yield event


def rebuild_events(response: Response) -> list[Event]:
    opening = msgspec.structs.replace(
        response, status="in_progress", output=[], usage=Usage(), completed_at=None, error=None, incomplete_details=None
    )
    assembler = EventAssembler(opening)
    events = assembler.opening()
    for item in response.output:
        events += _replayed(assembler, item)
    if response.status in ("completed", "incomplete", "failed"):  # a cancelled response just stops
        events.append(assembler.end_as(response))
    return events


def _replayed(a: EventAssembler, item: OutputItem) -> list[Event]:
    """One finished item, fed as the engine (or the MCP round) produced it."""
    a.name_next_item(item.id)
    if isinstance(item, Message):
        return _message(a, item)
    if isinstance(item, Reasoning):
        return _reasoning(a, item)
    if isinstance(item, (FunctionCall, McpCall, McpApprovalRequest)):
        return _call(a, item)
    if isinstance(item, McpListTools):
        events, listed, index = a.mcp_list_started(item.server_label)
        return events + a.mcp_list_finished(listed, index, item.tools, item.error)
    a.name_next_item(None)
    return a.add_item(item)  # compaction: whole, as live


def _message(a: EventAssembler, item: Message) -> list[Event]:
    parts = [OutputText(text=item.content)] if isinstance(item.content, str) else item.content
    text = "".join(part.text for part in parts if isinstance(part, OutputText))
    return a.feed(TextDelta(text=text)) + a.close_open_item(item.status or "completed")


def _reasoning(a: EventAssembler, item: Reasoning) -> list[Event]:
    a.seal = (lambda _: item.encrypted_content) if item.encrypted_content is not None else None
    events = a.open_reasoning()
    for part in item.content or []:
        events += a.feed(ReasoningDelta(text=part.text))
    for summary in item.summary:
        events += a.feed(ReasoningDelta(text=summary.text, summary=True)) + a.next_summary_part()
    return events + a.close_open_item(item.status or "completed")


def _call(a: EventAssembler, item: FunctionCall | McpCall | McpApprovalRequest) -> list[Event]:
    kind = "function" if isinstance(item, FunctionCall) else "mcp_call" if isinstance(item, McpCall) else "mcp_approval"
    label = "" if isinstance(item, FunctionCall) else item.server_label
    a.call_kind = lambda _namespace, _name: (kind, label)
    call_id = item.call_id if isinstance(item, FunctionCall) else None
    namespace = item.namespace if isinstance(item, FunctionCall) else None
    delta = ToolCallDelta(index=0, arguments=item.arguments, call_id=call_id, name=item.name, namespace=namespace)
    events = a.feed(delta) + a.close_open_item(getattr(item, "status", None) or "completed")
    if isinstance(item, McpCall):
        opened = a.response.output[-1]
        assert isinstance(opened, McpCall)
        events += a.mcp_call_finished(opened, len(a.response.output) - 1, item.output, item.error)
    return events
