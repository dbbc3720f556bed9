"""A WebSocket connection's rules, sans-I/O: lanes, the connection cache, steering, what follows a turn.

In the style of h11's ``Connection``: the session tells the state what happened (a request was
submitted, a turn started, reached its terminal event, ended; a steer arrived) and the state answers
with decisions (jobs that may start now, events to send). Nothing here awaits, sends or sleeps, so
every rule of WebSocket mode is unit-tested without a socket.

| rule | where |
|---|---|
| same lane FIFO, lanes concurrent, 16 in flight, 32 named lanes | ``submit`` → ``core.connection.lanes`` |
| a continuation's parent: the connection cache, then (``store=true``) the store | ``parent`` (a ``ParentCache``) |
| a queued request keeps its parent cached until it runs (pin) | ``submit`` / ``ended`` |
| a lane's latest response is cached; its previous latest is dropped | ``completed`` → ``core.connection.cache`` |
| a failed same-lane continuation evicts its parent; a failed fork keeps it | ``refused`` / ``completed`` |
| steering: accepted, refused (not found, completed, compaction, too many, bad input) | ``steer`` |
| after a steered turn: wait for tool output (pending) or start a successor at once | ``ended`` |
| steering input goes first in the next request that continues the steered response | ``submit`` |
| bounded per connection: requests waiting for a lane, and bytes of requests not yet ended | ``submit`` |
| a conversation object stays rendered while only this connection writes to it (its version) | ``completed`` |
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from loopway.core.connection.cache import CachedResponse, ConnectionCache
from loopway.core.connection.lanes import LaneLimitReached, LaneScheduler
from loopway.core.context.conversation import Conversation
from loopway.core.context.parent import Parent
from loopway.core.ops.fault_injection import Fault
from loopway.core.ops.observatory import ConnectionView
from loopway.core.ops.timing import StageTimes
from loopway.core.turn.turn import Turn
from loopway.mcp.sessions import McpSessions
from loopway.protocol import ids
from loopway.protocol.errors import ApiError, invalid_request, too_many_requests
from loopway.protocol.events import Event, SteerFailed
from loopway.protocol.items import FunctionCall, Item, McpApprovalRequest, Message, parse_input
from loopway.protocol.request import CreateRequest
from loopway.tokens.render import Renderer

MAX_PENDING_STEERS = 8
MAX_CONVERSATIONS = 8  # conversation objects kept rendered per connection


class OpenConnection(Protocol):
    """What the service asks of a transport's open connection: its lanes (for metrics), how it looks
    on the dashboard, and a drain."""

    @property
    def lanes_used(self) -> int: ...

    def view(self) -> ConnectionView: ...

    async def drain(self, timeout_s: float) -> None:
        """Let in-flight responses finish (up to ``timeout_s``), then close so the client reconnects."""


class Job:
    """A validated ``response.create`` waiting for (or running on) its lane."""

    __slots__ = ("request", "lane", "times", "renderer", "size", "submitted", "pinned", "fault")

    def __init__(
        self,
        request: CreateRequest,
        times: StageTimes,
        renderer: Renderer | None = None,
        size: int = 0,
        fault: Fault | None = None,
    ) -> None:
        self.request = request
        self.fault = fault  # injected on purpose (core.ops.fault_injection), drawn when the request arrived
        self.lane = request.stream_id
        self.times = times
        self.renderer = renderer  # the request's tokens, when they were rendered ahead (core.ops.offload)
        self.size = size  # the frame's length, counted against the connection's pending bytes
        self.submitted = time.perf_counter()
        self.pinned: str | None = None  # the cached parent this job keeps alive until it ends

    def started(self) -> None:
        self.times.queue = (time.perf_counter() - self.submitted) * 1000


class Outbound(msgspec.Struct):
    """An event for the session to send, on its lane."""

    event: Event
    lane: str | None = None


class AfterTurn(msgspec.Struct):
    """What follows a turn that ended: events to send, then jobs to start."""

    send: list[Outbound]
    start: list[Job]


class _Steer(msgspec.Struct):
    id: str
    items: list[Item]


class ConnectionState:
    """One WebSocket connection's lanes, cache, running turns and queued steering."""

    def __init__(
        self,
        max_in_flight: int = 16,
        max_named_lanes: int = 32,
        max_pending_steers: int = MAX_PENDING_STEERS,
        max_queued: int = 64,
        max_pending_bytes: int = 64 << 20,
    ) -> None:
        self.cache = ConnectionCache()
        self.session_id = secrets.token_hex(12)  # for the engine: this connection's turns stay on one replica
        self.lanes: LaneScheduler[Job] = LaneScheduler(max_in_flight, max_named_lanes)
        self.max_pending_steers = max_pending_steers
        self.max_queued = max_queued
        self.max_pending_bytes = max_pending_bytes
        self._pending_bytes = 0  # frames of the jobs submitted and not yet ended
        self._active: dict[str, tuple[Turn, Job]] = {}  # running turns by response id
        self._steers: dict[str, list[_Steer]] = {}  # steering input queued by the response it steers
        self._lanes_used: set[str | None] = set()
        # Conversation objects this connection ran turns on, rendered, at the version it left them.
        self._conversations: OrderedDict[str, tuple[int, Conversation]] = OrderedDict()
        # Sessions with the MCP servers its turns used: open for the connection's life.
        self.mcp_sessions: McpSessions | None = None

    @property
    def busy(self) -> bool:
        """Whether any response is running or waiting for its lane."""
        return bool(self.lanes.in_flight or self.lanes.queued())

    @property
    def lanes_used(self) -> int:
        return len(self._lanes_used)

    # response.create -------------------------------------------------------------------------

    def submit(
        self,
        request: CreateRequest,
        times: StageTimes,
        renderer: Renderer | None = None,
        size: int = 0,
        fault: Fault | None = None,
    ) -> list[Job]:
        """Queue a validated request on its lane; returns the jobs that may start now.

        Raises ``ApiError`` for one lane too many (``websocket_stream_limit_reached``), or when the
        connection already holds as much waiting work as it may (``websocket_queue_full``).
        """
        self._check_room(request.stream_id, size)
        try:
            self.lanes.admit(request.stream_id)
        except LaneLimitReached as exc:
            raise invalid_request(str(exc), param="stream_id", code="websocket_stream_limit_reached") from None
        self._lanes_used.add(request.stream_id)
        steering = self._take_steers(request.previous_response_id)
        if steering:
            request = msgspec.structs.replace(request, input=[*steering, *request.input])
        job = Job(request, times, renderer, size, fault)
        self._pending_bytes += size
        if request.previous_response_id and self.cache.pin(request.previous_response_id):
            job.pinned = request.previous_response_id
        return _jobs(self.lanes.submit(job.lane, job))

    def _check_room(self, lane: str | None, size: int) -> None:
        if self.lanes.queued() >= self.max_queued and self.lanes.would_wait(lane):
            raise _queue_full(f"at most {self.max_queued} requests may wait for a lane on one connection")
        if self._pending_bytes and self._pending_bytes + size > self.max_pending_bytes:
            raise _queue_full(
                f"the requests not yet finished on this connection already hold {self._pending_bytes:,} bytes "
                f"(at most {self.max_pending_bytes:,})"
            )

    def parent(self, response_id: str) -> Parent | None:
        """The cached response a continuation continues from, rendered; None on a miss."""
        entry = self.cache.get(response_id)
        if entry is None:
            return None
        return Parent(response=entry.response, conversation=entry.conversation)

    def refused(self, job: Job) -> None:
        """The request failed before it started (4xx/5xx): a same-lane continuation evicts its parent."""
        self._evict_if_same_lane(job.request.previous_response_id, job.lane)

    def started(self, job: Job, turn: Turn) -> None:
        self._active[turn.id] = (turn, job)

    def completed(self, job: Job, turn: Turn) -> None:
        """The turn reached its terminal event: cache it as its lane's latest (a failure evicts instead).

        Called before the terminal event is sent, so a client that continues the moment it hears
        ``response.completed`` finds the response here, on any lane.
        """
        if turn.response.status == "failed" or turn.after is None:
            self._evict_if_same_lane(turn.request.previous_response_id, job.lane)
            return
        self.cache.put(CachedResponse(response=turn.response, conversation=turn.after, lane=job.lane))
        self._keep_conversation(turn)

    def conversation(self, conversation_id: str, version: int) -> Conversation | None:
        """A conversation object's rendering, if this connection left it at ``version``."""
        kept = self._conversations.get(conversation_id)
        if kept is None or kept[0] != version:
            return None
        self._conversations.move_to_end(conversation_id)
        return kept[1]

    def _keep_conversation(self, turn: Turn) -> None:
        """Keep a conversation turn's rendering, if its append was the only write since it read the
        conversation (version + 1) and the rendering is the whole conversation (nothing truncated
        or compacted away); at most ``MAX_CONVERSATIONS`` per connection, least recently used out."""
        conversation_id, read = turn.request.conversation, turn.origin.conversation_version
        written = turn.conversation_written
        if conversation_id is None or read is None or written is None or turn.after is None:
            return
        if written != read + 1 or turn.compacted is not None or turn.request.truncation != "disabled":
            self._conversations.pop(conversation_id, None)
            return
        self._conversations[conversation_id] = (written, turn.after)
        self._conversations.move_to_end(conversation_id)
        while len(self._conversations) > MAX_CONVERSATIONS:
            self._conversations.popitem(last=False)

    def ended(self, job: Job, turn: Turn | None = None) -> AfterTurn:
        """The job is over (``turn`` is None when it never started or broke): free its lane, apply steering."""
        after = AfterTurn(send=[], start=[])
        if turn is not None:
            self._active.pop(turn.id, None)
            after = self._after_steered(job, turn)
        if job.pinned is not None:
            self.cache.unpin(job.pinned)
        self._pending_bytes -= job.size
        after.start += _jobs(self.lanes.finish(job.lane))
        return after

    def close(self) -> None:
        self.cache.clear()
        self._conversations.clear()
        self._steers.clear()
        self._active.clear()

    def _evict_if_same_lane(self, previous: str | None, lane: str | None) -> None:
        entry = self.cache.get(previous) if previous else None
        if entry is not None and entry.lane == lane:
            self.cache.evict(entry.response.id)

    # response.steer --------------------------------------------------------------------------

    def steer(self, target: Any, raw_input: Any) -> Outbound:
        """A ``response.steer``: accepted (numbered in the target's sequence) or failed, as the event to send."""
        refusal = self._steer_refusal(target, raw_input)
        if refusal is not None:
            return steer_failed(target, raw_input, *refusal)
        turn, job = self._active[target]
        steer = _Steer(id=ids.new_id(ids.STEER), items=parse_input(raw_input))
        self._steers.setdefault(target, []).append(steer)
        return Outbound(turn.steer(steer.id), job.lane)

    def _steer_refusal(self, target: Any, raw_input: Any) -> tuple[str, str] | None:
        if not isinstance(target, str) or not target:
            return "response_not_found", "'previous_response_id' must name a response on this connection."
        if target not in self._active:
            if self.cache.get(target) is not None:
                return "response_already_completed", f"Response '{target}' has already completed."
            return "response_not_found", f"No active response '{target}' on this connection."
        turn, _ = self._active[target]
        if turn.request.compact_threshold is not None:
            return "steering_not_supported", "Steering is not supported with automatic compaction."
        if turn.request.conversation is not None:
            return "steering_not_supported", "Steering is not supported for responses bound to a conversation."
        if len(self._steers.get(target, [])) >= self.max_pending_steers:
            return "too_many_pending_steers", f"At most {self.max_pending_steers} steers may be pending per response."
        return _steer_input_refusal(raw_input)

    def _take_steers(self, previous: str | None) -> list[Item]:
        if previous is None:
            return []
        return [item for steer in self._steers.pop(previous, []) for item in steer.items]

    def _after_steered(self, job: Job, turn: Turn) -> AfterTurn:
        """A successor starts at once, or the steering waits for the client's tool output."""
        queued = self._steers.get(turn.id)
        if not queued or turn.response.status == "failed":
            self._steers.pop(turn.id, None)
            return AfterTurn(send=[], start=[])
        calls = [item for item in turn.response.output if isinstance(item, (FunctionCall, McpApprovalRequest))]
        if calls:  # the client owns the next input: say what is needed, keep the steering queued
            return AfterTurn(send=_pending(turn, queued, calls, job.lane), start=[])
        successor = msgspec.structs.replace(
            job.request, input=self._take_steers(turn.id), previous_response_id=turn.id, generate=True
        )
        follow = Job(successor, StageTimes())
        if self.cache.pin(turn.id):
            follow.pinned = turn.id
        return AfterTurn(send=[], start=_jobs(self.lanes.submit(job.lane, follow, front=True)))


def steer_failed(target: Any, raw_input: Any, code: str, message: str, kind: str = "invalid_request_error") -> Outbound:
    """A refused steer: the client gets its input back with the reason."""
    steer = {"previous_response_id": target, "input": raw_input}
    return Outbound(SteerFailed(sequence_number=0, steer=steer, error={"type": kind, "code": code, "message": message}))


def _queue_full(reason: str) -> ApiError:
    return too_many_requests(
        f"Too much work is waiting on this connection: {reason}. Wait for a response to finish, or open another connection.",
        code="websocket_queue_full",
    )


def _jobs(startable: list[tuple[str | None, Job]]) -> list[Job]:
    return [job for _, job in startable]


def _steer_input_refusal(raw_input: Any) -> tuple[str, str] | None:
    if isinstance(raw_input, list) and not raw_input:
        return "invalid_input", "'input' must be a string or a non-empty array of user messages."
    try:
        items = parse_input(raw_input)
    except ApiError as err:
        return "invalid_input", err.message
    if not all(isinstance(i, Message) and i.role == "user" for i in items):
        return "invalid_input", "Steering input may only contain user messages."
    return None


def _stub(call: FunctionCall | McpApprovalRequest) -> dict[str, Any]:
    """What the client must send for one call: its output, or its approval."""
    if isinstance(call, McpApprovalRequest):
        return {"type": "mcp_approval_response", "approval_request_id": call.id}
    return {"type": "function_call_output", "call_id": call.call_id, "name": call.name}


def _pending(
    turn: Turn, queued: Sequence[_Steer], calls: list[FunctionCall | McpApprovalRequest], lane: str | None
) -> list[Outbound]:
    stubs = [_stub(c) for c in calls]
    return [Outbound(turn.assembler.steer_pending(s.id, stubs), lane) for s in queued]
