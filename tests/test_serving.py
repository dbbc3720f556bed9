"""``loopway serve --workers N``: one port, N full servers, a shared store, shared limits and metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from loopway.bench.procs import process_tree
from tests.conftest import MODEL, Server, free_port, metric_samples, metric_series


def workers_of(server: Server) -> list[int]:
    """The supervisor's worker processes (with fork, multiprocessing adds no helpers)."""
    return sorted(set(process_tree(server.process.pid)) - {server.process.pid})


def serving_workers(server: Server, count: int = 2) -> list[int]:
    """Wait until ``count`` workers serve (each writes its gauges to /metrics once started)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        gauges = metric_series(metric_samples(server), "loopway_open_connections")
        pids = {int(dict(labels)["pid"]) for labels in gauges}
        if len(pids) >= count and pids <= set(workers_of(server)):
            return sorted(pids)
        time.sleep(0.1)
    raise AssertionError(f"{count} workers did not start serving")


def fresh_post(server: Server, body: dict, **headers: str) -> httpx.Response:
    """Each request on a new connection, so the kernel may hand it to either worker."""
    with httpx.Client(timeout=30) as http:
        return http.post(f"{server.url}/responses", json=body, headers={"connection": "close", **headers})


def test_memory_store_is_refused_with_more_than_one_worker(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "loopway", "serve", "--workers", "2", "--store", "memory", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--workers 2 needs a store the workers share" in done.stderr


def test_workers_need_a_fixed_port(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "loopway", "serve", "--workers", "2", "--data-dir", str(tmp_path), "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "--workers 2 needs a fixed --port" in done.stderr


def test_workers_share_one_port_the_store_and_metrics(tmp_path: Path):
    server = Server(tmp_path, "--workers", "2")
    try:
        assert len(serving_workers(server)) == 2
        previous = None
        for turn in range(12):  # a chain, each link on a fresh connection: whichever worker takes it finds the parent
            body = {"model": MODEL, "input": f"step {turn}: tell me more", "max_output_tokens": 16}
            if previous:
                body["previous_response_id"] = previous
            r = fresh_post(server, body)
            assert r.status_code == 200, r.text
            previous = r.json()["id"]
        sockets = [connect(server.url.replace("http", "ws", 1) + "/responses") for _ in range(20)]
        try:
            time.sleep(1.5)  # each worker writes its live gauges every second
            metrics = metric_samples(server)
        finally:
            for ws in sockets:
                ws.close()
        assert sum(metric_series(metrics, "loopway_responses_total").values()) == 12  # summed over the workers
        gauges = metric_series(metrics, "loopway_open_connections")
        per_worker = {dict(labels)["pid"]: count for labels, count in gauges.items()}
        assert set(per_worker) == {str(p) for p in workers_of(server)}
        assert sum(per_worker.values()) == 20
        assert all(count > 0 for count in per_worker.values())  # spread by the kernel (SO_REUSEPORT)
    finally:
        server.stop()


def test_a_rate_limit_holds_across_workers(tmp_path: Path):
    server = Server(tmp_path, "--workers", "2", "--rate-limit-rpm", "5")
    try:
        codes = [fresh_post(server, {"model": MODEL, "input": "hi", "max_output_tokens": 16}).status_code for _ in range(10)]
        assert codes.count(200) == 5 and codes.count(429) == 5
    finally:
        server.stop()


def test_a_worker_that_dies_is_replaced(tmp_path: Path):
    server = Server(tmp_path, "--workers", "2")
    try:
        victim = serving_workers(server)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            now = workers_of(server)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.1)
        assert len(workers_of(server)) == 2 and victim not in workers_of(server)
        for _ in range(4):
            assert fresh_post(server, {"model": MODEL, "input": "still there?", "max_output_tokens": 16}).status_code == 200
    finally:
        server.stop()


def test_a_dead_workers_sockets_no_longer_count_against_the_tenant(tmp_path: Path):
    """Each worker counts its own sockets; the supervisor forgets a worker killed with them open."""
    server = Server(tmp_path, "--workers", "2", "--max-connections-per-tenant", "2")
    url = server.url.replace("http", "ws", 1) + "/responses"
    try:
        victims = serving_workers(server)
        held = [connect(url, open_timeout=10) for _ in range(2)]
        with pytest.raises(Exception, match="429"):
            connect(url, open_timeout=10)  # the cap holds across the workers
        for pid in victims:  # whichever of them holds the sockets, one after the other
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 15
            while not (len(workers_of(server)) == 2 and pid not in workers_of(server)):
                assert time.monotonic() < deadline, "a worker was not replaced"
                time.sleep(0.1)
        for ws in held:
            ws.socket.close()
        deadline, refusals = time.monotonic() + 20, []
        while time.monotonic() < deadline:  # the replacements start; the dead sockets must not count
            try:
                fresh = [connect(url, open_timeout=10) for _ in range(2)]
                break
            except (OSError, Exception) as exc:  # refused while no worker listens; 429 while they count
                refusals.append(str(exc))
                time.sleep(0.2)
        else:
            raise AssertionError(f"two sockets never opened again: {refusals[-3:]}")
        for ws in fresh:
            ws.close()
    finally:
        server.stop()


def test_sigterm_drains_every_worker(tmp_path: Path):
    server = Server(tmp_path, "--workers", "2", "--sim-decode-tps", "200", "--drain-timeout-s", "20")
    url = server.url.replace("http", "ws", 1) + "/responses"
    sockets = [connect(url) for _ in range(4)]
    for ws in sockets:
        ws.send(json.dumps({"type": "response.create", "model": MODEL, "input": "write a story", "store": False}))
    for ws in sockets:
        while json.loads(ws.recv(timeout=10))["type"] != "response.output_text.delta":
            pass
    server.process.send_signal(signal.SIGTERM)
    for ws in sockets:  # every response runs to its end before the socket closes with 1012
        last = None
        with pytest.raises(Exception):
            while True:
                last = json.loads(ws.recv(timeout=20))["type"]
        assert last in ("response.completed", "response.incomplete")
        assert ws.close_code == 1012
    assert server.process.wait(timeout=30) == 0


def test_a_bad_configuration_stops_a_multi_worker_server_with_its_message(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "loopway", "serve", "--workers", "2", "--data-dir", str(tmp_path),
         "--sim-trace", str(tmp_path / "missing.json"), "--port", str(free_port())],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "missing.json" in done.stderr
