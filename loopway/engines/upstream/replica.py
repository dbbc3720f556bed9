"""The connection to one upstream server: pooled, errors mapped (``fleet`` retries elsewhere).

- A pooled connection the server had closed (llama-cpp-python drops it after a broken stream) is
  retried once at once; any other failure before the response headers is the server's: it raises
  ``EngineError`` and the fleet tries another replica (or this one again, after a pause).
- An upstream 4xx is the client's error and becomes the matching ``ApiError`` (same status, the
  upstream's message), except 401/403: those mean loopway's own upstream credentials are wrong,
  which is a server error, not the client's.
- 5xx, timeouts and streams that break are engine failures: the response fails with ``server_error``.
- Every read is bounded, counted after decompression: an error body to ``MAX_ERROR_BODY`` (the
  rest is not read), a line of the event stream to ``MAX_LINE`` (a longer one breaks the stream), and
  an event's JSON nesting by the parser's own recursion limit (a deeper one breaks it too).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from loopway.engines.base import EngineError
from loopway.protocol.errors import ApiError

MAX_ERROR_BODY = 64 << 10  # bytes of an upstream's error answer that are read
MAX_LINE = 16 << 20  # bytes of one line of its event stream (a Responses upstream's last event holds the whole output)


class Upstream:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 600.0,
        max_connections: int = 256,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=10.0, pool=30.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def open(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """POST and return the streaming response once its status is known to be good."""
        for attempt in range(2):
            try:
                response = await self.client.send(self.client.build_request("POST", path, json=body), stream=True)
            except httpx.TimeoutException as exc:
                raise EngineError(f"The upstream at {self.base_url} timed out ({type(exc).__name__}).") from None
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if attempt == 0:
                    continue  # most likely a pooled connection the server had closed: nothing was sent
                raise EngineError(f"The upstream at {self.base_url} broke the connection: {exc}") from None
            except httpx.TransportError as exc:
                raise EngineError(f"The upstream at {self.base_url} is unreachable: {type(exc).__name__} {exc}") from None
            if response.status_code >= 400:
                try:
                    body = await read_bounded(response, MAX_ERROR_BODY)
                except httpx.HTTPError:
                    body = b""
                finally:
                    await response.aclose()
                raise upstream_error(response, body)
            return response
        raise AssertionError("unreachable")

    async def events(self, response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
        """The ``data:`` payloads of an SSE stream, until ``[DONE]`` or its end."""
        try:
            async for line in bounded_lines(response, MAX_LINE):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                if data:
                    yield json.loads(data)
        except (httpx.HTTPError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            raise EngineError(f"The upstream stream broke: {type(exc).__name__}: {str(exc)[:200]}") from None
        finally:
            await response.aclose()

    async def alive(self, timeout_s: float) -> bool:
        """``GET /models``: any answer below 500 says the server is there and serving."""
        try:
            return (await self.client.get("/models", timeout=timeout_s)).status_code < 500
        except httpx.HTTPError:
            return False

    async def aclose(self) -> None:
        await self.client.aclose()


async def read_bounded(response: httpx.Response, limit: int) -> bytes:
    """At most ``limit`` bytes of the body, decompressed; the rest is left unread."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk[: limit - size])
        size += len(chunks[-1])
        if size >= limit:
            break
    return b"".join(chunks)


async def bounded_lines(response: httpx.Response, limit: int) -> AsyncIterator[bytes]:
    """The body's lines (without their ending); a line longer than ``limit`` bytes is an error, so
    a stream that never ends a line costs ``limit`` bytes, not what it sends."""
    parts: list[bytes] = []  # the line so far (joined once it ends: no copy per chunk)
    size = 0
    async for chunk in response.aiter_bytes():
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            parts.append(chunk[start:end])
            yield b"".join(parts).rstrip(b"\r")
            parts, size, start = [], 0, end + 1
        if start < len(chunk):
            parts.append(chunk[start:])
            size += len(chunk) - start
        if size > limit:
            raise ValueError(f"a line of the upstream's stream passed {limit} bytes")
    if parts:
        yield b"".join(parts).rstrip(b"\r")


def upstream_error(response: httpx.Response, body: bytes | None = None) -> Exception:
    """The error an upstream's 4xx or 5xx means; ``body``: what was read of its answer."""
    status = response.status_code
    raw = response.content if body is None else body
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError, RecursionError):
        error = None
    if isinstance(error, str):
        error = {"message": error}
    if not isinstance(error, dict):
        error = {"message": raw[:500].decode("utf-8", "replace") or response.reason_phrase}
    message = str(error.get("message") or response.reason_phrase)
    if status in (401, 403) or status >= 500:
        return EngineError(f"The upstream answered {status}: {message}")
    code = error.get("code")
    return ApiError(
        status,
        f"The upstream refused the request: {message}",
        type=str(error.get("type") or "invalid_request_error"),
        code=str(code) if code is not None else "upstream_error",
        param=error.get("param") if isinstance(error.get("param"), str) else None,
    )
