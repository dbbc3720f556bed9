"""A loopway server inside the benchmark process, so server-side stage times can be read directly."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import uvicorn
import uvloop

from loopway.app import build_service, create_app
from loopway.core.service import ResponsesService
from loopway.settings import Settings
from loopway.transports.wsprotocol import websocket_protocol


def wait_healthy(base_url: str, timeout_s: float = 30.0) -> None:
    """Wait until a server (``http://host:port``, no ``/v1``) answers ``/health``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(f"{base_url.rstrip('/')}/health", timeout=1).raise_for_status()
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{base_url} did not become healthy in {timeout_s:g} s") from None
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_started(server: uvicorn.Server, thread: threading.Thread, what: str) -> None:
    """Until uvicorn on ``thread`` listens (30 s at most, and not past the thread's death)."""
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.01)


class InProcessServer:
    """uvicorn on its own thread and event loop; ``service`` is the live core."""

    def __init__(self, settings: Settings) -> None:
        settings.port = settings.port or free_port()
        self.settings = settings
        self.service: ResponsesService = build_service(settings)
        config = uvicorn.Config(
            create_app(settings, self.service),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            ws_max_size=settings.max_frame_bytes,
            ws_per_message_deflate=settings.ws_deflate,
            ws=websocket_protocol(settings.ws_deflate, settings.ws_deflate_min_bytes),
        )
        self._server = uvicorn.Server(config)
        self.loop = uvloop.new_event_loop()  # as ``loopway serve`` runs
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._server.serve())

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}/v1"

    def __enter__(self) -> InProcessServer:
        self._thread.start()
        wait_started(self._server, self._thread, "in-process server")
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
