"""Server-sent events framing for Responses streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.responses import StreamingResponse
from starlette.types import Send

from loopway.core.ops.fault_injection import StreamCut
from loopway.protocol.events import Event, sse_frame


def frame_any(event: Event | dict[str, Any]) -> bytes:
    """Frame a live event, or a stored one kept as plain JSON."""
    if isinstance(event, Event):
        return sse_frame(event)
    return b"event: " + str(event.get("type", "")).encode() + b"\ndata: " + msgspec.json.encode(event) + b"\n\n"


async def frames(events: AsyncIterator[Event | dict[str, Any]]) -> AsyncIterator[bytes]:
    async for event in events:
        yield frame_any(event)


HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class CuttableStream(StreamingResponse):
    """An SSE response whose events may end it without its last chunk: the server closes the
    connection mid-body, as a crashed proxy or server would, and the client reads a truncated stream."""

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        except StreamCut:
            return  # no closing chunk: uvicorn closes the connection on an unfinished body
