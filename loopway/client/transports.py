"""Three ways to send a turn, behind one interface.

| transport | what a turn sends |
|---|---|
| ``HttpStatelessTransport`` | the whole history, ``store=false`` (what most frameworks do) |
| ``HttpChainedTransport`` | new items + ``previous_response_id``, ``store=true`` |
| ``WebSocketTransport`` | new items + ``previous_response_id`` on one socket (``store=false`` by default) |

Every transport streams, and yields the server's events as dicts. The WebSocket transport
recovers by the spec's paths when its socket is lost: with ``store=true`` it continues from
``previous_response_id`` on a new socket; with ``store=false`` it resends the full context. If the
upgrade is refused (404 or 426) it falls back to HTTP for the rest of the session.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

log = logging.getLogger("loopway.client")

TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
RECONNECTED = "client.reconnected"  # yielded when a turn restarts on a new socket: drop its partial state


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

    def __init__(self, base_url: str, api_key: str | None = None, client: httpx.AsyncClient | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=httpx.Timeout(300, connect=30)
        )

    async def stream(self, turn: TurnRequest) -> AsyncIterator[dict[str, Any]]:
        body = turn.body(full=self.full_history, store=self.store) | {"stream": True}
        async with self.client.stream("POST", "/responses", json=body) as response:
            if response.status_code >= 400:
                await response.aread()
                raise ServerError(response.status_code, _error_of(response))
            async for event in _sse_events(response):
                yield event

    async def aclose(self) -> None:
        await self.client.aclose()


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

    def __init__(self, base_url: str, api_key: str | None = None, *, store: bool = False, max_attempts: int = 4) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/responses"
        self.api_key = api_key
        self.store = store
        self.max_attempts = max_attempts
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
                self.fallback = cls(self.base_url, self.api_key)
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
        for attempt in range(self.max_attempts):
            ws = await self._socket() if self.fallback is None else None
            if ws is None and self.fallback is not None:
                async for event in self.fallback.stream(turn):
                    yield event
                return
            assert ws is not None
            resend = self._fresh and not self.store  # a new socket knows nothing of a store=false chain
            body = {"type": "response.create", **turn.body(full=resend, store=self.store)}
            if attempt:
                yield {"type": RECONNECTED}
            try:
                await ws.send(json.dumps(body))
                async for raw in ws:
                    event = json.loads(raw)
                    if event.get("type") == "error":
                        if self._recoverable(event):
                            await self._drop()
                            break
                        raise ServerError(int(event.get("status") or 400), event.get("error") or {})
                    if event.get("type") in TERMINAL:
                        self._fresh = False  # before the yield: the consumer stops reading at this event
                        yield event
                        return
                    yield event
                else:
                    await self._drop()  # closed without a terminal event
            except ConnectionClosed:
                await self._drop()
        raise ServerError(503, {"code": "connection_lost", "message": "the WebSocket kept closing; gave up"})

    def _recoverable(self, event: dict[str, Any]) -> bool:
        code = (event.get("error") or {}).get("code")
        if code == "websocket_connection_limit_reached":
            return True
        # The cache was lost (a new socket, a server restart): resend everything on a new socket.
        return code == "previous_response_not_found" and not self.store and not self._fresh

    async def aclose(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        if self.fallback is not None:
            await self.fallback.aclose()


def make_transport(kind: str, base_url: str, api_key: str | None = None, *, store: bool | None = None) -> Transport:
    if kind in ("ws", "websocket"):
        return WebSocketTransport(base_url, api_key, store=bool(store))
    if kind == "http-chained" or (kind == "http" and store):
        return HttpChainedTransport(base_url, api_key)
    if kind in ("http", "http-stateless"):
        return HttpStatelessTransport(base_url, api_key)
    raise ValueError(f"unknown transport {kind!r}: ws, http, http-stateless or http-chained")
