"""``POST /v1/chat/completions`` on the sim engine: JSON, or SSE ``data:`` chunks ending ``[DONE]``.

Bodies are bounded as the Responses API's are (size, arrival time, JSON values and depth, messages),
and a large one is parsed and rendered in a worker thread (``core.ops.offload``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response as HttpResponse
from starlette.responses import StreamingResponse
from starlette.routing import Route

from loopway.chat_completions.stateless import ChatCompletions
from loopway.core.ops import offload
from loopway.engines.base import Engine, EngineError
from loopway.settings import Settings
from loopway.transports.http import read_body
from loopway.transports.sse import HEADERS


class ChatApi:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.completions = ChatCompletions(engine)
        self.settings = settings

    async def create(self, request: Request) -> HttpResponse:
        s = self.settings
        body = await read_body(request, s.max_body_bytes, s.body_timeout_s, s.body_min_rate)
        chat, prepared = await offload.call(
            len(body) > s.offload_bytes, lambda: self.completions.prepare(body, s.json_bounds())
        )
        if not chat.stream:
            answer = await self.completions.complete(chat, prepared)
            return HttpResponse(msgspec.json.encode(answer), media_type="application/json")
        chunks = await self.completions.chunks(chat, prepared)
        return StreamingResponse(_sse(chunks), media_type="text/event-stream", headers=HEADERS)


async def _sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield b"data: " + msgspec.json.encode(chunk) + b"\n\n"
    except EngineError as exc:  # after the 200: the error goes in the stream, as vLLM sends it
        error = {"error": {"message": str(exc), "type": "server_error", "code": exc.code}}
        yield b"data: " + msgspec.json.encode(error) + b"\n\n"
        return
    yield b"data: [DONE]\n\n"


def routes(engine: Engine, settings: Settings) -> list[Route]:
    return [Route("/v1/chat/completions", ChatApi(engine, settings).create, methods=["POST"])]
