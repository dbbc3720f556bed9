"""``NotesServer``: ``notes_server.py`` (the official ``mcp`` package) in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from loopway.bench.server import free_port
from tests.conftest import terminate

HERE = Path(__file__).resolve().parent


class NotesServer:
    def __init__(self, tmp: Path, token: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.headers_log = tmp / f"notes-{self.port}.headers"
        env = {**os.environ, "NOTES_HEADERS_LOG": str(self.headers_log)}
        if token:
            env["NOTES_TOKEN"] = token
        self.log_path = tmp / f"notes-{self.port}.log"
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "notes_server.py"), str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"notes server exited: {self.log_path.read_text()}")
            try:
                httpx.get(self.url, timeout=1)  # any answer: it listens
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("notes server did not start")

    @property
    def allow(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def headers_seen(self) -> str:
        return self.headers_log.read_text() if self.headers_log.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        terminate(self.process)
        self.log.close()
