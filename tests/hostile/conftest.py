"""Attacks on a real ``loopway serve`` process, and a watch on what the attacker must not get.

``Watch`` runs beside an attack: every 100 ms it asks ``/health`` (each answer must come within
1 s), every 300 ms a normal client creates a small response (each must complete), and it samples the
server's resident memory (its growth over idle must stay under a bound). A test attacks inside
``with Watch(server) as watch:`` and the watch asserts all three when the block ends.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL, Server

FAST = ("--sim-decode-tps", "20000", "--sim-base-latency-ms", "1", "--sim-prefill-tps", "1e12", "--store", "memory")


async def asgi_body(receive: Any) -> bytes:
    """A hostile server's view of a request: its whole body."""
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            return raw


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


class Watch:
    def __init__(self, server: Server, *, rss_bound_mib: float = 300, normal_client: bool = True) -> None:
        self.server = server
        self.base = server.url.removesuffix("/v1")
        self.rss_bound_mib = rss_bound_mib
        self.normal_client = normal_client
        self.idle_rss = rss_mib(server.process.pid)
        self.peak_rss = self.idle_rss
        self.slowest_health = 0.0
        self.health_failures: list[str] = []
        self.completed = 0
        self.client_failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._health, daemon=True),
            threading.Thread(target=self._memory, daemon=True),
        ]
        if normal_client:
            self._threads.append(threading.Thread(target=self._client, daemon=True))

    def __enter__(self) -> Watch:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        time.sleep(0.3)  # one more round of each probe after the attack
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        if kind is None:
            self.check()

    def check(self) -> None:
        assert not self.health_failures, self.health_failures[:3]
        assert self.slowest_health < 1.0, f"/health took {self.slowest_health:.2f} s during the attack"
        grown = self.peak_rss - self.idle_rss
        assert grown < self.rss_bound_mib, f"server RSS grew {grown:.0f} MiB over idle (bound {self.rss_bound_mib})"
        if self.normal_client:
            assert not self.client_failures, self.client_failures[:3]
            assert self.completed >= 1, "no normal response completed during the attack"

    def _health(self) -> None:
        with httpx.Client(timeout=2) as http:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    answer = http.get(f"{self.base}/health")
                    if answer.status_code != 200:
                        self.health_failures.append(f"{answer.status_code} {answer.text[:200]}")
                except httpx.HTTPError as exc:
                    self.health_failures.append(repr(exc))
                self.slowest_health = max(self.slowest_health, time.monotonic() - started)
                self._stop.wait(0.1)

    def _memory(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_rss = max(self.peak_rss, rss_mib(self.server.process.pid))
            except (OSError, StopIteration):
                return
            self._stop.wait(0.02)

    def _client(self) -> None:
        body = {"model": MODEL, "input": "Say hello", "store": False, "max_output_tokens": 16}
        with httpx.Client(timeout=5) as http:
            while not self._stop.is_set():
                try:
                    answer = http.post(f"{self.server.url}/responses", json=body)
                    if answer.status_code == 200 and answer.json()["status"] in ("completed", "incomplete"):
                        self.completed += 1
                    else:
                        self.client_failures.append(f"{answer.status_code} {answer.text[:200]}")
                except httpx.HTTPError as exc:
                    self.client_failures.append(repr(exc))
                self._stop.wait(0.3)


def assert_openai_error(body: dict, code: str | None = None) -> None:
    """An OpenAI-shaped refusal: ``{"error": {"message", "type", "param", "code"}}``."""
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"], body
    if code is not None:
        assert error["code"] == code, body


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path, *FAST)
    yield server
    server.stop()


def started(tmp_path: Path, *args: str) -> Server:
    return Server(tmp_path, *FAST, *args)


class RawSocket:
    """A WebSocket client by hand, to send what well-behaved libraries will not: pre-compressed
    bombs, frames cut short, bytes one at a time. permessage-deflate is negotiated (no context takeover)."""

    def __init__(self, server: Server, headers: dict[str, str] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(
            (
                f"GET /v1/responses HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; server_no_context_takeover\r\n"
                f"{extra}\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            head += chunk
        self.status = int(head.split(b" ", 2)[1]) if head else 0
        self.head, _, self.buffer = head.partition(b"\r\n\r\n")

    def send(self, payload: bytes, *, compressed: bool = False, fin: bool = True, opcode: int = 1) -> None:
        header = bytearray([(0x80 if fin else 0) | (0x40 if compressed else 0) | opcode])
        length = len(payload)
        if length < 126:
            header.append(0x80 | length)
        elif length < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", length)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", length)
        header += b"\0\0\0\0"  # a zero mask leaves the payload as it is
        self.sock.sendall(bytes(header) + payload)

    def send_text(self, text: str) -> None:
        self.send(text.encode())

    def recv(self) -> tuple[int, bytes]:
        """The next frame: (opcode, payload); (8, close payload) for a close; (-1, b"") when the socket ends."""

        def need(n: int) -> bytes:
            while len(self.buffer) < n:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                self.buffer += chunk
            out, self.buffer = self.buffer[:n], self.buffer[n:]
            return out

        try:
            first, second = need(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack(">H", need(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", need(8))[0]
            payload = need(length)
        except (ConnectionError, OSError):
            return -1, b""
        self.compressed = bool(first & 0x40)  # RSV1: this message was deflated
        if self.compressed:
            payload = zlib.decompressobj(-zlib.MAX_WBITS).decompress(payload + b"\x00\x00\xff\xff")
        return first & 0x0F, payload

    def events(self, until: tuple[str, ...] = ("response.completed", "error")) -> list[dict]:
        out = []
        while True:
            opcode, payload = self.recv()
            if opcode != 1:
                return out
            out.append(json.loads(payload))
            if out[-1]["type"] in until:
                return out

    def close_code(self) -> int | None:
        while True:
            opcode, payload = self.recv()
            if opcode == 8:
                return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
            if opcode == -1:
                return None

    def close(self) -> None:
        self.sock.close()


def deflated(payload: bytes) -> bytes:
    """A permessage-deflate payload: raw deflate, without the trailing empty block's 00 00 ff ff."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4] if data.endswith(b"\x00\x00\xff\xff") else data
