"""A store that fails under the server: one error everywhere, named, before generating where it can be."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL, Server, sse_events
from tests.hostile.conftest import RawSocket, assert_openai_error

BIG = "x" * 200_000  # one response's record outgrows the file size limit at once


def small_files(limit: int):
    def apply() -> None:
        # Like a full disk: writes past the soft limit get EFBIG. The hard limit stays, to lift it later.
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Server]:
    """A server on SQLite whose files may not grow past 96 KiB: a full disk, without filling one."""
    store = f"sqlite:{tmp_path / 'store.sqlite3'}"
    server = Server(tmp_path, "--sim-decode-tps", "20000", "--store", store, preexec=small_files(96 * 1024))
    yield server
    server.stop()


def test_a_full_disk_is_503_store_unavailable_on_every_transport(full_disk: Server):
    server = full_disk
    with httpx.Client(base_url=server.url, timeout=10) as http:
        answer = http.post("/responses", json={"model": MODEL, "input": BIG})
        assert answer.status_code == 503
        assert_openai_error(answer.json(), "store_unavailable")
        assert "was not saved" in answer.json()["error"]["message"]

        health = http.get(server.url.removesuffix("/v1") + "/health")
        assert health.status_code == 503 and health.json()["store"]["state"] == "unavailable"

        refused = http.post("/responses", json={"model": MODEL, "input": "hi"})  # known now: before generating
        assert refused.status_code == 503 and "writes fail" in refused.json()["error"]["message"]

        free = http.post("/responses", json={"model": MODEL, "input": "hi", "store": False})
        assert free.status_code == 200  # store=false needs no store

        ws = RawSocket(server)
        ws.send_text(json.dumps({"type": "response.create", "model": MODEL, "input": "hi", "store": False}))
        assert ws.events()[-1]["type"] == "response.completed"
        ws.send_text(json.dumps({"type": "response.create", "model": MODEL, "input": "hi"}))
        error = ws.events()[-1]
        assert error["type"] == "error" and error["status"] == 503
        assert error["error"]["code"] == "store_unavailable"
        ws.close()


def test_a_write_behind_that_fails_is_an_error_event_naming_the_response(full_disk: Server):
    ws = RawSocket(full_disk)
    ws.send_text(json.dumps({"type": "response.create", "model": MODEL, "input": BIG}))
    events = ws.events(until=("error",))
    completed = [e for e in events if e["type"] == "response.completed"]
    assert completed, "the answer itself is sent first (WebSocket overlap)"
    response_id = completed[0]["response"]["id"]
    error = events[-1]
    assert error["status"] == 503 and error["error"]["code"] == "store_unavailable"
    assert response_id in error["error"]["message"]
    assert httpx.get(f"{full_disk.url}/responses/{response_id}", timeout=5).status_code in (404, 503)
    ws.close()


def test_sse_ends_with_an_error_event_when_the_store_fails(full_disk: Server):
    body = {"model": MODEL, "input": BIG, "stream": True}
    with httpx.stream("POST", f"{full_disk.url}/responses", timeout=10, json=body) as answer:
        events = sse_events(answer.read().decode())
    assert events[-1]["type"] == "error" and events[-1]["code"] == "store_unavailable"
    assert not any(e["type"] == "response.completed" for e in events)


def test_the_store_recovers_when_the_disk_has_room_again(full_disk: Server):
    """Health follows the store: a failed write marks it; a probe as large as that write, once it lands, clears it."""
    with httpx.Client(base_url=full_disk.url, timeout=10) as http:
        assert http.post("/responses", json={"model": MODEL, "input": BIG}).status_code == 503
        assert http.post("/responses", json={"model": MODEL, "input": "small"}).status_code == 503
        unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        resource.prlimit(full_disk.process.pid, resource.RLIMIT_FSIZE, unlimited)  # room on the disk again
        time.sleep(1.1)  # the next check probes
        assert http.get(full_disk.url.removesuffix("/v1") + "/health").status_code == 200
        assert http.post("/responses", json={"model": MODEL, "input": BIG}).status_code == 200


def test_a_corrupt_database_at_start_up_is_one_clear_line_and_exit_2(tmp_path: Path):
    database = tmp_path / "store.sqlite3"
    database.write_bytes(b"this is not a database, " * 400)
    done = subprocess.run(
        [sys.executable, "-m", "loopway", "serve", "--store", f"sqlite:{database}", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a usable SQLite database" in lines[0] and "Traceback" not in done.stderr
