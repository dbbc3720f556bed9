"""WebSocket mode on ``/v1/responses``: receiving frames, sending events, close codes and tasks.

The rules of the mode (lanes, the connection cache, parents, eviction, steering, what follows a
turn) live in ``core.connection.ConnectionState``; the turn itself runs on the same service and
driver as HTTP. A session only turns frames into calls on them and their answers into frames.

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
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from loopway.core.connection import ConnectionState, Job, Outbound
from loopway.core.driver import Persist
from loopway.core.pipeline import is_terminal
from loopway.core.service import ResponsesService
from loopway.core.timing import StageTimes
from loopway.protocol.errors import ApiError
from loopway.protocol.events import Event, WsError, encode_event
from loopway.protocol.request import create_from, valid_stream_id
from loopway.settings import Settings
from loopway.transports.errors import error_response

log = logging.getLogger("loopway.ws")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_SERVICE_RESTART = 1012

_DECODER = msgspec.json.Decoder()


def ws_error(status: int, code: str, message: str, param: str | None = None) -> ApiError:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return ApiError(status, message, type=kind, code=code, param=param)


SHUTTING_DOWN = ws_error(503, "server_shutting_down", "The server is restarting; reconnect to continue.")
SERVER_ERROR = ws_error(500, "server_error", "The server had an error processing this request.")


class Session:
    """One WebSocket connection: frames in, events out, a task per running turn."""

    def __init__(self, service: ResponsesService, settings: Settings, websocket: WebSocket, tenant: str) -> None:
        self.service = service
        self.settings = settings
        self.websocket = websocket
        self.tenant = tenant
        self.state = ConnectionState(settings.ws_max_in_flight, settings.ws_max_streams)
        self.persist = Persist.FIRST if settings.ws_durable_store else Persist.BEHIND
        self.expired = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._send_lock = asyncio.Lock()
        self._closing = False

    @property
    def lanes_used(self) -> int:
        return self.state.lanes_used

    # Receiving -------------------------------------------------------------------------------

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
                if not self.state.busy:
                    return None

    async def _on_message(self, message: dict[str, Any]) -> None:
        times = StageTimes()
        try:
            with times.measure("validate"):
                raw = self._decode(message)
        except ApiError as err:
            await self.send_error(err)
            return
        lane = raw.get("stream_id")
        try:
            await self._dispatch(raw, times)
        except ApiError as err:
            await self.send_error(err, lane if valid_stream_id(lane) else None)

    async def _dispatch(self, raw: dict[str, Any], times: StageTimes) -> None:
        kind = raw.get("type")
        if kind == "response.create":
            await self._on_create(raw, times)
        elif kind == "response.steer":
            await self._send(self.state.steer(raw.get("previous_response_id"), raw.get("input")))
        else:
            raise ws_error(
                400,
                "unknown_event_type",
                f"Unknown event type {kind!r}: expected 'response.create' or 'response.steer'.",
                param="type",
            )

    def _decode(self, message: dict[str, Any]) -> dict[str, Any]:
        text = message.get("text")
        if text is None:
            raise ws_error(
                400,
                "binary_frames_not_supported",
                "Binary frames are not supported: send each event as a JSON text frame.",
            )
        if len(text) > self.settings.max_frame_bytes:
            raise ws_error(
                413,
                "frame_too_large",
                f"The frame is {len(text)} bytes; the maximum is {self.settings.max_frame_bytes} bytes.",
            )
        try:
            raw = _DECODER.decode(text)
        except msgspec.DecodeError as exc:
            raise ws_error(400, "invalid_json", f"The frame is not valid JSON ({exc}).") from None
        if not isinstance(raw, dict):
            raise ws_error(400, "invalid_event", "Each frame must be a JSON object with a 'type'.")
        return raw

    async def _on_create(self, raw: dict[str, Any], times: StageTimes) -> None:
        if self.service.draining:
            raise SHUTTING_DOWN
        if self.expired:
            lane = raw.get("stream_id")
            await self._connection_limit(lane if valid_stream_id(lane) else None)
            return
        self.service.limiter.check(self.tenant)
        with times.measure("validate"):
            request = create_from(raw, websocket=True)
        self._start(self.state.submit(request, times))

    # Running turns ---------------------------------------------------------------------------

    def _start(self, jobs: list[Job]) -> None:
        if self._closing:
            return
        for job in jobs:
            task = asyncio.create_task(self._run(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, job: Job) -> None:
        job.started()
        turn = None
        try:
            turn = await self.service.prepare(job.request, job.times, self.tenant, cache=self.state)
            self.state.started(job, turn)
            async for event in self.service.run(turn, "ws", self.persist):
                if is_terminal(event):
                    self.state.completed(job, turn)
                await self.send(event, job.lane)
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

    # Sending ---------------------------------------------------------------------------------

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

    async def _send(self, outbound: Outbound) -> None:
        await self.send(outbound.event, outbound.lane)

    async def send_error(self, err: ApiError, lane: str | None = None) -> None:
        await self.send(WsError.of(err), lane)

    # Limits and shutdown ---------------------------------------------------------------------

    async def _age_limit(self) -> None:
        await asyncio.sleep(self.settings.ws_connection_max_age_s)
        self.expired = True
        while self.state.busy:
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
        while self.state.busy and time.monotonic() < deadline:
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
        self.state.close()


def routes(service: ResponsesService, settings: Settings) -> list[WebSocketRoute]:
    async def refuse(websocket: WebSocket) -> None:
        err = ApiError(426, "WebSocket mode is turned off on this server; use HTTP.", code="websocket_disabled")
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
            session = Session(service, settings, websocket, tenant)
            service.open_connections.add(session)
            try:
                await session.serve()
            finally:
                service.open_connections.discard(session)
        finally:
            service.connection_limit.release(tenant)

    return [WebSocketRoute("/v1/responses", endpoint if settings.websocket else refuse)]
