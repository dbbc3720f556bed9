"""WebSocket mode on ``/v1/responses``: receiving frames, sending events, close codes and tasks.

The rules of the mode (lanes, the connection cache, parents, eviction, steering, what follows a
turn) live in ``core.connection.state.ConnectionState``; the turn itself runs on the same service and
driver as HTTP. A session only turns frames into calls on them and their answers into frames.

Close codes: 1000 when the client closes; 1001 ("going away") when the connection reaches its
age limit (after a ``websocket_connection_limit_reached`` error) or sits idle too long; 1008
("policy violation") when its API key has been revoked; 1009 when a frame is larger than
``--max-frame-bytes`` after decompression (the protocol layer stops inflating there); 1012 ("service
restart") when the server shuts down, after its in-flight responses finished. SDKs reconnect on 1001
and 1012; the new connection starts with an empty cache.

Every request is checked as it arrives, not only at the handshake: the key (revocation takes effect
on open sockets), the rate limit (``response.steer`` too: every generation counts), the connection's
age, and the work it may hold waiting (``core.connection.state``). Frames above ``--offload-bytes`` are
parsed and rendered in a worker thread (``core.ops.offload``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from msgspec import UNSET
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from loopway.core.connection.state import ConnectionState, Job, Outbound, steer_failed
from loopway.core.ops import offload
from loopway.core.ops.auth import KeyRing
from loopway.core.ops.fault_injection import StreamCut
from loopway.core.ops.observatory import ConnectionView
from loopway.core.ops.timing import StageTimes
from loopway.core.records.driver import Persist
from loopway.core.service import ResponsesService
from loopway.protocol import bounds
from loopway.protocol.errors import ApiError, unauthorized, upgrade_required
from loopway.protocol.events import Event, WsError, is_terminal
from loopway.protocol.request import create_from, valid_stream_id
from loopway.settings import Settings
from loopway.transports.error_responses import error_response
from loopway.transports.outbox import FlushClock, Outbox
from loopway.transports.wsprotocol import WIRE, AsgiWire

log = logging.getLogger("loopway.ws")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012


def ws_error(status: int, code: str, message: str, param: str | None = None) -> ApiError:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return ApiError(status, message, type=kind, code=code, param=param)


SHUTTING_DOWN = ws_error(503, "server_shutting_down", "The server is restarting; reconnect to continue.")
SERVER_ERROR = ws_error(500, "server_error", "The server had an error processing this request.")
BINARY_FRAME = ws_error(
    400, "binary_frames_not_supported", "Binary frames are not supported: send each event as a JSON text frame."
)


def lane_of(value: object) -> str | None:
    return value if isinstance(value, str) and valid_stream_id(value) else None


class RevokedKey(Exception):
    """The connection's key no longer authenticates: the session says why and closes (1008)."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


class ConnectionExpired(Exception):
    """A request arrived after the age limit: the session says so and closes (1001)."""

    def __init__(self, lane: object) -> None:
        super().__init__("connection age limit reached")
        self.lane = lane_of(lane)


class Session:
    """One WebSocket connection: frames in, events out, a task per running turn."""

    def __init__(
        self,
        service: ResponsesService,
        settings: Settings,
        websocket: WebSocket,
        keys: KeyRing,
        tenant: str,
        outbox: Outbox,
    ) -> None:
        self.service = service
        self.settings = settings
        self.websocket = websocket
        self.keys = keys
        self.authorization = websocket.headers.get("authorization")
        self.tenant = tenant
        self.state = ConnectionState(
            settings.ws_max_in_flight,
            settings.ws_max_streams,
            max_queued=settings.ws_max_queued,
            max_pending_bytes=settings.ws_max_pending_bytes,
        )
        self.bounds = settings.json_bounds()
        self.persist = Persist.FIRST if settings.ws_durable_store else Persist.BEHIND
        self.expired = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.last_activity = asyncio.get_running_loop().time()
        self.outbox = outbox
        self.opened_at = time.time()
        self.turns = 0  # turns that reached their terminal event here

    @property
    def lanes_used(self) -> int:
        return self.state.lanes_used

    def view(self) -> ConnectionView:
        state = self.state
        return ConnectionView(
            id=state.session_id[:8],
            transport="ws",
            tenant=self.tenant,
            opened_at=self.opened_at,
            lanes=state.lanes_used,
            in_flight=state.lanes.in_flight,
            queued=state.lanes.queued(),
            cache_items=len(state.cache),
            cache_tokens=state.cache.tokens(),
            turns=self.turns,
        )

    # Receiving -------------------------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        watchdogs = [asyncio.create_task(self._age_limit()), asyncio.create_task(self._idle_limit())]
        try:
            while await self._receive_one():
                self.last_activity = loop.time()
        except WebSocketDisconnect:
            return
        except RevokedKey as revoked:
            await self.send_error(revoked.error)
            await self._close(CLOSE_POLICY_VIOLATION, "API key revoked")
        except ConnectionExpired as expired:
            await self._connection_limit(expired.lane)
        finally:
            for watchdog in watchdogs:
                watchdog.cancel()
            await self._shutdown()

    async def _receive_one(self) -> bool:
        """Handle the next frame; False once the client has gone. (A frame is not kept past its
        handling: a loop variable would hold the last one, megabytes perhaps, while the socket idles.)"""
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            return False
        await self._on_message(message)
        return True

    async def _on_message(self, message: dict[str, Any]) -> None:
        times = StageTimes()
        text = message.get("text")
        if text is None:
            await self.send_error(BINARY_FRAME)
            return
        large = len(text) > self.settings.offload_bytes
        try:
            with times.measure("validate"):
                raw = await offload.call(large, lambda: self._decode(text))
        except ApiError as err:
            await self.send_error(err)
            return
        lane = lane_of(raw.get("stream_id"))  # errors about a request go on its lane, when it named a valid one
        try:
            await self._dispatch(raw, times, len(text))
        except ApiError as err:
            await self.send_error(err, lane)
        except (RevokedKey, ConnectionExpired):
            raise
        except Exception:  # a bug must cost this request, never the connection and its other lanes
            log.exception("websocket request failed")
            await self.send_error(SERVER_ERROR, lane)

    def _decode(self, text: str) -> dict[str, Any]:
        raw = bounds.decode(text, self.bounds, "frame")
        if not isinstance(raw, dict):
            raise ws_error(400, "invalid_event", "Each frame must be a JSON object with a 'type'.")
        return raw

    async def _dispatch(self, raw: dict[str, Any], times: StageTimes, size: int) -> None:
        kind = raw.get("type")
        if kind == "response.create":
            await self._on_create(raw, times, size)
        elif kind == "response.steer":
            await self._on_steer(raw)
        else:
            raise ws_error(
                400,
                "unknown_event_type",
                f"Unknown event type {kind!r}: expected 'response.create' or 'response.steer'.",
                param="type",
            )

    def _check_key(self) -> None:
        """The key must still be valid (and still the same tenant's) for every request on the socket."""
        try:
            tenant = self.keys.tenant(self.authorization)
        except ApiError as err:
            raise RevokedKey(err) from None
        if tenant != self.tenant:
            raise RevokedKey(unauthorized("This API key now belongs to another project; reconnect.", code="invalid_api_key"))

    async def _on_create(self, raw: dict[str, Any], times: StageTimes, size: int) -> None:
        """``size``: the frame's length, counted against the connection's pending bytes."""
        self._check_key()
        if self.service.draining:
            raise SHUTTING_DOWN
        if self.expired:
            raise ConnectionExpired(raw.get("stream_id"))
        self.service.limiter.check(self.tenant)
        with times.measure("validate"):
            large = size > self.settings.offload_bytes
            intake = await offload.intake(large, lambda: create_from(raw, websocket=True, limits=self.bounds))
        fault = self.service.draw_fault(intake.request, "ws")
        if fault is not None and fault.kind == "connection-limit":
            raise ConnectionExpired(raw.get("stream_id"))
        self._start(self.state.submit(intake.request, times, intake.renderer, size, fault))

    async def _on_steer(self, raw: dict[str, Any]) -> None:
        self._check_key()
        target, raw_input = raw.get("previous_response_id"), raw.get("input")
        if self.expired:
            refusal = ("websocket_connection_limit_reached", "This connection has reached its age limit.")
            await self._send(steer_failed(target, raw_input, *refusal))
            return
        try:
            self.service.limiter.check(self.tenant)  # a steer starts a generation like any request
        except ApiError as err:
            await self._send(steer_failed(target, raw_input, "rate_limit_exceeded", err.message, "requests"))
            return
        await self._send(self.state.steer(target, raw_input))

    # Running turns ---------------------------------------------------------------------------

    def _start(self, jobs: list[Job]) -> None:
        if self._closing:
            return
        for job in jobs:
            self._spawn(self._run(job))

    async def _run(self, job: Job) -> None:
        job.started()
        turn = None
        try:
            turn = await self.service.prepare(job.request, job.times, self.tenant, cache=self.state, fault=job.fault)
            self.state.started(job, turn)
            events = self.service.run(turn, "ws", self.persist, self._unsaved_reporter(job.lane))
            async with contextlib.aclosing(events):
                async for event in events:
                    if is_terminal(event):
                        self.state.completed(job, turn)
                        self.turns += 1
                    await self.send(event, job.lane)
        except StreamCut as cut:
            await self._cut(cut, turn.id if turn is not None else "")
        except ApiError as err:  # refused before it started, or its store write failed
            if turn is None:
                self.state.refused(job)
            await self.send_error(err, job.lane)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("websocket turn failed")
            await self.send_error(SERVER_ERROR, job.lane)
        finally:
            after = self.state.ended(job, turn)
            if not self._closing:
                for outbound in after.send:
                    await self._send(outbound)
                self._start(after.start)

    async def _cut(self, cut: StreamCut, response_id: str) -> None:
        """An injected fault ends the connection mid-stream: a close frame 1011, or no close at all."""
        log.info("fault: %s on the connection of %s after %d events", cut.fault.kind, response_id, cut.sent)
        if cut.fault.kind == "close":
            await self._close(CLOSE_INTERNAL_ERROR, "internal error")
            return
        self.outbox.flush()  # the events before the cut reach the client
        await self.outbox.wire.drained()
        self.outbox.wire.abort()

    def _unsaved_reporter(self, lane: str | None) -> Callable[[ApiError], None]:
        """A write behind ``response.completed`` that fails is told to the client as an ``error`` event."""

        def report(err: ApiError) -> None:
            if not self._closing:
                self._spawn(self.send_error(err, lane))

        return report

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Sending ---------------------------------------------------------------------------------

    async def send(self, event: Event, lane: str | None = None) -> None:
        event.stream_id = lane if lane is not None else UNSET
        await self.outbox.send(event)

    async def _send(self, outbound: Outbound) -> None:
        await self.send(outbound.event, outbound.lane)

    async def send_error(self, err: ApiError, lane: str | None = None) -> None:
        self.service.observe_error(err)
        await self.send(WsError.of(err), lane)

    # Limits and shutdown ---------------------------------------------------------------------

    async def _age_limit(self) -> None:
        """At the age limit, refuse new work; close once in-flight work ends, or after the drain timeout
        at the latest (steering cannot keep an expired socket open)."""
        await asyncio.sleep(self.settings.ws_connection_max_age_s)
        self.expired = True
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while self.state.busy and time.monotonic() < deadline:
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
        await self._close(CLOSE_GOING_AWAY)

    async def _close(self, code: int, reason: str = "") -> None:
        self.outbox.flush()  # what was said before the close frame leaves before it
        await self.outbox.wire.drained()
        if self.websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(OSError, RuntimeError, WebSocketDisconnect):
                await self.websocket.close(code, reason)

    async def _idle_limit(self) -> None:
        """One timer per connection: close (1001) once nothing has arrived and nothing has run for the
        idle limit. Re-armed only when it fires, so frames cost no timer work."""
        loop, idle = asyncio.get_running_loop(), self.settings.ws_idle_timeout_s
        while True:
            await asyncio.sleep(max(0.0, self.last_activity + idle - loop.time()))
            if self.state.busy:
                self.last_activity = loop.time()
            elif loop.time() - self.last_activity >= idle:
                await self._close(CLOSE_GOING_AWAY, "idle timeout")
                return

    async def drain(self, timeout_s: float) -> None:
        """Server shutdown: let in-flight responses finish, then close with 1012 so SDKs reconnect."""
        deadline = time.monotonic() + timeout_s
        while self.state.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await self._close(CLOSE_SERVICE_RESTART, "server restarting")

    async def _shutdown(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.state.mcp_sessions is not None:  # the MCP sessions lived as long as the connection
            await self.state.mcp_sessions.aclose()
        self.state.close()


def routes(service: ResponsesService, settings: Settings, keys: KeyRing, clock: FlushClock) -> list[WebSocketRoute]:
    """``clock``: the process's flush tick and load signal, shared by every connection."""

    async def refuse(websocket: WebSocket) -> None:
        err = upgrade_required("WebSocket mode is turned off on this server; use HTTP.", code="websocket_disabled")
        await websocket.send_denial_response(error_response(err))

    async def endpoint(websocket: WebSocket) -> None:
        tenant = websocket.scope.get("state", {}).get("tenant", "")  # set by the auth middleware
        try:
            service.connection_limit.acquire(tenant)
        except ApiError as err:
            await websocket.send_denial_response(error_response(err))
            return
        try:
            await websocket.accept()
            clock.start(asyncio.get_running_loop())
            wire = websocket.scope["extensions"].get(WIRE) or AsgiWire(websocket.send)
            session = Session(service, settings, websocket, keys, tenant, Outbox(wire, clock))
            service.open_connections.add(session)
            try:
                await session.serve()
            finally:
                service.open_connections.discard(session)
        finally:
            service.connection_limit.release(tenant)

    return [WebSocketRoute("/v1/responses", endpoint if settings.websocket else refuse)]
