"""Engine deltas to the exact Responses event sequence, with sequence numbers (sans-I/O).

One place owns ordering: an item opens with ``output_item.added``; text goes
``content_part.added`` → ``output_text.delta``… → ``output_text.done`` → ``content_part.done``;
a function call goes ``function_call_arguments.delta``… → ``.done``; a call of an MCP server's tool
goes ``mcp_call.in_progress`` → ``mcp_call_arguments.delta``… → ``.done``, and once it has run
``mcp_call.completed`` (or ``.failed``) before its ``output_item.done``; a tool listing goes
``mcp_list_tools.in_progress`` → ``.completed`` (or ``.failed``); reasoning goes
``content_part.added`` (``reasoning_text``) → ``reasoning_text.delta``… → ``reasoning_text.done`` →
``content_part.done``, then ``reasoning_summary_part.added`` → ``reasoning_summary_text.delta``… →
``.done`` → ``reasoning_summary_part.done`` for its summary; the item closes with
``output_item.done``; a terminal event ends the response. ``sequence_number`` starts at 0.

Events carry snapshots: nothing emitted earlier changes when the response moves on.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from loopway.engines.base import Delta, Finish, ReasoningDelta, TextDelta, ToolCallDelta
from loopway.protocol import ids
from loopway.protocol.events import (
    ContentPartAdded,
    ContentPartDone,
    Event,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    McpCallArgumentsDelta,
    McpCallArgumentsDone,
    McpCallCompleted,
    McpCallFailed,
    McpCallInProgress,
    McpListToolsCompleted,
    McpListToolsFailed,
    McpListToolsInProgress,
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
    ResponseCreated,
    ResponseFailed,
    ResponseIncomplete,
    ResponseInProgress,
    ResponseQueued,
)
from loopway.protocol.items import (
    FunctionCall,
    McpApprovalRequest,
    McpCall,
    McpListedTool,
    McpListTools,
    Message,
    OutputText,
    Reasoning,
    ReasoningText,
    SummaryText,
)
from loopway.protocol.response import IncompleteDetails, OutputItem, Response, ResponseError, Usage


class _OpenText:
    def __init__(self, item: Message, index: int) -> None:
        self.item, self.index, self.chunks = item, index, []


class _OpenCall:
    def __init__(self, item: FunctionCall | McpCall | McpApprovalRequest, index: int, engine_index: int) -> None:
        self.item, self.index, self.engine_index, self.chunks = item, index, engine_index, []


# What a tool call of the model becomes: a function call for the client, an MCP call loopway runs,
# or an MCP call waiting for the client's approval.
CallKind = str  # "function" | "mcp_call" | "mcp_approval"


class _OpenReasoning:
    def __init__(self, item: Reasoning, index: int) -> None:
        self.item, self.index = item, index
        self.text: list[str] | None = None  # the reasoning text part, while it is open
        self.summary: list[str] | None = None  # the summary part now streaming


class EventAssembler:
    """Builds one response's events; ``response`` is the live object it completes.

    ``seal`` (set by the pipeline when the client asked for it) gives a finished reasoning item its
    ``encrypted_content``.
    """

    def __init__(self, response: Response) -> None:
        self.response = response
        self._seq = 0
        self._open: _OpenText | _OpenCall | _OpenReasoning | None = None
        self.seal: Callable[[Reasoning], str] | None = None
        # Set for a turn with MCP servers: what a call of (namespace, name) is, and the MCP calls
        # whose arguments are complete, in order, for the pipeline to run.
        self.call_kind: Callable[[str | None, str], tuple[CallKind, str]] | None = None
        self.closed_mcp_calls: list[tuple[McpCall, int]] = []

    def _stamp(self, event: Event) -> Event:
        event.sequence_number = self._seq
        self._seq += 1
        return event

    def _snapshot(self) -> Response:
        return msgspec.structs.replace(self.response, output=list(self.response.output))

    # Lifecycle -------------------------------------------------------------------------------

    def queued(self) -> list[Event]:
        """A background response's first events: created and queued, both with status queued."""
        self.response.status = "queued"
        return [
            self._stamp(ResponseCreated(response=self._snapshot())),
            self._stamp(ResponseQueued(response=self._snapshot())),
        ]

    def opening(self) -> list[Event]:
        """``response.created`` then ``response.in_progress`` (a queued response already had created)."""
        events: list[Event] = []
        if self._seq == 0:
            self.response.status = "in_progress"
            events.append(self._stamp(ResponseCreated(response=self._snapshot())))
        self.response.status = "in_progress"
        events.append(self._stamp(ResponseInProgress(response=self._snapshot())))
        return events

    def feed(self, delta: Delta) -> list[Event]:
        if isinstance(delta, TextDelta):
            return self._text(delta.text)
        if isinstance(delta, ReasoningDelta):
            return self._reasoning(delta)
        if isinstance(delta, ToolCallDelta):
            return self._call(delta)
        if isinstance(delta, Finish):
            return self.finish(delta)
        raise TypeError(type(delta))

    def continues_open_item(self, delta: Delta) -> bool:
        """Whether ``delta`` belongs to the item now streaming (steering waits for it to finish)."""
        current = self._open
        if isinstance(delta, TextDelta):
            return isinstance(current, _OpenText)
        if isinstance(delta, ToolCallDelta):
            return isinstance(current, _OpenCall) and current.engine_index == delta.index
        if isinstance(delta, ReasoningDelta):
            return isinstance(current, _OpenReasoning)
        return False

    def add_item(self, item: OutputItem) -> list[Event]:
        """A whole item at once (compaction): added and done."""
        events = self._close()
        index = len(self.response.output)
        self.response.output.append(item)
        events.append(self._stamp(OutputItemAdded(output_index=index, item=item)))
        events.append(self._stamp(OutputItemDone(output_index=index, item=item)))
        return events

    def finish(self, finish: Finish) -> list[Event]:
        truncated = finish.reason in ("length", "content_filter")
        events = self._close(status="incomplete" if truncated else "completed")
        response = self.response
        response.usage = Usage.of(finish.input_tokens, finish.cached_tokens, finish.output_tokens, finish.reasoning_tokens)
        if truncated:
            response.status = "incomplete"
            reason = "max_output_tokens" if finish.reason == "length" else "content_filter"
            response.incomplete_details = IncompleteDetails(reason=reason)
            events.append(self._stamp(ResponseIncomplete(response=self._snapshot())))
        else:
            response.status = "completed"
            response.completed_at = int(time.time())
            events.append(self._stamp(ResponseCompleted(response=self._snapshot())))
        return events

    def close_open_item(self, status: str = "completed") -> list[Event]:
        return self._close(status)

    def end_incomplete(self, reason: str, usage: Usage) -> list[Event]:
        """Stop early (steering): the open item is closed as incomplete."""
        events = self._close(status="incomplete")
        self.response.usage = usage
        self.response.status = "incomplete"
        self.response.incomplete_details = IncompleteDetails(reason=reason)
        events.append(self._stamp(ResponseIncomplete(response=self._snapshot())))
        return events

    def fail(self, code: str, message: str) -> list[Event]:
        events = self._close(status="incomplete")
        self.response.status = "failed"
        self.response.error = ResponseError(code=code, message=message)
        events.append(self._stamp(ResponseFailed(response=self._snapshot())))
        return events

    def stamp(self, event: Event) -> Event:
        """Number an event produced outside the assembler (a mid-stream error)."""
        return self._stamp(event)

    # Items -----------------------------------------------------------------------------------

    def _text(self, text: str) -> list[Event]:
        events: list[Event] = []
        current = self._open
        if not isinstance(current, _OpenText):
            events += self._close()
            index = len(self.response.output)
            item = Message(id=ids.new_id(ids.MESSAGE), role="assistant", content=[], status="in_progress")
            self.response.output.append(item)
            current = self._open = _OpenText(item, index)
            events.append(self._stamp(OutputItemAdded(output_index=index, item=msgspec.structs.replace(item, content=[]))))
            events.append(
                self._stamp(ContentPartAdded(item_id=item.id, output_index=index, content_index=0, part=OutputText(text="")))
            )
        current.chunks.append(text)
        events.append(
            self._stamp(OutputTextDelta(item_id=current.item.id, output_index=current.index, content_index=0, delta=text))
        )
        return events

    def _reasoning(self, delta: ReasoningDelta) -> list[Event]:
        events: list[Event] = []
        current = self._open
        if not isinstance(current, _OpenReasoning):
            events += self._close()
            index = len(self.response.output)
            item = Reasoning(id=ids.new_id(ids.REASONING), summary=[], status="in_progress")
            self.response.output.append(item)
            current = self._open = _OpenReasoning(item, index)
            events.append(self._stamp(OutputItemAdded(output_index=index, item=msgspec.structs.replace(item, summary=[]))))
        item_id, index = current.item.id or "", current.index
        if not delta.summary:
            if current.text is None:
                events += self._end_summary(current)
                current.text = []
                part = ReasoningText(text="")
                events.append(self._stamp(ContentPartAdded(item_id=item_id, output_index=index, content_index=0, part=part)))
            current.text.append(delta.text)
            events.append(
                self._stamp(ReasoningTextDelta(item_id=item_id, output_index=index, content_index=0, delta=delta.text))
            )
            return events
        if current.summary is None:
            events += self._end_text(current)
            current.summary = []
            part = SummaryText(text="")
            summary_index = len(current.item.summary)
            events.append(
                self._stamp(
                    ReasoningSummaryPartAdded(item_id=item_id, output_index=index, summary_index=summary_index, part=part)
                )
            )
        current.summary.append(delta.text)
        events.append(
            self._stamp(
                ReasoningSummaryTextDelta(
                    item_id=item_id, output_index=index, summary_index=len(current.item.summary), delta=delta.text
                )
            )
        )
        return events

    def _end_text(self, current: _OpenReasoning) -> list[Event]:
        if current.text is None:
            return []
        text, current.text = "".join(current.text), None
        part = ReasoningText(text=text)
        current.item.content = [*(current.item.content or []), part]
        item_id, index = current.item.id or "", current.index
        return [
            self._stamp(ReasoningTextDone(item_id=item_id, output_index=index, content_index=0, text=text)),
            self._stamp(ContentPartDone(item_id=item_id, output_index=index, content_index=0, part=part)),
        ]

    def _end_summary(self, current: _OpenReasoning) -> list[Event]:
        if current.summary is None:
            return []
        text, current.summary = "".join(current.summary), None
        part = SummaryText(text=text)
        summary_index = len(current.item.summary)
        current.item.summary.append(part)
        item_id, index = current.item.id or "", current.index
        return [
            self._stamp(
                ReasoningSummaryTextDone(item_id=item_id, output_index=index, summary_index=summary_index, text=text)
            ),
            self._stamp(
                ReasoningSummaryPartDone(item_id=item_id, output_index=index, summary_index=summary_index, part=part)
            ),
        ]

    def _close_reasoning(self, current: _OpenReasoning, status: str) -> list[Event]:
        events = self._end_text(current) + self._end_summary(current)
        item = current.item
        item.status = status
        if self.seal is not None:
            item.encrypted_content = self.seal(item)
        return events + [self._stamp(OutputItemDone(output_index=current.index, item=msgspec.structs.replace(item)))]

    def _call(self, delta: ToolCallDelta) -> list[Event]:
        events: list[Event] = []
        current = self._open
        if not isinstance(current, _OpenCall) or current.engine_index != delta.index:
            events += self._close()
            index = len(self.response.output)
            item = self._new_call(delta)
            self.response.output.append(item)
            current = self._open = _OpenCall(item, index, delta.index)
            events.append(self._stamp(OutputItemAdded(output_index=index, item=msgspec.structs.replace(item))))
            if isinstance(item, McpCall):
                events.append(self._stamp(McpCallInProgress(item_id=item.id or "", output_index=index)))
        if delta.arguments:
            current.chunks.append(delta.arguments)
            item_id = current.item.id or ""
            if isinstance(current.item, FunctionCall):
                events.append(
                    self._stamp(
                        FunctionCallArgumentsDelta(item_id=item_id, output_index=current.index, delta=delta.arguments)
                    )
                )
            elif isinstance(current.item, McpCall):
                events.append(
                    self._stamp(McpCallArgumentsDelta(item_id=item_id, output_index=current.index, delta=delta.arguments))
                )
        return events

    def _new_call(self, delta: ToolCallDelta) -> FunctionCall | McpCall | McpApprovalRequest:
        name = delta.name or ""
        kind, label = self.call_kind(delta.namespace, name) if self.call_kind else ("function", "")
        if kind == "mcp_call":
            return McpCall(id=ids.new_id(ids.MCP_CALL), server_label=label, name=name, arguments="", status="in_progress")
        if kind == "mcp_approval":
            return McpApprovalRequest(id=ids.new_id(ids.MCP_APPROVAL_REQUEST), server_label=label, name=name, arguments="")
        return FunctionCall(
            id=ids.new_id(ids.FUNCTION_CALL),
            call_id=delta.call_id or ids.new_id(ids.CALL),
            name=name,
            arguments="",
            status="in_progress",
            namespace=delta.namespace,
        )

    # MCP -------------------------------------------------------------------------------------

    def mcp_list_started(self, server_label: str) -> tuple[list[Event], McpListTools, int]:
        events = self._close()
        index = len(self.response.output)
        item = McpListTools(id=ids.new_id(ids.MCP_LIST_TOOLS), server_label=server_label, tools=[])
        self.response.output.append(item)
        events.append(self._stamp(OutputItemAdded(output_index=index, item=msgspec.structs.replace(item))))
        events.append(self._stamp(McpListToolsInProgress(item_id=item.id or "", output_index=index)))
        return events, item, index

    def mcp_list_finished(
        self, item: McpListTools, index: int, tools: list[McpListedTool], error: str | None
    ) -> list[Event]:
        item.tools, item.error = tools, error
        ended = McpListToolsFailed if error is not None else McpListToolsCompleted
        return [
            self._stamp(ended(item_id=item.id or "", output_index=index)),
            self._stamp(OutputItemDone(output_index=index, item=msgspec.structs.replace(item))),
        ]

    def mcp_call_opened(self, call: McpCall) -> tuple[list[Event], int]:
        """A whole call at once (one the client approved): added, in progress, its arguments."""
        events = self._close()
        index = len(self.response.output)
        self.response.output.append(call)
        item_id = call.id or ""
        events += [
            self._stamp(OutputItemAdded(output_index=index, item=msgspec.structs.replace(call, arguments=""))),
            self._stamp(McpCallInProgress(item_id=item_id, output_index=index)),
            self._stamp(McpCallArgumentsDelta(item_id=item_id, output_index=index, delta=call.arguments)),
            self._stamp(McpCallArgumentsDone(item_id=item_id, output_index=index, arguments=call.arguments)),
        ]
        return events, index

    def mcp_call_finished(self, call: McpCall, index: int, output: str | None, error: dict | None) -> list[Event]:
        call.output, call.error = output, error
        call.status = "failed" if error is not None else "completed"
        ended = McpCallFailed if error is not None else McpCallCompleted
        return [
            self._stamp(ended(item_id=call.id or "", output_index=index)),
            self._stamp(OutputItemDone(output_index=index, item=msgspec.structs.replace(call))),
        ]

    def _close(self, status: str = "completed") -> list[Event]:
        current, self._open = self._open, None
        if current is None:
            return []
        if isinstance(current, _OpenReasoning):
            return self._close_reasoning(current, status)
        item = current.item
        if isinstance(current, _OpenText):
            text = "".join(current.chunks)
            part = OutputText(text=text)
            item.content = [part]
            item.status = status
            return [
                self._stamp(OutputTextDone(item_id=item.id, output_index=current.index, content_index=0, text=text)),
                self._stamp(ContentPartDone(item_id=item.id, output_index=current.index, content_index=0, part=part)),
                self._stamp(OutputItemDone(output_index=current.index, item=msgspec.structs.replace(item))),
            ]
        item.arguments = "".join(current.chunks)
        if isinstance(item, McpApprovalRequest):
            return [self._stamp(OutputItemDone(output_index=current.index, item=msgspec.structs.replace(item)))]
        if isinstance(item, McpCall):  # done once it has run (``mcp_call_finished``)
            self.closed_mcp_calls.append((item, current.index))
            done = McpCallArgumentsDone(item_id=item.id or "", output_index=current.index, arguments=item.arguments)
            return [self._stamp(done)]
        item.status = status
        return [
            self._stamp(
                FunctionCallArgumentsDone(
                    item_id=item.id, output_index=current.index, name=item.name, arguments=item.arguments
                )
            ),
            self._stamp(OutputItemDone(output_index=current.index, item=msgspec.structs.replace(item))),
        ]
