"""Graceful drain on SIGTERM, and durability across kill -9."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import MODEL, Server, sse_events


def test_sigterm_lets_in_flight_responses_finish_then_closes_with_1012(tmp_path: Path):
    server = Server(tmp_path, "--sim-decode-tps", "300", "--store", "memory", "--drain-timeout-s", "20")
    sse: dict[str, str] = {}

    def stream_over_http() -> None:
        try:
            r = httpx.post(
                f"{server.url}/responses", json={"model": MODEL, "input": "write a story", "stream": True}, timeout=30
            )
            sse["body"] = r.text
        except httpx.ConnectError:
            sse["refused"] = "yes"  # it came after the listener closed: refused, as a draining server should

    with connect(server.url.replace("http", "ws", 1) + "/responses") as ws:
        ws.send(json.dumps({"type": "response.create", "model": MODEL, "input": "write a long story", "store": False}))
        while json.loads(ws.recv(timeout=10))["type"] != "response.output_text.delta":
            pass
        http = threading.Thread(target=stream_over_http)
        http.start()
        server.process.send_signal(signal.SIGTERM)
        events = []
        with pytest.raises(ConnectionClosed) as info:
            while True:
                events.append(json.loads(ws.recv(timeout=30)))
        http.join(timeout=30)
    assert events[-1]["type"] == "response.completed"  # finished, not cut short
    assert info.value.rcvd is not None and info.value.rcvd.code == 1012
    assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
    assert sse  # the HTTP request either finished whole or was refused at the door, never cut
    if "body" in sse:
        assert sse_events(sse["body"])[-1]["type"] == "response.completed"
    server.log.close()


def test_kill_9_loses_no_acknowledged_response(tmp_path: Path):
    server = Server(tmp_path, "--sim-decode-tps", "100000")
    server.stop = lambda: None  # type: ignore[method-assign]
    acknowledged = []
    with httpx.Client(timeout=30) as http:
        for i in range(10):
            created = http.post(f"{server.url}/responses", json={"model": MODEL, "input": f"n{i}"})
            acknowledged.append(created.json()["id"])
        body = http.post(f"{server.url}/responses", json={"model": MODEL, "input": "streamed", "stream": True}).text
        acknowledged.append(sse_events(body)[-1]["response"]["id"])
    server.process.kill()  # SIGKILL: no shutdown, no flush
    server.process.wait()
    server.log.close()
    again = Server(tmp_path, "--sim-decode-tps", "100000")
    try:
        for response_id in acknowledged:
            r = httpx.get(f"{again.url}/responses/{response_id}")
            assert r.status_code == 200 and r.json()["status"] == "completed"
    finally:
        again.stop()


def test_kill_9_over_websocket_with_durable_store(tmp_path: Path):
    server = Server(tmp_path, "--sim-decode-tps", "100000", "--ws-durable-store", "on")
    acknowledged = []
    with connect(server.url.replace("http", "ws", 1) + "/responses") as ws:
        for i in range(10):
            ws.send(json.dumps({"type": "response.create", "model": MODEL, "input": f"n{i}", "store": True}))
            while (event := json.loads(ws.recv(timeout=10)))["type"] != "response.completed":
                pass
            acknowledged.append(event["response"]["id"])
        server.process.kill()  # right after the last "completed"
    server.process.wait()
    server.log.close()
    again = Server(tmp_path, "--sim-decode-tps", "100000")
    try:
        for response_id in acknowledged:
            assert httpx.get(f"{again.url}/responses/{response_id}").status_code == 200
    finally:
        again.stop()
