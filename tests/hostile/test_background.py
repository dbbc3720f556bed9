"""Background responses under races, kill -9 and shutdown: each ends once, and nothing hangs."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import MODEL, Server, sse_events


def background(server: Server, **fields: object) -> str:
    body = {"model": MODEL, "input": "write a long story", "background": True, **fields}
    answer = httpx.post(f"{server.url}/responses", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def test_concurrent_cancels_and_deletes_leave_no_run_stuck(tmp_path: Path):
    """Two cancels and a delete at once, twenty rounds: deleted means gone, and a follower always ends."""
    server = Server(tmp_path, "--sim-decode-tps", "100", "--store", "memory")
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for round_ in range(20):
                response_id = background(server)
                follower: list[dict] = []
                follow = threading.Thread(
                    target=lambda: follower.extend(
                        sse_events(http.get(f"/responses/{response_id}", params={"stream": "true"}).text)
                    )
                )
                follow.start()
                time.sleep(0.05)
                answers: list[httpx.Response] = []
                calls = [
                    lambda: http.post(f"/responses/{response_id}/cancel"),
                    lambda: http.post(f"/responses/{response_id}/cancel"),
                    lambda: http.delete(f"/responses/{response_id}"),
                ]
                threads = [threading.Thread(target=lambda c=c: answers.append(c())) for c in calls]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(timeout=10)
                follow.join(timeout=10)
                assert not follow.is_alive(), f"round {round_}: the stream follower hangs"
                assert all(a.status_code in (200, 404) for a in answers), [a.text for a in answers]
                deleted = [a for a in answers if a.request.method == "DELETE"][0]
                if deleted.status_code == 200:
                    assert http.get(f"/responses/{response_id}").status_code == 404, f"round {round_}"
                cancelled = [a.json() for a in answers if a.request.method == "POST" and a.status_code == 200]
                assert all(c["status"] in ("cancelled", "completed") for c in cancelled)
    finally:
        server.stop()


def test_a_run_left_unfinished_by_kill_9_ends_as_failed_and_its_replay_ends(tmp_path: Path):
    # A claim that outlives the restart: the restarted server reads the run's status before it ends it.
    store = ("--store", f"sqlite:{tmp_path / 'store.sqlite3'}", "--background-claim-s", "4")
    server = Server(tmp_path, "--sim-decode-tps", "20", *store)
    response_id = background(server)
    time.sleep(0.3)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    server.log.close()
    restarted = Server(tmp_path, "--sim-decode-tps", "20000", *store)
    try:
        with httpx.Client(base_url=restarted.url, timeout=10) as http:
            deadline, seen = time.monotonic() + 15, []
            while time.monotonic() < deadline:
                seen.append(http.get(f"/responses/{response_id}").json()["status"])
                if seen[-1] not in ("queued", "in_progress"):
                    break
                time.sleep(0.2)
            assert "queued" not in seen, seen  # it had started: its status never goes back
            response = http.get(f"/responses/{response_id}").json()
            assert response["status"] == "failed" and response["error"]["code"] == "server_error"
            events = sse_events(http.get(f"/responses/{response_id}", params={"stream": "true"}).text)
            assert events[-1]["type"] == "response.failed"
            assert [e["sequence_number"] for e in events] == list(range(len(events)))
            chained = http.post("/responses", json={"model": MODEL, "input": "go on", "previous_response_id": response_id})
            assert chained.status_code == 200, chained.text  # no longer "in progress"
    finally:
        restarted.stop()


def test_sigterm_lets_a_background_run_finish_within_the_drain(tmp_path: Path):
    store = f"sqlite:{tmp_path / 'store.sqlite3'}"
    server = Server(tmp_path, "--sim-decode-tps", "40", "--drain-timeout-s", "30", "--store", store)
    response_id = background(server)  # 50 to 150 tokens at 40 a second: seconds of output
    time.sleep(0.3)
    os.kill(server.process.pid, signal.SIGTERM)
    server.process.wait(timeout=30)
    server.log.close()
    restarted = Server(tmp_path, "--store", store)
    try:
        response = httpx.get(f"{restarted.url}/responses/{response_id}", timeout=10).json()
        assert response["status"] in ("completed", "incomplete"), json.dumps(response)[:300]
        assert response["output"]
    finally:
        restarted.stop()


def test_a_run_whose_conversation_is_deleted_meanwhile_ends_failed_and_its_replay_ends(tmp_path: Path):
    server = Server(tmp_path, "--sim-decode-tps", "200", "--store", "memory")
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            conversation = http.post("/conversations", json={}).json()["id"]
            response_id = background(server, conversation=conversation)
            time.sleep(0.2)
            assert http.delete(f"/conversations/{conversation}").status_code == 200
            deadline = time.monotonic() + 20
            while (status := http.get(f"/responses/{response_id}").json()["status"]) in ("queued", "in_progress"):
                assert time.monotonic() < deadline, "the run never ended"
                time.sleep(0.1)
            final = http.get(f"/responses/{response_id}").json()
            assert status == "failed" and "could not be recorded" in final["error"]["message"], final
            replay = sse_events(http.get(f"/responses/{response_id}", params={"stream": "true"}).text)
            assert replay[-1]["type"] == "response.failed"
            assert [e["sequence_number"] for e in replay] == list(range(len(replay)))
            assert sum(e["type"] in ("response.completed", "response.failed") for e in replay) == 1
    finally:
        server.stop()
