"""Three ways to send a turn, behind one interface.

| transport | what a turn sends |
|---|---|
| ``HttpStatelessTransport`` | the whole history, ``store=false`` (what most frameworks do) |
| ``HttpChainedTransport`` | new items + ``previous_response_id``, ``store=true`` |
| ``WebSocketTransport`` | new items + ``previous_response_id`` on one socket (``store=false`` by default) |

Every transport streams, and yields the server's events as dicts. Each recovers from what
``client.retry`` says can be recovered from (server errors, rate limits, cut streams, a lost cache),
yielding ``RESTARTED`` before it sends a turn again. The WebSocket transport recovers by the spec's
paths when its socket is lost: with ``store=true`` it continues from ``previous_response_id`` on a
new socket; with ``store=false`` it resends the full context. If the upgrade is refused (404 or 426)
it falls back to HTTP for the rest of the session.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from loopway.client import retry
from loopway.client.retry import Recovery, RetryPolicy

log = logging.getLogger("loopway.client")

TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
RESTARTED = "client.turn_restarted"  # yielded when a turn is sent again: drop its partial state


class ServerError(Exception):
    """An error the server returned (HTTP status or ``error`` event), in OpenAI's shape."""

    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(f"{status} {error.get('code')}: {error.get('message')}")
        self.status = status
        self.error = error
        self.code = error.get("code")


class TurnRequest(msgspec.Struct, kw_only=True):
    model: str
    instructions: str | None
    tools: list[dict[str, Any]]
    history: list[dict[str, Any]]  # the whole context, new items included
    new_items: list[dict[str, Any]]
    previous_response_id: str | None
    extra: dict[str, Any] = msgspec.field(default_factory=dict)

    def body(self, *, full: bool, store: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "tools": self.tools, "store": store, **self.extra}
        if self.instructions is not None:
            body["instructions"] = self.instructions
        if full or self.previous_response_id is None:
            body["input"] = self.history
        else:
            body["input"] = self.new_items
            body["previous_response_id"] = self.previous_response_id
        return body


class Transport(Protocol):
    name: str

    def stream(self, turn: TurnRequest) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


async def _sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data = line[5:].strip()
            if data and data != "[DONE]":
                yield json.loads(data)


class _HttpTransport:
    name = "http"
    store = False
    full_history = True

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        client: httpx.AsyncClient | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=httpx.Timeout(300, connect=30)
        )
        self.retry = retry or RetryPolicy()
        self.recoveries: Counter[str] = Counter()  # what went wrong, and was recovered from

    async def stream(self, turn: TurnRequest) -> AsyncIterator[dict[str, Any]]:
        """The turn's events; a failure ``client.retry`` recovers from restarts it (``RESTARTED``)."""
        full, failure = self.full_history, None
        for attempt in range(self.retry.max_attempts):
            if failure is not None:
                yield {"type": RESTARTED}
                await asyncio.sleep(failure.wait)
            body = turn.body(full=full, store=self.store) | {"stream": True}
            try:
                async with self.client.stream("POST", "/responses", json=body) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        failure = _refusal(
                            response.status_code, _error_of(response), response.headers, self.retry, attempt + 1
                        )
                    else:
                        async for event in _sse_events(response):
                            failure = _failure_in(event, self.retry, attempt + 1)
                            if failure is not None:
                                break
                            yield event
                            if event.get("type") in TERMINAL:
                                return
                        else:
                            failure = _Failure("stream_cut", self.retry.delay(attempt + 1))
            except httpx.TransportError as exc:  # refused, reset, or cut mid-body
                failure = _Failure(f"connection_{type(exc).__name__}", self.retry.delay(attempt + 1))
            self.recoveries[failure.reason] += 1
            full = full or failure.recovery is Recovery.RESEND_FULL
        raise ServerError(503, {"code": "retries_exhausted", "message": f"gave up after {failure}"})

    async def aclose(self) -> None:
        await self.client.aclose()


class _Failure(msgspec.Struct, frozen=True):
    """Why a send of a turn did not finish it, how long to wait, and how to send again."""

    reason: str
    wait: float
    recovery: Recovery = Recovery.RETRY


def _refusal(status: int, error: dict[str, Any], headers: Any, policy: RetryPolicy, attempt: int) -> _Failure:
    """An error answer (HTTP, or a socket's ``error`` event) as a failure to recover from; one that
    cannot be recovered from is raised as the caller's ``ServerError``."""
    recovery = retry.for_error(status, error)
    if recovery is Recovery.GIVE_UP:
        raise ServerError(status, error)
    wait = 0.0 if recovery is Recovery.RESEND_FULL else policy.delay(attempt, headers)
    return _Failure(str(error.get("code") or status), wait, recovery)


def _failure_in(event: dict[str, Any], policy: RetryPolicy, attempt: int) -> _Failure | None:
    """A streamed event that ends the attempt: an ``error`` event, or a failure worth retrying."""
    kind = event.get("type")
    if kind == "error":  # a stream that breaks after its start (SSE's flat error event)
        return _Failure(str(event.get("code") or "stream_error"), policy.delay(attempt))
    if kind in TERMINAL and retry.for_response(event.get("response") or {}) is not None:
        return _Failure("response_failed", policy.delay(attempt))
    return None


class HttpStatelessTransport(_HttpTransport):
    name = "http-stateless"


class HttpChainedTransport(_HttpTransport):
    name = "http-chained"
    store = True
    full_history = False


def _error_of(response: httpx.Response) -> dict[str, Any]:
    try:
        error = response.json().get("error")
        if isinstance(error, dict):
            return error
    except ValueError:
        pass
    return {"code": None, "message": response.text[:500]}


class WebSocketTransport:
    """One socket for the whole loop; reconnects and falls back as the spec says."""

    name = "ws"

    def __init__(
        self, base_url: str, api_key: str | None = None, *, store: bool = False, retry: RetryPolicy | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/responses"
        self.api_key = api_key
        self.store = store
        self.retry = retry or RetryPolicy()
        self.recoveries: Counter[str] = Counter()  # what went wrong, and was recovered from
        self.reconnects = 0
        self.fallback: _HttpTransport | None = None
        self._ws: ClientConnection | None = None
        self._fresh = True  # the socket has no cache yet: a store=false continuation must resend everything

    async def _socket(self) -> ClientConnection | None:
        if self._ws is not None:
            return self._ws
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            self._ws = await connect(
                self.url,
                additional_headers=headers,
                max_size=None,
                compression="deflate",
                open_timeout=30,
                ping_interval=None,
            )
        except InvalidStatus as exc:
            if exc.response.status_code in (404, 426):  # no WebSocket mode here: HTTP from now on
                cls = HttpChainedTransport if self.store else HttpStatelessTransport
                self.fallback = cls(self.base_url, self.api_key, retry=self.retry)
                log.info("WebSocket upgrade refused (%s): falling back to HTTP", exc.response.status_code)
                return None
            raise
        self._fresh = True
        return self._ws

    async def _drop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        self.reconnects += 1

    async def stream(self, turn: TurnRequest) -> AsyncIterator[dict[str, Any]]:
        """The turn's events; a failure ``client.retry`` recovers from restarts it (``RESTARTED``)."""
        full, failure = False, None
        for attempt in range(self.retry.max_attempts):
            if failure is not None:
                yield {"type": RESTARTED}
                await asyncio.sleep(failure.wait)
            ws = await self._socket() if self.fallback is None else None
            if ws is None and self.fallback is not None:
                async for event in self.fallback.stream(turn):
                    yield event
                return
            assert ws is not None
            resend = full or (self._fresh and not self.store)  # a new socket knows nothing of a store=false chain
            body = {"type": "response.create", **turn.body(full=resend, store=self.store)}
            try:
                await ws.send(json.dumps(body))
                async for raw in ws:
                    event = json.loads(raw)
                    failure = self._failure_in(event, attempt + 1)
                    if failure is not None:
                        break
                    if event.get("type") in TERMINAL:
                        self._fresh = False  # before the yield: the consumer stops reading at this event
                        yield event
                        return
                    yield event
                else:
                    failure = _Failure("closed", self.retry.delay(attempt + 1), Recovery.RECONNECT)
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else "abrupt"
                failure = _Failure(f"closed_{code}", self.retry.delay(attempt + 1), Recovery.RECONNECT)
            self.recoveries[failure.reason] += 1
            if failure.recovery is Recovery.RECONNECT:
                await self._drop()
            full = full or failure.recovery is Recovery.RESEND_FULL
        raise ServerError(503, {"code": "retries_exhausted", "message": f"gave up after {failure}"})

    def _failure_in(self, event: dict[str, Any], attempt: int) -> _Failure | None:
        kind = event.get("type")
        if kind == "error":
            error = event.get("error") or {}
            return _refusal(int(event.get("status") or 400), error, error.get("headers"), self.retry, attempt)
        if kind in TERMINAL and retry.for_response(event.get("response") or {}) is not None:
            # A failed same-lane continuation evicts its parent from the connection's cache: with
            # store=false only the whole context can run the turn again.
            recovery = Recovery.RETRY if self.store else Recovery.RESEND_FULL
            return _Failure("response_failed", self.retry.delay(attempt), recovery)
        return None

    async def aclose(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        if self.fallback is not None:
            await self.fallback.aclose()


def make_transport(
    kind: str, base_url: str, api_key: str | None = None, *, store: bool | None = None, retry: RetryPolicy | None = None
) -> Transport:
    if kind in ("ws", "websocket"):
        return WebSocketTransport(base_url, api_key, store=bool(store), retry=retry)
    if kind == "http-chained" or (kind == "http" and store):
        return HttpChainedTransport(base_url, api_key, retry=retry)
    if kind in ("http", "http-stateless"):
        return HttpStatelessTransport(base_url, api_key, retry=retry)
    raise ValueError(f"unknown transport {kind!r}: ws, http, http-stateless or http-chained")
