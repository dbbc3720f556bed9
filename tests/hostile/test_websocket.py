"""Attacks over the socket: compression bombs, queued work, revoked keys, expiry, steering floods."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from functools import lru_cache
from pathlib import Path

import pytest

from tests.conftest import MODEL, Server
from tests.hostile.conftest import FAST, RawSocket, Watch, deflated, started


@lru_cache(maxsize=4)
def bomb(mib: int) -> bytes:
    """A response.create frame whose input inflates to about ``mib`` MiB of ``[{},{},…]`` (~30 KB on the wire)."""
    count = mib * 1024 * 1024 // 3
    text = b'{"type": "response.create", "model": "loopway-sim", "input": [' + b"{}," * count + b"{}]}"
    return deflated(text)


def create(**fields: object) -> str:
    return json.dumps({"type": "response.create", "model": MODEL, "store": False, **fields})


def test_compression_bombs_stop_inflating_at_the_frame_limit(tmp_path: Path):
    """24 sockets at once, each a 30 KB frame that would inflate to 128 MiB: inflating stops at the 16 MiB frame
    limit, each socket closes with 1009, and what was inflated is let go at once."""
    server = started(tmp_path)
    try:
        payload = bomb(128)
        assert len(payload) < 200_000
        codes: list[int | None] = []

        def attack() -> None:
            ws = RawSocket(server)
            ws.send(payload, compressed=True)
            codes.append(ws.close_code())
            ws.close()

        with Watch(server):
            threads = [threading.Thread(target=attack) for _ in range(24)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
        assert codes == [1009] * 24
    finally:
        server.stop()


def test_amplifying_frames_are_refused_before_they_are_decoded_even_behind_a_slow_turn(tmp_path: Path):
    """8 frames inflating to 15 MiB of ``[{},…]`` each (5 million values), queued behind a slow turn: it was
    28 MiB frames and 3.5 GB of RSS before frames were counted before decoding (the frame limit is 16 MiB now)."""
    server = Server(tmp_path, "--sim-decode-tps", "20", "--store", "memory")
    try:
        ws = RawSocket(server)
        with Watch(server, rss_bound_mib=250):
            ws.send_text(create(input="write a long story"))  # about 10 s of output at 20 tokens/s
            for _ in range(8):
                ws.send(bomb(15), compressed=True)
            errors = []
            while len(errors) < 8:
                event = ws.events(until=("error",))[-1]
                errors.append(event)
        assert {e["error"]["code"] for e in errors} == {"json_too_large"} and {e["status"] for e in errors} == {400}
        ws.close()
    finally:
        server.stop()


def test_queued_work_per_connection_is_capped_with_an_error(tmp_path: Path):
    server = Server(tmp_path, "--sim-decode-tps", "20", "--store", "memory", "--ws-max-queued", "4")
    try:
        ws = RawSocket(server)
        with Watch(server):
            for i in range(7):  # one runs, four wait, two are refused
                ws.send_text(create(input=f"story {i}"))
            refused = []
            while len(refused) < 2:
                event = ws.events(until=("error",))[-1]
                refused.append(event)
        assert all(e["error"]["code"] == "websocket_queue_full" and e["status"] == 429 for e in refused)
        ws.close()
    finally:
        server.stop()


@pytest.mark.parametrize("frame_bytes", [300_000, 150_000], ids=["parsed-off-the-loop", "parsed-on-the-loop"])
def test_queued_bytes_per_connection_are_capped(tmp_path: Path, frame_bytes: int):
    """Every frame counts, whether it is large enough to be parsed in a worker thread or not."""
    cap = int(frame_bytes * 1.7)
    server = Server(tmp_path, "--sim-decode-tps", "20", "--store", "memory", "--ws-max-pending-bytes", str(cap))
    try:
        ws = RawSocket(server)
        ws.send_text(create(input="a story"))
        big = create(input="x" * frame_bytes)
        ws.send_text(big)  # one frame waiting: fits
        ws.send_text(big)  # another: over the cap
        event = ws.events(until=("error",))[-1]
        assert event["error"]["code"] == "websocket_queue_full"
        ws.close()
    finally:
        server.stop()


def test_a_revoked_key_stops_working_on_an_open_socket(tmp_path: Path):
    keys = tmp_path / "keys"
    keys.write_text("sk-acme-1111111111 acme\nsk-evil-2222222222 evil\n")
    server = Server(tmp_path, *FAST, "--api-keys", str(keys))
    try:
        ws = RawSocket(server, {"Authorization": "Bearer sk-evil-2222222222"})
        ws.send_text(create(input="hello", store=True))
        assert ws.events()[-1]["type"] == "response.completed"
        keys.write_text("sk-acme-1111111111 acme\n")
        os.kill(server.process.pid, signal.SIGHUP)
        time.sleep(0.5)
        ws.send_text(create(input="hello again"))
        event = ws.events()[-1]
        assert event["type"] == "error" and event["status"] == 401 and event["error"]["code"] == "invalid_api_key"
        assert ws.close_code() == 1008
    finally:
        server.stop()


def test_the_age_limit_holds_while_the_socket_is_kept_busy_with_steers(tmp_path: Path):
    server = Server(
        tmp_path, "--sim-decode-tps", "50", "--store", "memory", "--ws-connection-max-age-s", "2", "--drain-timeout-s", "2"
    )
    try:
        ws = RawSocket(server)
        opened = time.monotonic()
        ws.send_text(create(input="a long story"))
        latest, closed = None, False
        while time.monotonic() - opened < 15:
            opcode, payload = ws.recv()
            if opcode in (8, -1):
                closed = True
                break
            event = json.loads(payload)
            if event["type"] == "response.created":
                latest = event["response"]["id"]
            if latest and event["type"] == "response.output_text.delta":
                ws.send_text(json.dumps({"type": "response.steer", "previous_response_id": latest, "input": "more"}))
        assert closed and time.monotonic() - opened < 6
    finally:
        server.stop()


def test_steering_counts_against_the_rate_limit(tmp_path: Path):
    server = Server(tmp_path, "--sim-decode-tps", "200", "--store", "memory", "--rate-limit-rpm", "2")
    try:
        ws = RawSocket(server)
        ws.send_text(create(input="a long story"))
        generations, refused, deadline = 0, 0, time.monotonic() + 8
        latest = None
        while time.monotonic() < deadline:
            opcode, payload = ws.recv()
            if opcode != 1:
                break
            event = json.loads(payload)
            if event["type"] == "response.created":
                generations += 1
                latest = event["response"]["id"]
            elif event["type"] == "response.steer.failed":
                refused += 1
                assert event["error"]["code"] == "rate_limit_exceeded"
                assert event["steer"]["input"] == "more"  # the client gets its input back
            elif event["type"] == "response.output_text.delta" and latest:
                ws.send_text(json.dumps({"type": "response.steer", "previous_response_id": latest, "input": "more"}))
            elif event["type"] in ("response.completed", "response.incomplete") and refused >= 3:
                break
        assert generations <= 2 and refused >= 3
        ws.close()
    finally:
        server.stop()


def test_deep_nesting_on_a_socket_is_an_error_event_and_other_lanes_go_on(tmp_path: Path):
    server = Server(tmp_path, "--sim-decode-tps", "200", "--store", "memory")
    try:
        ws = RawSocket(server)
        ws.send_text(create(input="a story", stream_id="main"))
        ws.send_text('{"type": "response.create", "model": "loopway-sim", "input": ' + "[" * 5000 + "]" * 5000 + "}")
        events = ws.events(until=("response.completed",))
        errors = [e for e in events if e["type"] == "error"]
        assert errors and errors[0]["error"]["code"] == "json_too_deep"
        assert events[-1]["type"] == "response.completed" and events[-1]["stream_id"] == "main"
        ws.send_text(create(input="still here"))
        assert ws.events()[-1]["type"] == "response.completed"
        ws.close()
    finally:
        server.stop()


def test_a_client_that_never_reads_holds_back_its_own_turns_not_the_servers_memory(tmp_path: Path):
    """Eight sockets send request after request and never read an event: once each socket's send
    buffer is full its turns wait (the outbox waits for the client), its queue fills, the server stops
    reading it, and nothing else is slowed or held."""
    server = started(tmp_path, "--sim-decode-tps", "1000000")
    try:
        sockets = [RawSocket(server) for _ in range(8)]
        sent = [0] * len(sockets)
        with Watch(server, rss_bound_mib=60):
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                for i, ws in enumerate(sockets):
                    ws.sock.settimeout(0.05)
                    try:
                        ws.send_text(create(input=f"turn {sent[i]}: write a long answer", max_output_tokens=2048))
                        sent[i] += 1
                    except (TimeoutError, OSError):
                        pass  # the server stopped reading this one: what it has not read, it does not hold
        assert min(sent) > 64  # each socket got past its queue limit before the server stopped reading it
        for ws in sockets:
            ws.close()
    finally:
        server.stop()
