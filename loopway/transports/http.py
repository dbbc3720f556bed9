"""HTTP routes of the Responses API: JSON, and SSE when ``stream`` is true."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response as HttpResponse
from starlette.responses import StreamingResponse
from starlette.routing import Route

from loopway.core.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from loopway.core.pipeline import Turn, is_terminal
from loopway.core.service import ResponsesService
from loopway.core.timing import StageTimes
from loopway.protocol import response as wire
from loopway.protocol.errors import ApiError, invalid_request, invalid_value, server_error
from loopway.protocol.events import StreamError
from loopway.protocol.request import CreateBody, decode_json, shape_check, validate_create
from loopway.settings import Settings
from loopway.transports.sse import HEADERS, frame_any, frames

log = logging.getLogger("loopway.http")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> HttpResponse:
    body = wire.encode(data) if isinstance(data, wire.Response) else msgspec.json.encode(data)
    return HttpResponse(body, status_code=status, media_type="application/json", headers=headers)


def error_response(err: ApiError) -> HttpResponse:
    return json_response(err.body(), err.status, headers=err.headers or None)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    too_large = ApiError(413, f"Request body too large: the maximum is {limit} bytes.", code="request_too_large")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _stream_turn(service: ResponsesService, turn: Turn) -> AsyncIterator[bytes]:
    async for event in service.run(turn):
        if is_terminal(event):
            try:
                await service.persist(turn)  # durable before the client hears "completed"
            except ApiError as err:  # the store went away mid-response: say so instead of "completed"
                yield frame_any(turn.assembler.stamp(StreamError(code=err.code, message=err.message, param=err.param)))
                return
        yield frame_any(event)


def _int_query(request: Request, name: str, default: int, low: int, high: int) -> int:
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


def tenant_of(request: Request) -> str:
    """Set by the auth middleware; the open tenant when auth is off."""
    return getattr(request.state, "tenant", "")


def routes(service: ResponsesService, settings: Settings) -> list[Route]:
    async def create(request: Request) -> HttpResponse:
        times = StageTimes()
        body = await read_body(request, settings.max_body_bytes)
        with times.measure("validate"):
            create_request = validate_create(shape_check(decode_json(body), CreateBody))
        turn = await service.prepare(create_request, times, tenant_of(request))
        if create_request.background:
            queued = await service.start_background(turn)
            if create_request.stream:
                events = await service.events(turn.id, -1, turn.tenant)
                return StreamingResponse(frames(events), media_type="text/event-stream", headers=HEADERS)
            return json_response(queued)
        if create_request.stream:  # Server-Timing can only carry what happened before the first byte
            return StreamingResponse(
                _stream_turn(service, turn),
                media_type="text/event-stream",
                headers={**HEADERS, "Server-Timing": times.header(("validate", "resolve", "render"))},
            )
        async for event in service.run(turn):
            if is_terminal(event):
                await service.persist(turn)
        return json_response(turn.response, headers={"Server-Timing": times.header()})

    async def retrieve(request: Request) -> HttpResponse:
        response_id = request.path_params["response_id"]
        if request.query_params.get("stream") == "true":
            starting_after = _int_query(request, "starting_after", -1, -1, 1 << 62)
            events = await service.events(response_id, starting_after, tenant_of(request))
            return StreamingResponse(frames(events), media_type="text/event-stream", headers=HEADERS)
        return json_response(await service.retrieve(response_id, tenant_of(request)))

    async def delete(request: Request) -> HttpResponse:
        return json_response(await service.delete(request.path_params["response_id"], tenant_of(request)))

    async def cancel(request: Request) -> HttpResponse:
        return json_response(await service.cancel(request.path_params["response_id"], tenant_of(request)))

    async def input_items(request: Request) -> HttpResponse:
        order = request.query_params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise invalid_value("order", order, ["asc", "desc"])
        page = await service.input_items(
            request.path_params["response_id"],
            limit=_int_query(request, "limit", 20, 1, 100),
            order=order,
            after=request.query_params.get("after"),
            tenant=tenant_of(request),
        )
        return json_response(page)

    async def input_tokens(request: Request) -> HttpResponse:
        raw = decode_json(await read_body(request, settings.max_body_bytes))
        if isinstance(raw, dict):
            raw = {**raw, "stream": None, "background": None}
            if raw.get("input") is None and raw.get("previous_response_id") is None:
                raw["input"] = []
        create_request = validate_create(shape_check(raw, CreateBody))
        return json_response(await service.count_input_tokens(create_request, tenant_of(request)))

    async def compact(request: Request) -> HttpResponse:
        raw = decode_json(await read_body(request, settings.max_body_bytes))
        return json_response(await service.compact(raw, tenant_of(request)))

    async def health(request: Request) -> HttpResponse:
        return json_response({"status": "ok"})

    async def metrics(request: Request) -> HttpResponse:
        return HttpResponse(service.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def models(request: Request) -> HttpResponse:
        return json_response(service.models())

    async def model(request: Request) -> HttpResponse:
        return json_response(service.model(request.path_params["model_id"]))

    return [
        Route("/v1/responses", create, methods=["POST"]),
        Route("/v1/responses/input_tokens", input_tokens, methods=["POST"]),
        Route("/v1/responses/compact", compact, methods=["POST"]),
        Route("/v1/responses/{response_id}", retrieve, methods=["GET"]),
        Route("/v1/responses/{response_id}", delete, methods=["DELETE"]),
        Route("/v1/responses/{response_id}/cancel", cancel, methods=["POST"]),
        Route("/v1/responses/{response_id}/input_items", input_items, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", model, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]


async def _api_error(request: Request, exc: Exception) -> HttpResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


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
    return error_response(server_error())


def exception_handlers() -> dict[Any, Any]:
    return {ApiError: _api_error, HTTPException: _http_error, Exception: _unexpected}
