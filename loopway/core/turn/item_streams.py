"""The item now streaming, of each kind: what its deltas add and how it closes (sans-I/O).

``EventAssembler`` opens an item and feeds it; the item's own class says which events its pieces
are. ``stamp`` is the assembler's, so the numbering stays one sequence.

A message: ``content_part.added`` → ``output_text.delta``… → ``output_text.done`` →
``content_part.done``. A function call: ``function_call_arguments.delta``… → ``.done``; an MCP
call: ``mcp_call_arguments.delta``… → ``.done``, its ``output_item.done`` once it has run; an
approval request: its arguments whole. A reasoning item: ``content_part.added`` (``reasoning_text``) →
``reasoning_text.delta``… → ``reasoning_text.done`` → ``content_part.done``, then for each summary
part ``reasoning_summary_part.added`` → ``reasoning_summary_text.delta``… → ``.done`` →
``reasoning_summary_part.done``.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from loopway.engines.base import ReasoningDelta
from loopway.protocol.events import (
    ContentPartAdded,
    ContentPartDone,
    Event,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    McpCallArgumentsDelta,
    McpCallArgumentsDone,
    OutputItemDone,
    OutputTextDelta,
    OutputTextDone,
    ReasoningSummaryPartAdded,
    ReasoningSummaryPartDone,
    ReasoningSummaryTextDelta,
    ReasoningSummaryTextDone,
    ReasoningTextDelta,
    ReasoningTextDone,
)
from loopway.protocol.items import (
    FunctionCall,
    McpApprovalRequest,
    McpCall,
    Message,
    OutputText,
    Reasoning,
    ReasoningText,
    SummaryText,
)

Stamp = Callable[[Event], Event]
_ARGUMENTS_DELTA = {FunctionCall: FunctionCallArgumentsDelta, McpCall: McpCallArgumentsDelta}


class OpenText:
    def __init__(self, item: Message, index: int, stamp: Stamp) -> None:
        self.item, self.index, self._stamp = item, index, stamp
        self.chunks: list[str] = []

    def feed(self, text: str) -> list[Event]:
        self.chunks.append(text)
        return [self._stamp(OutputTextDelta(item_id=self.item.id, output_index=self.index, content_index=0, delta=text))]

    def close(self, status: str) -> list[Event]:
        item, index = self.item, self.index
        text = "".join(self.chunks)
        part = OutputText(text=text)
        item.content = [part]
        item.status = status
        return [
            self._stamp(OutputTextDone(item_id=item.id, output_index=index, content_index=0, text=text)),
            self._stamp(ContentPartDone(item_id=item.id, output_index=index, content_index=0, part=part)),
            self._stamp(OutputItemDone(output_index=index, item=msgspec.structs.replace(item))),
        ]


class OpenCall:
    """A tool call of the model; ``engine_index`` is the engine's number for it (parallel calls)."""

    def __init__(self, item: FunctionCall | McpCall | McpApprovalRequest, index: int, engine_index: int, stamp: Stamp):
        self.item, self.index, self.engine_index, self._stamp = item, index, engine_index, stamp
        self.chunks: list[str] = []

    def feed(self, arguments: str) -> list[Event]:
        self.chunks.append(arguments)
        streamed = _ARGUMENTS_DELTA.get(type(self.item))  # an approval request's arguments come whole
        if streamed is None:
            return []
        return [self._stamp(streamed(item_id=self.item.id or "", output_index=self.index, delta=arguments))]

    def close(self, status: str) -> list[Event]:
        item, index = self.item, self.index
        item.arguments = "".join(self.chunks)
        if isinstance(item, McpApprovalRequest):
            return [self._stamp(OutputItemDone(output_index=index, item=msgspec.structs.replace(item)))]
        if isinstance(item, McpCall):  # done once it has run (``EventAssembler.mcp_call_finished``)
            return [self._stamp(McpCallArgumentsDone(item_id=item.id or "", output_index=index, arguments=item.arguments))]
        item.status = status
        done = FunctionCallArgumentsDone(item_id=item.id, output_index=index, name=item.name, arguments=item.arguments)
        return [self._stamp(done), self._stamp(OutputItemDone(output_index=index, item=msgspec.structs.replace(item)))]


class OpenReasoning:
    def __init__(self, item: Reasoning, index: int, stamp: Stamp) -> None:
        self.item, self.index, self._stamp = item, index, stamp
        self.text: list[str] | None = None  # the reasoning text part, while it is open
        self.summary: list[str] | None = None  # the summary part now streaming

    def feed(self, delta: ReasoningDelta) -> list[Event]:
        return self._summary(delta.text) if delta.summary else self._text(delta.text)

    def _text(self, text: str) -> list[Event]:
        events: list[Event] = []
        item_id, index = self.item.id or "", self.index
        if self.text is None:
            events += self.end_summary_part()
            self.text = []
            part = ReasoningText(text="")
            events.append(self._stamp(ContentPartAdded(item_id=item_id, output_index=index, content_index=0, part=part)))
        self.text.append(text)
        events.append(self._stamp(ReasoningTextDelta(item_id=item_id, output_index=index, content_index=0, delta=text)))
        return events

    def _summary(self, text: str) -> list[Event]:
        events: list[Event] = []
        item_id, index, summary_index = self.item.id or "", self.index, len(self.item.summary)
        if self.summary is None:
            events += self._end_text()
            self.summary = []
            part = SummaryText(text="")
            events.append(
                self._stamp(
                    ReasoningSummaryPartAdded(item_id=item_id, output_index=index, summary_index=summary_index, part=part)
                )
            )
        self.summary.append(text)
        events.append(
            self._stamp(
                ReasoningSummaryTextDelta(item_id=item_id, output_index=index, summary_index=summary_index, delta=text)
            )
        )
        return events

    def _end_text(self) -> list[Event]:
        if self.text is None:
            return []
        text, self.text = "".join(self.text), None
        part = ReasoningText(text=text)
        self.item.content = [*(self.item.content or []), part]
        item_id, index = self.item.id or "", self.index
        return [
            self._stamp(ReasoningTextDone(item_id=item_id, output_index=index, content_index=0, text=text)),
            self._stamp(ContentPartDone(item_id=item_id, output_index=index, content_index=0, part=part)),
        ]

    def end_summary_part(self) -> list[Event]:
        """The summary part now streaming is done; the next summary text opens another."""
        if self.summary is None:
            return []
        text, self.summary = "".join(self.summary), None
        part = SummaryText(text=text)
        summary_index = len(self.item.summary)
        self.item.summary.append(part)
        item_id, index = self.item.id or "", self.index
        return [
            self._stamp(
                ReasoningSummaryTextDone(item_id=item_id, output_index=index, summary_index=summary_index, text=text)
            ),
            self._stamp(
                ReasoningSummaryPartDone(item_id=item_id, output_index=index, summary_index=summary_index, part=part)
            ),
        ]

    def close(self, status: str, seal: Callable[[Reasoning], str] | None) -> list[Event]:
        """The item done; ``seal`` gives it ``encrypted_content`` when the client carries it."""
        events = self._end_text() + self.end_summary_part()
        item = self.item
        item.status = status
        if seal is not None:
            item.encrypted_content = seal(item)
        return events + [self._stamp(OutputItemDone(output_index=self.index, item=msgspec.structs.replace(item)))]
