"""A handshake timeout for uvicorn's HTTP protocol: a connection must finish its first request head
(an HTTP request or a WebSocket upgrade) within the limit, or it is closed. uvicorn has no such
timer of its own, so a client that opens a socket and sends nothing (or a byte a minute) would hold
it forever; afterwards uvicorn's keep-alive timeout governs idle connections.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def guarded_protocol(timeout_s: float) -> type[HttpToolsProtocol]:
    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _handshake_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if timeout_s > 0:
                self._handshake_timer = self.loop.call_later(timeout_s, self._handshake_expired)

        def on_headers_complete(self) -> None:
            self._cancel_handshake_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_handshake_timer()
            super().connection_lost(exc)

        def _cancel_handshake_timer(self) -> None:
            if self._handshake_timer is not None:
                self._handshake_timer.cancel()
                self._handshake_timer = None

        def _handshake_expired(self) -> None:
            self._handshake_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedHttpToolsProtocol
