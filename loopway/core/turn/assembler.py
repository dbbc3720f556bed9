"""Engine deltas to the exact Responses event sequence, with sequence numbers (sans-I/O).

One place owns ordering: an item opens with ``output_item.added``; text goes
``content_part.added`` → ``output_text.delta``… → ``output_text.done`` → ``content_part.done``;
a function call goes ``function_call_arguments.delta``… → ``.done``; a call of an MCP server's tool
goes ``mcp_call.in_progress`` → ``mcp_call_arguments.delta``… → ``.done``, and once it has run
``mcp_call.completed`` (or ``.failed``) before its ``output_item.done``; a tool listing goes
``mcp_list_tools.in_progress`` → ``.completed`` (or ``.failed``); a reasoning item's parts go as
``core.turn.reasoning_stream`` says. The item closes with
``output_item.done``; a terminal event ends the response. ``sequence_number`` starts at 0.

Events carry snapshots: nothing emitted earlier changes when the response moves on.

The assembler has three states, as h11's connection does: ``IDLE`` until the response opens,
``OPEN`` while it streams, ``FINISHED`` once its terminal event exists. Input in the wrong state
(a delta before the opening, anything after the terminal event) is a bug of the caller and raises
``AssemblerStateError``; only the notices that ride on a finished response's sequence (a store
error, a steer left pending) are numbered after it.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

import msgspec

from loopway.core.turn.item_streams import OpenCall, OpenReasoning, OpenText
from loopway.engines.base import Delta, Finish, ReasoningDelta, TextDelta, ToolCallDelta
from loopway.protocol import ids
from loopway.protocol.events import (
    ContentPartAdded,
    Event,
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
    ResponseCompleted,
    ResponseCreated,
    ResponseFailed,
    ResponseIncomplete,
    ResponseInProgress,
    ResponseQueued,
    SteerAccepted,
    SteerPending,
    SteerRef,
    StreamError,
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
)
from loopway.protocol.response import IncompleteDetails, OutputItem, Response, ResponseError, Usage

# What a tool call of the model becomes: a function call for the client, an MCP call loopway runs,
# or an MCP call waiting for the client's approval: "function" | "mcp_call" | "mcp_approval".
CallKind = str


_TERMINAL = {"completed": ResponseCompleted, "incomplete": ResponseIncomplete, "failed": ResponseFailed}


class State(enum.Enum):
    IDLE = "idle"  # nothing sent yet (or only a background response's queued events)
    OPEN = "open"  # created: items stream
    FINISHED = "finished"  # the terminal event exists: no more input


class AssemblerStateError(RuntimeError):
    """Input the response's state does not allow: a caller's bug, never a client's."""


class EventAssembler:
    """Builds one response's events; ``response`` is the live object it completes.

    ``seal`` (set by the pipeline when the client asked for it) gives a finished reasoning item its
    ``encrypted_content``; ``call_kind`` (set for a turn with MCP servers) says what a call of
    (namespace, name) is. An MCP call whose arguments are complete shows as its
    ``mcp_call_arguments.done`` event: that event is how the caller learns to run it.
    """

    def __init__(self, response: Response) -> None:
        self.response = response
        self.state = State.IDLE
        self._seq = 0
        self._open: OpenText | OpenCall | OpenReasoning | None = None
        self._next_id: str | None = None  # the id the next item takes (a replay keeps the original)
        self.seal: Callable[[Reasoning], str] | None = None
        self.call_kind: Callable[[str | None, str], tuple[CallKind, str]] | None = None

    def _stamp(self, event: Event) -> Event:
        event.sequence_number = self._seq
        self._seq += 1
        return event

    def _input(self) -> None:
        """Items and deltas are input of an open response only."""
        if self.state is not State.OPEN:
            raise AssemblerStateError(f"response {self.response.id} is {self.state.value}: no more input")

    def _ended(self, event: Event) -> Event:
        self.state = State.FINISHED
        return self._stamp(event)

    def _new_id(self, prefix: str) -> str:
        named, self._next_id = self._next_id, None
        return named or ids.new_id(prefix)

    def name_next_item(self, item_id: str | None) -> None:
        """The next item opened takes ``item_id``: a replay keeps the ids the client has seen."""
        self._next_id = item_id

    def _snapshot(self) -> Response:
        return msgspec.structs.replace(self.response, output=list(self.response.output))

    # Lifecycle -------------------------------------------------------------------------------

    def queued(self) -> list[Event]:
        """A background response's first events: created and queued, both with status queued."""
        if self.state is not State.IDLE or self._seq:
            raise AssemblerStateError(f"response {self.response.id} was already announced")
        self.response.status = "queued"
        return [
            self._stamp(ResponseCreated(response=self._snapshot())),
            self._stamp(ResponseQueued(response=self._snapshot())),
        ]

    def opening(self) -> list[Event]:
        """``response.created`` then ``response.in_progress`` (a queued response already had created)."""
        if self.state is not State.IDLE:
            raise AssemblerStateError(f"response {self.response.id} is already {self.state.value}")
        self.state = State.OPEN
        events: list[Event] = []
        if self._seq == 0:
            self.response.status = "in_progress"
            events.append(self._stamp(ResponseCreated(response=self._snapshot())))
        self.response.status = "in_progress"
        events.append(self._stamp(ResponseInProgress(response=self._snapshot())))
        return events

    def feed(self, delta: Delta) -> list[Event]:
        self._input()
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
            return isinstance(current, OpenText)
        if isinstance(delta, ToolCallDelta):
            return isinstance(current, OpenCall) and current.engine_index == delta.index
        if isinstance(delta, ReasoningDelta):
            return isinstance(current, OpenReasoning)
        return False

    def add_item(self, item: OutputItem) -> list[Event]:
        """A whole item at once (compaction): added and done."""
        self._input()
        events = self._close()
        index = len(self.response.output)
        self.response.output.append(item)
        events.append(self._stamp(OutputItemAdded(output_index=index, item=item)))
        events.append(self._stamp(OutputItemDone(output_index=index, item=item)))
        return events

    def finish(self, finish: Finish) -> list[Event]:
        self._input()
        truncated = finish.reason in ("length", "content_filter")
        events = self._close(status="incomplete" if truncated else "completed")
        response = self.response
        response.usage = Usage.of(finish.input_tokens, finish.cached_tokens, finish.output_tokens, finish.reasoning_tokens)
        if truncated:
            response.status = "incomplete"
            reason = "max_output_tokens" if finish.reason == "length" else "content_filter"
            response.incomplete_details = IncompleteDetails(reason=reason)
            events.append(self._ended(ResponseIncomplete(response=self._snapshot())))
        else:
            response.status = "completed"
            response.completed_at = int(time.time())
            events.append(self._ended(ResponseCompleted(response=self._snapshot())))
        return events

    def close_open_item(self, status: str = "completed") -> list[Event]:
        self._input()
        return self._close(status)

    def end_incomplete(self, reason: str, usage: Usage) -> list[Event]:
        """Stop early (steering): the open item is closed as incomplete."""
        self._input()
        events = self._close(status="incomplete")
        self.response.usage = usage
        self.response.status = "incomplete"
        self.response.incomplete_details = IncompleteDetails(reason=reason)
        events.append(self._ended(ResponseIncomplete(response=self._snapshot())))
        return events

    def fail(self, code: str, message: str) -> list[Event]:
        self._input()
        events = self._close(status="incomplete")
        self.response.status = "failed"
        self.response.error = ResponseError(code=code, message=message)
        events.append(self._ended(ResponseFailed(response=self._snapshot())))
        return events

    def end_as(self, final: Response) -> Event:
        """A replay's terminal event: the stored response as it ended."""
        self._input()
        return self._ended(_TERMINAL[final.status](response=final))

    # Notices on the response's sequence ------------------------------------------------------

    def stream_error(self, code: str, message: str, param: str | None) -> Event:
        """An ``error`` mid-stream, or after the terminal event when its store write failed."""
        return self._stamp(StreamError(code=code, message=message, param=param))

    def steer_accepted(self, steer_id: str) -> Event:
        return self._stamp(SteerAccepted(steer=SteerRef(id=steer_id, previous_response_id=self.response.id)))

    def steer_pending(self, steer_id: str, required_input: list) -> Event:
        """A steer that waits, after the terminal event, for the outputs the client owes."""
        steer = SteerRef(id=steer_id, previous_response_id=self.response.id)
        return self._stamp(SteerPending(steer=steer, required_input=required_input))

    # Items -----------------------------------------------------------------------------------

    def _text(self, text: str) -> list[Event]:
        events: list[Event] = []
        current = self._open
        if not isinstance(current, OpenText):
            events += self._close()
            index = len(self.response.output)
            item = Message(id=self._new_id(ids.MESSAGE), role="assistant", content=[], status="in_progress")
            self.response.output.append(item)
            current = self._open = OpenText(item, index, self._stamp)
            events.append(self._stamp(OutputItemAdded(output_index=index, item=msgspec.structs.replace(item, content=[]))))
            events.append(
                self._stamp(ContentPartAdded(item_id=item.id, output_index=index, content_index=0, part=OutputText(text="")))
            )
        return events + current.feed(text)

    def _reasoning(self, delta: ReasoningDelta) -> list[Event]:
        events = [] if isinstance(self._open, OpenReasoning) else self.open_reasoning()
        return events + self._open.feed(delta)  # type: ignore[union-attr]

    def open_reasoning(self) -> list[Event]:
        """A reasoning item opens (its first delta, or a replay of one that may have no parts)."""
        self._input()
        events = self._close()
        index = len(self.response.output)
        item = Reasoning(id=self._new_id(ids.REASONING), summary=[], status="in_progress")
        self.response.output.append(item)
        self._open = OpenReasoning(item, index, self._stamp)
        events.append(self._stamp(OutputItemAdded(output_index=index, item=msgspec.structs.replace(item, summary=[]))))
        return events

    def next_summary_part(self) -> list[Event]:
        """The open reasoning item's summary part is done; its next summary text opens another."""
        return self._open.end_summary_part() if isinstance(self._open, OpenReasoning) else []

    def _call(self, delta: ToolCallDelta) -> list[Event]:
        events: list[Event] = []
        current = self._open
        if not isinstance(current, OpenCall) or current.engine_index != delta.index:
            events += self._close()
            index = len(self.response.output)
            item = self._new_call(delta)
            self.response.output.append(item)
            current = self._open = OpenCall(item, index, delta.index, self._stamp)
            events.append(self._stamp(OutputItemAdded(output_index=index, item=msgspec.structs.replace(item))))
            if isinstance(item, McpCall):
                events.append(self._stamp(McpCallInProgress(item_id=item.id or "", output_index=index)))
        return events + current.feed(delta.arguments) if delta.arguments else events

    def _new_call(self, delta: ToolCallDelta) -> FunctionCall | McpCall | McpApprovalRequest:
        name = delta.name or ""
        kind, label = self.call_kind(delta.namespace, name) if self.call_kind else ("function", "")
        if kind == "mcp_call":
            return McpCall(id=self._new_id(ids.MCP_CALL), server_label=label, name=name, arguments="", status="in_progress")
        if kind == "mcp_approval":
            return McpApprovalRequest(id=self._new_id(ids.MCP_APPROVAL_REQUEST), server_label=label, name=name, arguments="")
        return FunctionCall(
            id=self._new_id(ids.FUNCTION_CALL),
            call_id=delta.call_id or ids.new_id(ids.CALL),
            name=name,
            arguments="",
            status="in_progress",
            namespace=delta.namespace,
        )

    # MCP -------------------------------------------------------------------------------------

    def mcp_list_started(self, server_label: str) -> tuple[list[Event], McpListTools, int]:
        self._input()
        events = self._close()
        index = len(self.response.output)
        item = McpListTools(id=self._new_id(ids.MCP_LIST_TOOLS), server_label=server_label, tools=[])
        self.response.output.append(item)
        events.append(self._stamp(OutputItemAdded(output_index=index, item=msgspec.structs.replace(item))))
        events.append(self._stamp(McpListToolsInProgress(item_id=item.id or "", output_index=index)))
        return events, item, index

    def mcp_list_finished(
        self, item: McpListTools, index: int, tools: list[McpListedTool], error: str | None
    ) -> list[Event]:
        self._input()
        item.tools, item.error = tools, error
        ended = McpListToolsFailed if error is not None else McpListToolsCompleted
        return [
            self._stamp(ended(item_id=item.id or "", output_index=index)),
            self._stamp(OutputItemDone(output_index=index, item=msgspec.structs.replace(item))),
        ]

    def mcp_call_opened(self, call: McpCall) -> tuple[list[Event], int]:
        """A whole call at once (one the client approved): added, in progress, its arguments."""
        self._input()
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
        self._input()
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
        if isinstance(current, OpenReasoning):
            return current.close(status, self.seal)
        return current.close(status)
