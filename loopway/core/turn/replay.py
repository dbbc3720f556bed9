"""The event stream of a finished response, rebuilt from the response itself.

``GET /v1/responses/{id}?stream=true`` replays a stored response. Background responses keep
their original events; for the others loopway rebuilds the canonical sequence (one delta per
content part) with the same item ids and final content, numbered from 0.
"""

from __future__ import annotations

import msgspec

from loopway.core.turn.assembler import EventAssembler
from loopway.protocol.events import (
    ContentPartAdded,
    ContentPartDone,
    Event,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    OutputItemAdded,
    OutputItemDone,
    OutputTextDelta,
    OutputTextDone,
    ReasoningSummaryPartAdded,
    ReasoningSummaryPartDone,
    ReasoningSummaryTextDelta,
    ReasoningSummaryTextDone,
    ReasoningTextDelta,
    ReasoningTextDone,
    ResponseCompleted,
    ResponseFailed,
    ResponseIncomplete,
)
from loopway.protocol.items import FunctionCall, Message, OutputText, Reasoning, ReasoningText, SummaryText
from loopway.protocol.response import Response, Usage

_TERMINAL = {"completed": ResponseCompleted, "incomplete": ResponseIncomplete, "failed": ResponseFailed}


def _item_events(index: int, item: object) -> list[Event]:
    if isinstance(item, Message):
        opened = msgspec.structs.replace(item, content=[], status="in_progress")
        events: list[Event] = [OutputItemAdded(output_index=index, item=opened)]
        parts = [OutputText(text=item.content)] if isinstance(item.content, str) else item.content
        for c, part in enumerate(parts):
            text = part.text if isinstance(part, OutputText) else ""
            events += [
                ContentPartAdded(item_id=item.id or "", output_index=index, content_index=c, part=OutputText(text="")),
                OutputTextDelta(item_id=item.id or "", output_index=index, content_index=c, delta=text),
                OutputTextDone(item_id=item.id or "", output_index=index, content_index=c, text=text),
                ContentPartDone(item_id=item.id or "", output_index=index, content_index=c, part=part),
            ]
        return events + [OutputItemDone(output_index=index, item=item)]
    if isinstance(item, Reasoning):
        return _reasoning_events(index, item)
    if isinstance(item, FunctionCall):
        opened = msgspec.structs.replace(item, arguments="", status="in_progress")
        return [
            OutputItemAdded(output_index=index, item=opened),
            FunctionCallArgumentsDelta(item_id=item.id or "", output_index=index, delta=item.arguments),
            FunctionCallArgumentsDone(item_id=item.id or "", output_index=index, name=item.name, arguments=item.arguments),
            OutputItemDone(output_index=index, item=item),
        ]
    return [OutputItemAdded(output_index=index, item=item), OutputItemDone(output_index=index, item=item)]


def _reasoning_events(index: int, item: Reasoning) -> list[Event]:
    rid = item.id or ""
    opened = msgspec.structs.replace(item, summary=[], content=None, encrypted_content=None, status="in_progress")
    events: list[Event] = [OutputItemAdded(output_index=index, item=opened)]
    for c, part in enumerate(item.content or []):
        events += [
            ContentPartAdded(item_id=rid, output_index=index, content_index=c, part=ReasoningText(text="")),
            ReasoningTextDelta(item_id=rid, output_index=index, content_index=c, delta=part.text),
            ReasoningTextDone(item_id=rid, output_index=index, content_index=c, text=part.text),
            ContentPartDone(item_id=rid, output_index=index, content_index=c, part=part),
        ]
    for n, summary in enumerate(item.summary):
        events += [
            ReasoningSummaryPartAdded(item_id=rid, output_index=index, summary_index=n, part=SummaryText(text="")),
            ReasoningSummaryTextDelta(item_id=rid, output_index=index, summary_index=n, delta=summary.text),
            ReasoningSummaryTextDone(item_id=rid, output_index=index, summary_index=n, text=summary.text),
            ReasoningSummaryPartDone(item_id=rid, output_index=index, summary_index=n, part=summary),
        ]
    return events + [OutputItemDone(output_index=index, item=item)]


def rebuild_events(response: Response) -> list[Event]:
    final = response
    opening = msgspec.structs.replace(
        response, status="in_progress", output=[], usage=Usage(), completed_at=None, error=None, incomplete_details=None
    )
    numbering = EventAssembler(opening)
    events = numbering.opening()
    for index, item in enumerate(final.output):
        events += [numbering.stamp(e) for e in _item_events(index, item)]
    if final.status in _TERMINAL:  # a cancelled response just stops
        events.append(numbering.stamp(_TERMINAL[final.status](response=final)))
    return events
