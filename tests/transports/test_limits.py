"""Limits at the wire: 429 with retry-after per tenant, connection caps, idle timeouts."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.conftest import MODEL, Server

ALICE, BOB = "sk-alice-0123456789abcdef", "sk-bob-0123456789abcdef"


def keys_file(tmp: Path) -> str:
    path = tmp / "keys.txt"
    path.write_text(f"{ALICE} alice\n{BOB} bob\n")
    return str(path)


def test_requests_per_minute_per_tenant(tmp_path: Path):
    server = Server(tmp_path, "--api-keys", keys_file(tmp_path), "--rate-limit-rpm", "3", "--store", "memory")
    try:
        alice = OpenAI(base_url=server.url, api_key=ALICE, max_retries=0)
        for _ in range(3):
            alice.responses.create(model=MODEL, input="hi", store=False)
        with pytest.raises(openai.RateLimitError) as info:
            alice.responses.create(model=MODEL, input="hi", store=False)
        assert info.value.code == "rate_limit_exceeded" and int(info.value.response.headers["retry-after"]) >= 1
        assert (
            OpenAI(base_url=server.url, api_key=BOB, max_retries=0)
            .responses.create(model=MODEL, input="hi", store=False)
            .status
            == "completed"
        )
        with connect(
            server.url.replace("http", "ws", 1) + "/responses", additional_headers={"Authorization": f"Bearer {BOB}"}
        ) as ws:
            for _ in range(2):
                ws.send(json.dumps({"type": "response.create", "model": MODEL, "input": "x", "store": False}))
                while json.loads(ws.recv(timeout=10))["type"] != "response.completed":
                    pass
            ws.send(json.dumps({"type": "response.create", "model": MODEL, "input": "x", "store": False}))
            error = json.loads(ws.recv(timeout=10))
            assert error["status"] == 429 and error["error"]["code"] == "rate_limit_exceeded"
            assert int(error["error"]["headers"]["retry-after"]) >= 1
    finally:
        server.stop()


def test_websocket_connections_per_tenant(tmp_path: Path):
    server = Server(tmp_path, "--api-keys", keys_file(tmp_path), "--max-connections-per-tenant", "1", "--store", "memory")
    url = server.url.replace("http", "ws", 1) + "/responses"
    try:
        with connect(url, additional_headers={"Authorization": f"Bearer {ALICE}"}):
            with pytest.raises(InvalidStatus) as info:
                connect(url, additional_headers={"Authorization": f"Bearer {ALICE}"})
            assert info.value.response.status_code == 429
            with connect(url, additional_headers={"Authorization": f"Bearer {BOB}"}):
                pass
        with connect(url, additional_headers={"Authorization": f"Bearer {ALICE}"}):  # released on close
            pass
    finally:
        server.stop()


def test_idle_connections_are_closed(tmp_path: Path):
    server = Server(tmp_path, "--ws-idle-timeout-s", "0.3", "--store", "memory")
    try:
        with connect(server.url.replace("http", "ws", 1) + "/responses") as ws:
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=5)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert httpx.get(server.url.removesuffix("/v1") + "/health").status_code == 200
    finally:
        server.stop()


def test_connections_that_never_finish_their_first_request_head_are_closed(tmp_path: Path):
    import socket
    import time

    server = Server(tmp_path, "--head-timeout-s", "0.5", "--store", "memory")
    try:
        silent = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        slow.sendall(b"GET /v1/responses HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
        start = time.monotonic()
        assert silent.recv(100) == b"" and slow.recv(100) == b""  # closed by the server
        assert time.monotonic() - start < 3
        silent.close()
        slow.close()
        assert httpx.get(server.url.removesuffix("/v1") + "/health").status_code == 200  # others unaffected
    finally:
        server.stop()


def test_the_idle_limit_counts_from_the_last_frame_and_never_cuts_a_running_turn(tmp_path: Path):
    import json
    import time

    server = Server(tmp_path, "--ws-idle-timeout-s", "0.5", "--store", "memory", "--sim-decode-tps", "60")
    try:
        with connect(server.url.replace("http", "ws", 1) + "/responses") as ws:
            for _ in range(3):  # a frame every 0.3 s keeps it open past the limit
                time.sleep(0.3)
                ws.send(json.dumps({"type": "response.create", "model": "loopway-sim", "store": False,
                                    "generate": False, "input": "warm"}))  # fmt: skip
                while json.loads(ws.recv(timeout=5))["type"] != "response.completed":
                    pass
            ws.send(json.dumps({"type": "response.create", "model": "loopway-sim", "store": False,
                                "input": "tell me about it"}))  # fmt: skip
            started, last = time.monotonic(), None
            while last not in ("response.completed", "response.incomplete"):  # runs over a second, longer than the limit
                last = json.loads(ws.recv(timeout=10))["type"]
            assert time.monotonic() - started > 0.5
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=5)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    finally:
        server.stop()
