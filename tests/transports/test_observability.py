"""Prometheus metrics, JSON logs with response ids, and no key in any log line."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from websockets.sync.client import connect

from tests.conftest import MODEL, Server, metric_samples, metric_value


def test_metrics_count_responses_stages_cache_and_connections(tmp_path: Path):
    server = Server(tmp_path, "--store", "memory")
    try:
        httpx.post(f"{server.url}/responses", json={"model": MODEL, "input": "hi"}).raise_for_status()
        with connect(server.url.replace("http", "ws", 1) + "/responses") as ws:
            previous = None
            for text in ("one", "two"):
                body = {"type": "response.create", "model": MODEL, "input": text, "store": False, "stream_id": "a"}
                ws.send(json.dumps(body | ({"previous_response_id": previous} if previous else {})))
                while (event := json.loads(ws.recv(timeout=10)))["type"] != "response.completed":
                    pass
                previous = event["response"]["id"]
            ws.send(
                json.dumps(
                    {
                        "type": "response.create",
                        "model": MODEL,
                        "input": "x",
                        "store": False,
                        "previous_response_id": "resp_gone",
                    }
                )
            )
            ws.recv(timeout=10)
            during = metric_samples(server)
        after = metric_samples(server)
    finally:
        server.stop()
    assert metric_value(during, "loopway_responses_total", status="completed", transport="http") == 1
    assert metric_value(during, "loopway_responses_total", status="completed", transport="ws") == 2
    assert metric_value(during, "loopway_connection_cache_total", result="hit") == 1
    assert metric_value(during, "loopway_connection_cache_total", result="miss") == 1
    assert metric_value(during, "loopway_open_connections") == 1 and metric_value(during, "loopway_open_lanes") == 2
    assert metric_value(after, "loopway_open_connections") == 0 and metric_value(after, "loopway_open_lanes") == 0
    for stage in ("validate", "render", "ttft", "decode"):
        assert metric_value(during, "loopway_stage_seconds_count", stage=stage) == 3
    assert metric_value(during, "loopway_stage_seconds_count", stage="persist") == 1  # only the stored HTTP response


def test_json_logs_carry_response_ids_and_never_the_key(tmp_path: Path):
    server = Server(tmp_path, "--store", "memory", "--log-format", "json", "--log-level", "info")
    secret = "sk-very-secret-key-123"
    try:
        response = httpx.post(
            f"{server.url}/responses", json={"model": MODEL, "input": "hi"}, headers={"Authorization": f"Bearer {secret}"}
        ).json()
        with connect(
            server.url.replace("http", "ws", 1) + "/responses", additional_headers={"Authorization": f"Bearer {secret}"}
        ) as ws:
            ws.send(json.dumps({"type": "response.create", "model": MODEL, "input": "hi", "store": False}))
            while json.loads(ws.recv(timeout=10))["type"] != "response.completed":
                pass
        output = server.output()
    finally:
        server.stop()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    finished = [line for line in lines if line["logger"] == "loopway.responses"]
    assert {line["transport"] for line in finished} == {"http", "ws"}
    assert response["id"] in {line["response_id"] for line in finished}
    assert all(set(line["stages_ms"]) >= {"validate", "render", "ttft"} for line in finished)
    assert secret not in output


def test_server_timing_on_json_and_sse(server: Server):
    plain = httpx.post(f"{server.url}/responses", json={"model": MODEL, "input": "hi"})
    stages = dict(part.strip().split(";dur=") for part in plain.headers["server-timing"].split(","))
    assert set(stages) == {"validate", "resolve", "render", "queue", "ttft", "decode", "persist"}
    assert float(stages["ttft"]) > 0
    streamed = httpx.post(f"{server.url}/responses", json={"model": MODEL, "input": "hi", "stream": True})
    assert streamed.headers["server-timing"].startswith("validate;dur=")
