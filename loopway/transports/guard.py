"""Connections at the socket level: every request head in time, a cap on open connections, and room kept.

uvicorn arms its keep-alive timer only while a connection is silent and has no timer for a request
head that arrives a byte at a time, so one slow client could hold a connection (a file descriptor)
for as long as it likes. Here:

- every request head, the first and each later one on a keep-alive connection, must be complete
  within ``head_timeout_s`` of the connection opening or of the previous response ending;
- at most ``max_connections`` connections are open. One more evicts the connection that has waited
  longest for a request head (a slow or idle client: nothing is lost), so ``/health`` and new clients
  still get in; if every connection is busy with real work, the newcomer gets a 503 ``server_busy``
  (``/health`` is still answered) and is closed, and past ``reserve`` more it is dropped at once.

Request bodies are timed by the routes that read them (``transports.http.read_body``).

WebSocket frames are capped after decompression by the protocol layer itself (``ws_max_size``: it
stops inflating there and closes with 1009); ``transports.wsprotocol`` lets go of a refused frame's
inflated bytes at once.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

OVERFLOW = "loopway.overflow"  # scope key: this connection is over the cap; answer and close it
RESERVED_FDS = 64  # files, the store, upstream sockets: what the server needs beside its clients


def default_max_connections(reserve: int) -> int:
    """What the process's file-descriptor limit allows, leaving room for everything else."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, soft - RESERVED_FDS - reserve)


class ConnectionGuard:
    """Shared by every connection of one server: the cap, and who is waiting for a request head."""

    def __init__(self, max_connections: int, head_timeout_s: float, reserve: int = 32) -> None:
        self.reserve = reserve
        self.max_connections = max_connections or default_max_connections(reserve)
        self.head_timeout_s = head_timeout_s
        self.waiting: dict[Any, None] = {}  # connections waiting for a request head, oldest first

    def evict_one(self, newcomer: Any) -> bool:
        """Close the connection that has waited longest for a request head; False if there is none."""
        for candidate in self.waiting:
            if candidate is not newcomer:
                del self.waiting[candidate]
                candidate.transport.close()
                return True
        return False


def guarded_protocol(guard: ConnectionGuard) -> type[HttpToolsProtocol]:
    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _overflow = False

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_head()
            if len(self.connections) > guard.max_connections and not guard.evict_one(self):
                if len(self.connections) > guard.max_connections + guard.reserve:
                    transport.abort()
                    return
                self._overflow = True

        def on_headers_complete(self) -> None:
            self._head_arrived()
            super().on_headers_complete()
            if self._overflow and self.cycle is not None:
                self.cycle.scope[OVERFLOW] = True  # type: ignore[index]
                self.cycle.keep_alive = False

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self.pipeline:
                self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_arrived()
            super().connection_lost(exc)

        def _await_head(self) -> None:
            guard.waiting[self] = None
            if guard.head_timeout_s > 0:
                self._head_timer = self.loop.call_later(guard.head_timeout_s, self._head_expired)

        def _head_arrived(self) -> None:
            guard.waiting.pop(self, None)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_expired(self) -> None:
            self._head_timer = None
            guard.waiting.pop(self, None)
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedHttpToolsProtocol
