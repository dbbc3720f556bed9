"""HTTP routes of the Responses API: JSON, and SSE when ``stream`` is true."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response as HttpResponse
from starlette.routing import Route

from loopway.core.ops import offload
from loopway.core.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from loopway.core.ops.timing import StageTimes
from loopway.core.records.driver import Persist
from loopway.core.service import ResponsesService
from loopway.core.turn.turn import Turn
from loopway.protocol import response as wire
from loopway.protocol.errors import ApiError, invalid_request, invalid_value, request_timeout, server_error, too_large
from loopway.protocol.request import create_from, decode_json, parse_create
from loopway.settings import Settings
from loopway.transports.error_responses import error_response
from loopway.transports.sse import HEADERS, CuttableStream, StreamCut, frame_any, frames

log = logging.getLogger("loopway.http")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> HttpResponse:
    body = wire.encode(data) if isinstance(data, wire.Response) else msgspec.json.encode(data)
    return HttpResponse(body, status_code=status, media_type="application/json", headers=headers)


async def read_body(request: Request, limit: int, timeout_s: float = 30.0, min_rate: int = 4096) -> bytes:
    """The body, at most ``limit`` bytes, arriving within ``timeout_s`` plus one second per ``min_rate``
    bytes received (so a large upload on a slow link passes and a trickle does not)."""
    declared = request.headers.get("content-length")
    refused = too_large(f"Request body too large: the maximum is {limit} bytes.")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise refused
    chunks, size = [], 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(timeout_s) as deadline:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise refused
                chunks.append(chunk)
                deadline.reschedule(started + timeout_s + size / max(1, min_rate))
    except TimeoutError:
        raise request_timeout(
            f"The request body did not arrive in time ({size} bytes after {loop.time() - started:.0f} s).",
        ) from None
    return b"".join(chunks)


async def sse_turn(service: ResponsesService, turn: Turn) -> AsyncIterator[bytes]:
    """A turn as SSE; a store that fails the final write ends the stream with an ``error`` event,
    and an injected ``drop`` cuts the connection where it says (``StreamCut``, to ``CuttableStream``)."""
    try:
        async with contextlib.aclosing(service.run(turn, "http", Persist.FIRST)) as events:
            async for event in events:
                yield frame_any(event)
    except StreamCut as cut:
        log.info("fault: dropping the connection of %s after %d events", turn.id, cut.sent)
        raise
    except ApiError as err:
        yield frame_any(turn.assembler.stream_error(err.code, err.message, err.param))


def _sse(events: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> CuttableStream:
    return CuttableStream(events, media_type="text/event-stream", headers={**HEADERS, **(headers or {})})


def int_query(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid_request(
            f"Invalid '{name}': expected an integer, got {raw!r}.", param=name, code="invalid_type"
        ) from None
    if not low <= value <= high:
        raise invalid_request(
            f"Invalid '{name}': {value} is out of range [{low}, {high}].", param=name, code="invalid_value"
        )
    return value


def order_query(request: Request) -> str:
    """A list's ``order``: ``desc`` (newest first, the default) or ``asc``."""
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid_value("order", order, ["asc", "desc"])
    return order


def tenant_of(request: Request) -> str:
    """Set by the auth middleware; the open tenant when auth is off."""
    return getattr(request.state, "tenant", "")


class HttpApi:
    """The HTTP routes: each parses its request, calls the service once, and frames the answer."""

    def __init__(self, service: ResponsesService, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.bounds = settings.json_bounds()

    async def _read(self, request: Request) -> bytes:
        s = self.settings
        return await read_body(request, s.max_body_bytes, s.body_timeout_s, s.body_min_rate)

    async def body(self, request: Request) -> Any:
        """A JSON body, read within the body limits and decoded within the JSON bounds."""
        body = await self._read(request)
        return await offload.call(len(body) > self.settings.offload_bytes, lambda: decode_json(body, self.bounds))

    async def create(self, request: Request) -> HttpResponse:
        times = StageTimes()
        body = await self._read(request)
        with times.measure("validate"):
            intake = await offload.intake(
                len(body) > self.settings.offload_bytes, lambda: parse_create(body, limits=self.bounds)
            )
        create = intake.request
        fault = None if create.background else self.service.draw_fault(create, "sse" if create.stream else "http")
        turn = await self.service.prepare(create, times, tenant_of(request), renderer=intake.renderer, fault=fault)
        if create.background:
            return await self._background(turn)
        if create.stream:  # Server-Timing can only carry what happened before the first byte
            timing = {"Server-Timing": times.header(("validate", "resolve", "render"))}
            return _sse(sse_turn(self.service, turn), timing)
        response = await self.service.complete(turn)
        return json_response(response, headers={"Server-Timing": times.header()})

    async def _background(self, turn: Turn) -> HttpResponse:
        queued = await self.service.start_background(turn)
        if turn.request.stream:
            return _sse(frames(await self.service.events(turn.id, -1, turn.tenant)))
        return json_response(queued)

    async def retrieve(self, request: Request) -> HttpResponse:
        response_id = request.path_params["response_id"]
        if request.query_params.get("stream") == "true":
            starting_after = int_query(request, "starting_after", -1, -1, 1 << 62)
            return _sse(frames(await self.service.events(response_id, starting_after, tenant_of(request))))
        return json_response(await self.service.retrieve(response_id, tenant_of(request)))

    async def delete(self, request: Request) -> HttpResponse:
        return json_response(await self.service.delete(request.path_params["response_id"], tenant_of(request)))

    async def cancel(self, request: Request) -> HttpResponse:
        return json_response(await self.service.cancel(request.path_params["response_id"], tenant_of(request)))

    async def input_items(self, request: Request) -> HttpResponse:
        page = await self.service.input_items(
            request.path_params["response_id"],
            limit=int_query(request, "limit", 20, 1, 100),
            order=order_query(request),
            after=request.query_params.get("after"),
            tenant=tenant_of(request),
        )
        return json_response(page)

    async def input_tokens(self, request: Request) -> HttpResponse:
        raw = await self.body(request)
        if isinstance(raw, dict):  # a create body whose streaming and input are optional here
            raw = {**raw, "stream": None, "background": None}
            if raw.get("input") is None and raw.get("previous_response_id") is None:
                raw["input"] = []
        create = create_from(raw, limits=self.bounds)
        return json_response(await self.service.count_input_tokens(create, tenant_of(request)))

    async def compact(self, request: Request) -> HttpResponse:
        return json_response(await self.service.compact(await self.body(request), tenant_of(request)))

    async def health(self, request: Request) -> HttpResponse:
        """200 while the server can answer its default requests (store=true needs the store); else 503."""
        report = await self.service.health()
        return json_response(report, 200 if report["status"] == "ok" else 503)

    async def metrics(self, request: Request) -> HttpResponse:
        return HttpResponse(self.service.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def models(self, request: Request) -> HttpResponse:
        return json_response(self.service.models())

    async def model(self, request: Request) -> HttpResponse:
        return json_response(self.service.model(request.path_params["model_id"]))


def routes(service: ResponsesService, settings: Settings) -> list[Route]:
    api = HttpApi(service, settings)
    return [
        Route("/v1/responses", api.create, methods=["POST"]),
        Route("/v1/responses/input_tokens", api.input_tokens, methods=["POST"]),
        Route("/v1/responses/compact", api.compact, methods=["POST"]),
        Route("/v1/responses/{response_id}", api.retrieve, methods=["GET"]),
        Route("/v1/responses/{response_id}", api.delete, methods=["DELETE"]),
        Route("/v1/responses/{response_id}/cancel", api.cancel, methods=["POST"]),
        Route("/v1/responses/{response_id}/input_items", api.input_items, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", api.model, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/health", api.health, methods=["GET"]),
    ]


async def _api_error(request: Request, exc: Exception) -> HttpResponse:
    assert isinstance(exc, ApiError)
    _observe(request, exc)
    return error_response(exc)


def _observe(request: Request, err: ApiError) -> None:
    service = getattr(request.app.state, "service", None)
    if service is not None:
        service.observe_error(err)


async def _http_error(request: Request, exc: Exception) -> HttpResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed for {request.url.path}."
    else:
        message = str(exc.detail)
    return error_response(ApiError(exc.status_code, message, code=None))


async def _unexpected(request: Request, exc: Exception) -> HttpResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    err = server_error()
    _observe(request, err)
    return error_response(err)


def exception_handlers() -> dict[Any, Any]:
    return {ApiError: _api_error, HTTPException: _http_error, Exception: _unexpected}
