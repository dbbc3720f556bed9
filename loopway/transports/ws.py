"""WebSocket mode on ``/v1/responses``: one socket, many turns, connection-scoped state.

A session reads frames, validates ``response.create`` at once, queues it on its lane
(``core.lanes``), and runs it on the same turn pipeline as HTTP. A continuation resolves its
parent from the connection cache (``core.cache``), so it touches no store and renders only the
new items; a miss falls back to the store only when the request has ``store=true``.
``response.completed`` is sent before persistence, which runs behind (read-your-writes holds).

Close codes: 1000 when the client closes; 1001 ("going away") when the connection reaches its
age limit (after a ``websocket_connection_limit_reached`` error) or sits idle too long; 1012
("service restart") when the server shuts down, after its in-flight responses finished. SDKs
reconnect on 1001 and 1012; the new connection starts with an empty cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
from msgspec import UNSET
from starlette.responses import JSONResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from loopway.core import history
from loopway.core.cache import CachedResponse, ConnectionCache
from loopway.core.history import Parent
from loopway.core.lanes import LaneLimitReached, LaneScheduler
from loopway.core.pipeline import Turn, is_terminal
from loopway.core.service import ResponsesService
from loopway.core.timing import StageTimes
from loopway.protocol import ids
from loopway.protocol.errors import ApiError, previous_response_not_found
from loopway.protocol.events import Event, SteerAccepted, SteerFailed, SteerPending, SteerRef, WsError, encode_event
from loopway.protocol.items import FunctionCall, Item, Message, parse_input
from loopway.protocol.request import STREAM_ID, CreateBody, CreateRequest, shape_check, validate_create
from loopway.settings import Settings

log = logging.getLogger("loopway.ws")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_SERVICE_RESTART = 1012
MAX_PENDING_STEERS = 8

_DECODER = msgspec.json.Decoder()


def ws_error(status: int, code: str, message: str, param: str | None = None) -> ApiError:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return ApiError(status, message, type=kind, code=code, param=param)


class Job:
    """A validated ``response.create`` waiting for (or running on) its lane."""

    def __init__(self, request: CreateRequest, times: StageTimes, prefix: list[Item] | None = None) -> None:
        self.request = request
        self.times = times
        self.prefix = prefix or []  # steering input to put before the request's own input
        self.submitted = time.perf_counter()
        self.pinned: str | None = None


class Session:
    """One WebSocket connection: its lanes, its cache, its running turns."""

    def __init__(self, service: ResponsesService, settings: Settings, websocket: WebSocket) -> None:
        self.service = service
        self.settings = settings
        self.websocket = websocket
        self.cache = ConnectionCache()
        self.lanes: LaneScheduler[Job] = LaneScheduler(settings.ws_max_in_flight, settings.ws_max_streams)
        self.opened = time.monotonic()
        self.expired = False
        self.active: dict[str, tuple[Turn, str | None]] = {}  # running turns by response id
        self.steers: dict[str, list[tuple[str, list[Item]]]] = {}  # queued steering input by response id
        self._tasks: set[asyncio.Task[None]] = set()
        self._send_lock = asyncio.Lock()
        self._closing = False
        self._lanes_seen: set[str | None] = set()
        self.tenant: str = websocket.scope.get("state", {}).get("tenant", "")  # set by the auth middleware

    # The socket ------------------------------------------------------------------------------

    async def serve(self) -> None:
        watchdog = asyncio.create_task(self._age_limit())
        try:
            while True:
                message = await self._receive()
                if message is None:  # idle past the limit with nothing in flight
                    await self.websocket.close(CLOSE_GOING_AWAY, "idle timeout")
                    return
                if message["type"] == "websocket.disconnect":
                    return
                await self._on_message(message)
        except WebSocketDisconnect:
            return
        finally:
            watchdog.cancel()
            await self._shutdown()

    async def _receive(self) -> dict[str, Any] | None:
        """The next frame; None once the connection has been idle (nothing in flight) past the limit."""
        while True:
            try:
                return await asyncio.wait_for(self.websocket.receive(), self.settings.ws_idle_timeout_s)
            except TimeoutError:
                if not (self.lanes.in_flight or self.lanes.queued()):
                    return None

    async def _on_message(self, message: dict[str, Any]) -> None:
        text = message.get("text")
        if text is None:
            await self.send_error(
                ws_error(
                    400,
                    "binary_frames_not_supported",
                    "Binary frames are not supported: send each event as a JSON text frame.",
                )
            )
            return
        if len(text) > self.settings.max_frame_bytes:
            await self.send_error(
                ws_error(
                    413,
                    "frame_too_large",
                    f"The frame is {len(text)} bytes; the maximum is {self.settings.max_frame_bytes} bytes.",
                )
            )
            return
        times = StageTimes()
        try:
            with times.measure("validate"):
                raw = _DECODER.decode(text)
        except msgspec.DecodeError as exc:
            await self.send_error(ws_error(400, "invalid_json", f"The frame is not valid JSON ({exc})."))
            return
        if not isinstance(raw, dict):
            await self.send_error(ws_error(400, "invalid_event", "Each frame must be a JSON object with a 'type'."))
            return
        kind = raw.get("type")
        if kind == "response.create":
            await self._on_create(raw, times)
        elif kind == "response.steer":
            await self._on_steer(raw)
        else:
            await self.send_error(
                ws_error(
                    400,
                    "unknown_event_type",
                    f"Unknown event type {kind!r}: expected 'response.create' or 'response.steer'.",
                    param="type",
                )
            )

    async def send(self, event: Event, lane: str | None = None) -> None:
        event.stream_id = lane if lane is not None else UNSET
        data = encode_event(event).decode()
        async with self._send_lock:
            if self.websocket.application_state != WebSocketState.CONNECTED:
                return
            try:
                await self.websocket.send_text(data)
            except (OSError, RuntimeError, WebSocketDisconnect):
                # The client is gone; the receive loop sees it and cancels this connection's turns.
                log.debug("send on a closed WebSocket dropped")

    async def send_error(self, err: ApiError, lane: str | None = None) -> None:
        await self.send(WsError.of(err), lane)

    @property
    def lanes_used(self) -> int:
        return len(self._lanes_seen)

    # response.create -------------------------------------------------------------------------

    async def _on_create(self, raw: dict[str, Any], times: StageTimes) -> None:
        lane = raw.get("stream_id")
        lane = lane if isinstance(lane, str) and STREAM_ID.match(lane) else None
        if self.service.draining:
            await self.send_error(
                ApiError(
                    503, "The server is restarting; reconnect to continue.", type="server_error", code="server_shutting_down"
                ),
                lane,
            )
            return
        if self.expired:
            await self._connection_limit(lane)
            return
        try:
            self.service.limiter.check(self.tenant)
            with times.measure("validate"):
                request = validate_create(shape_check(raw, CreateBody), websocket=True)
            self.lanes.admit(lane)
        except ApiError as err:
            await self.send_error(err, lane)
            return
        except LaneLimitReached as exc:
            await self.send_error(ws_error(400, "websocket_stream_limit_reached", str(exc), "stream_id"), lane)
            return
        if lane not in self._lanes_seen:
            self._lanes_seen.add(lane)
            self.service.metrics.lanes.inc()
        job = Job(request, times, self._take_steers(request.previous_response_id))
        if request.previous_response_id and self.cache.pin(request.previous_response_id):
            job.pinned = request.previous_response_id
        self._start(self.lanes.submit(lane, job))

    def _start(self, startable: list[tuple[str | None, Job]]) -> None:
        for lane, job in startable:
            task = asyncio.create_task(self._run(lane, job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, lane: str | None, job: Job) -> None:
        job.times.queue = (time.perf_counter() - job.submitted) * 1000
        try:
            turn = await self._prepare(lane, job)
            if turn is not None:
                await self._stream(lane, job, turn)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("websocket turn failed")
            await self.send_error(ws_error(500, "server_error", "The server had an error processing this request."), lane)
        finally:
            if job.pinned is not None:
                self.cache.unpin(job.pinned)
            if not self._closing:
                self._start(self.lanes.finish(lane))

    async def _prepare(self, lane: str | None, job: Job) -> Turn | None:
        request = job.request
        if job.prefix:
            request = msgspec.structs.replace(request, input=[*job.prefix, *request.input])
        try:
            if request.store:
                await self.service.log.check()
            parent = await self._parent(request, job.times)
            turn = self.service.pipeline.prepare(request, parent, job.times, self.tenant)
            await self.service.pipeline.start(turn)
            return turn
        except ApiError as err:
            self._evict_if_same_lane(request.previous_response_id, lane)
            await self.send_error(err, lane)
            return None

    async def _parent(self, request: CreateRequest, times: StageTimes) -> Parent | None:
        previous = request.previous_response_id
        if previous is None:
            return None
        with times.measure("resolve"):
            entry = self.cache.get(previous)
            self.service.metrics.cache_lookup(entry is not None)
            if entry is not None:
                return Parent(response=entry.response, conversation=entry.conversation)
            if request.store:  # the slow path: rebuild from the store
                return await history.load_parent(self.service.log, previous, self.tenant)
        raise previous_response_not_found(previous)

    def _evict_if_same_lane(self, previous: str | None, lane: str | None) -> None:
        entry = self.cache.get(previous) if previous else None
        if entry is not None and entry.lane == lane:
            self.cache.evict(previous)  # type: ignore[arg-type]

    async def _stream(self, lane: str | None, job: Job, turn: Turn) -> None:
        self.active[turn.id] = (turn, lane)
        try:
            async for event in self.service.run(turn):
                if is_terminal(event):
                    self._remember(lane, turn)
                    if self.settings.ws_durable_store and turn.request.store:
                        await self._persist_first(turn, event, lane)
                        continue
                    await self.send(event, lane)
                    self.service.persist_behind(turn)  # after the client has its answer
                else:
                    await self.send(event, lane)
        finally:
            self.active.pop(turn.id, None)
        await self._after_turn(lane, job, turn)

    async def _persist_first(self, turn: Turn, event: Event, lane: str | None) -> None:
        """``--ws-durable-store``: the store has the response before the client hears it completed."""
        try:
            await self.service.persist(turn, "ws")
        except ApiError as err:
            await self.send_error(err, lane)
            return
        await self.send(event, lane)

    def _remember(self, lane: str | None, turn: Turn) -> None:
        if turn.response.status == "failed" or turn.after is None:
            self._evict_if_same_lane(turn.request.previous_response_id, lane)
            return
        self.cache.put(CachedResponse(response=turn.response, conversation=turn.after, lane=lane))

    # response.steer --------------------------------------------------------------------------

    async def _on_steer(self, raw: dict[str, Any]) -> None:
        target = raw.get("previous_response_id")
        raw_input = raw.get("input")
        failure = self._steer_failure(target, raw_input)
        if failure is not None:
            code, message = failure
            await self.send(
                SteerFailed(
                    sequence_number=0,
                    steer={"previous_response_id": target, "input": raw_input},
                    error={"type": "invalid_request_error", "code": code, "message": message},
                )
            )
            return
        turn, lane = self.active[target]  # type: ignore[index]
        steer_id = ids.new_id(ids.STEER)
        self.steers.setdefault(target, []).append((steer_id, parse_input(raw_input)))  # type: ignore[arg-type]
        turn.steered = True
        await self.send(turn.assembler.stamp(SteerAccepted(steer=SteerRef(id=steer_id, previous_response_id=target))), lane)

    def _steer_failure(self, target: Any, raw_input: Any) -> tuple[str, str] | None:
        if not isinstance(target, str) or not target:
            return "response_not_found", "'previous_response_id' must name a response on this connection."
        if target not in self.active:
            if self.cache.get(target) is not None:
                return "response_already_completed", f"Response '{target}' has already completed."
            return "response_not_found", f"No active response '{target}' on this connection."
        turn, _ = self.active[target]
        if turn.request.compact_threshold is not None:
            return "steering_not_supported", "Steering is not supported with automatic compaction."
        if len(self.steers.get(target, [])) >= MAX_PENDING_STEERS:
            return "too_many_pending_steers", f"At most {MAX_PENDING_STEERS} steers may be pending per response."
        if isinstance(raw_input, list) and not raw_input:
            return "invalid_input", "'input' must be a string or a non-empty array of user messages."
        try:
            items = parse_input(raw_input)
        except ApiError as err:
            return "invalid_input", err.message
        if not all(isinstance(i, Message) and i.role == "user" for i in items):
            return "invalid_input", "Steering input may only contain user messages."
        return None

    def _take_steers(self, previous: str | None) -> list[Item]:
        if previous is None:
            return []
        return [item for _, items in self.steers.pop(previous, []) for item in items]

    async def _after_turn(self, lane: str | None, job: Job, turn: Turn) -> None:
        """Apply queued steering: a successor starts by itself, or waits for the client's tool results."""
        queued = self.steers.get(turn.id)
        if not queued or turn.response.status == "failed":
            self.steers.pop(turn.id, None)
            return
        calls = [item for item in turn.response.output if isinstance(item, FunctionCall)]
        if calls:  # the client owns the next input: say what is needed, keep the steering queued
            stubs = [{"type": "function_call_output", "call_id": c.call_id, "name": c.name} for c in calls]
            for steer_id, _ in queued:
                await self.send(
                    turn.assembler.stamp(
                        SteerPending(steer=SteerRef(id=steer_id, previous_response_id=turn.id), required_input=stubs)
                    ),
                    lane,
                )
            return
        successor = msgspec.structs.replace(job.request, input=[], previous_response_id=turn.id, generate=True)
        follow = Job(successor, StageTimes(), self._take_steers(turn.id))
        if self.cache.pin(turn.id):
            follow.pinned = turn.id
        self._start(self.lanes.submit(lane, follow, front=True))

    # Limits and shutdown ---------------------------------------------------------------------

    async def _age_limit(self) -> None:
        await asyncio.sleep(self.settings.ws_connection_max_age_s)
        self.expired = True
        while self.lanes.in_flight or self.lanes.queued():
            await asyncio.sleep(0.05)
        await self._connection_limit(None)

    async def _connection_limit(self, lane: str | None) -> None:
        minutes = self.settings.ws_connection_max_age_s / 60
        await self.send_error(
            ws_error(
                400,
                "websocket_connection_limit_reached",
                f"Responses websocket connection limit reached ({minutes:g} minutes). "
                "Create a new websocket connection to continue.",
            ),
            lane,
        )
        if self.websocket.application_state == WebSocketState.CONNECTED:
            await self.websocket.close(CLOSE_GOING_AWAY)

    async def drain(self, timeout_s: float) -> None:
        """Server shutdown: let in-flight responses finish, then close with 1012 so SDKs reconnect."""
        deadline = time.monotonic() + timeout_s
        while (self.lanes.in_flight or self.lanes.queued()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.websocket.application_state == WebSocketState.CONNECTED:
            async with self._send_lock:
                await self.websocket.close(CLOSE_SERVICE_RESTART, "server restarting")

    async def _shutdown(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.cache.clear()
        self.steers.clear()


def routes(service: ResponsesService, settings: Settings) -> list[WebSocketRoute]:
    async def refuse(websocket: WebSocket) -> None:
        err = ApiError(426, "WebSocket mode is turned off on this server; use HTTP.", code="websocket_disabled")
        await websocket.send_denial_response(JSONResponse(err.body(), status_code=426))

    async def endpoint(websocket: WebSocket) -> None:
        tenant = websocket.scope.get("state", {}).get("tenant", "")
        try:
            service.connections.acquire(tenant)
        except ApiError as err:
            await websocket.send_denial_response(JSONResponse(err.body(), status_code=err.status, headers=err.headers))
            return
        try:
            await websocket.accept()
            await _serve(websocket)
        finally:
            service.connections.release(tenant)

    async def _serve(websocket: WebSocket) -> None:
        session = Session(service, settings, websocket)
        service.sessions.add(session)
        service.metrics.connections.inc()
        try:
            await session.serve()
        finally:
            service.sessions.discard(session)
            service.metrics.connections.dec()
            service.metrics.lanes.dec(session.lanes_used)

    return [WebSocketRoute("/v1/responses", endpoint if settings.websocket else refuse)]
