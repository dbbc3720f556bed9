"""Fixtures: a real ``loopway serve`` process on a free port, and the official SDK pointed at it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI
from prometheus_client.parser import text_string_to_metric_families

from loopway.bench.server import free_port  # noqa: F401 (tests import it from here)


def terminate(process: subprocess.Popen) -> None:
    """Stop a test's subprocess: SIGTERM, and SIGKILL if it has not gone in 10 s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Server:
    """A ``loopway serve`` subprocess; ``url`` is its ``/v1`` base URL."""

    def __init__(
        self,
        tmp: Path,
        *args: str,
        env: dict[str, str] | None = None,
        preexec: Callable[[], None] | None = None,
        python: str = sys.executable,
        port: int | None = None,
    ) -> None:
        """``python``: the interpreter that runs the server (another venv's, to test another install);
        ``port``: a given one (to restart a server where it was), else a free one."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = tmp / f"server-{self.port}.log"
        command = [
            python,
            "-m",
            "loopway",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(tmp / "data"),
            "--log-level",
            "warning",
            *args,
        ]
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, preexec_fn=preexec
        )
        self._wait()

    def _wait(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()}")
            try:
                httpx.get(f"{self.url.removesuffix('/v1')}/health", timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not start: {self.log_path.read_text()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        terminate(self.process)
        self.log.close()


Serve = Callable[..., Server]


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """``serve(*flags)``: a ``loopway serve`` with these flags, started once per module and flags and
    stopped after the module. A test that kills, restarts or reconfigures its server starts its own."""
    started: dict[tuple[str, ...], Server] = {}

    def start(*flags: str) -> Server:
        if flags not in started:
            started[flags] = Server(tmp_path_factory.mktemp("serve"), *flags)
        return started[flags]

    yield start
    for server in started.values():
        server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The suite's shared server: store SQLite, a fast sim; read-mostly tests use it."""
    srv = Server(tmp_path_factory.mktemp("server"), "--sim-decode-tps", "20000", "--sim-base-latency-ms", "1")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server: Server) -> OpenAI:
    return OpenAI(base_url=server.url, api_key="sk-test", max_retries=0)


@pytest.fixture(scope="session")
def aclient(server: Server) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.url, api_key="sk-test", max_retries=0)


MODEL = "loopway-sim"

READ_FILE = {
    "type": "function",
    "name": "read_file",
    "description": "Read a file of the repository",
    "parameters": {
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"],
        "additionalProperties": False,
    },
    "strict": True,
}
RUN_TESTS = {
    "type": "function",
    "name": "run_tests",
    "description": "Run the test suite",
    "parameters": {
        "type": "object",
        "properties": {"target": {"type": "string"}},
        "required": ["target"],
        "additionalProperties": False,
    },
    "strict": True,
}


def metric_samples(server: Server) -> dict[tuple[str, tuple], float]:
    """Every sample on the server's /metrics, by (name, sorted labels)."""
    text = httpx.get(server.url.removesuffix("/v1") + "/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric_value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def metric_series(metrics: dict, name: str) -> dict[tuple, float]:
    """One metric's samples by their labels, e.g. ``{(("result", "hit"),): 6.0}``."""
    return {labels: v for (sample, labels), v in metrics.items() if sample == name}


def sse_events(text: str) -> list[dict]:
    """Parse an SSE body strictly: ``event:`` names must match ``data.type``."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        lines = block.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: ") and len(lines) == 2, block
        data = json.loads(lines[1][len("data: ") :])
        assert data["type"] == lines[0][len("event: ") :]
        events.append(data)
    return events


class RedisServer:
    """A throwaway redis-server on a free port, append-only with fsync on every write."""

    def __init__(self, tmp: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI"):
                pytest.fail("redis-server is not installed: .ci/run installs it")
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        tmp.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(tmp),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        terminate(self.process)
