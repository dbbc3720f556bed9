"""WebSocket mode at the wire: the official SDK's ``responses.connect()`` and raw sockets."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from openai import OpenAI
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import MODEL, READ_FILE, Serve, Server
from tests.openapi import validate_event

TERMINAL = {"response.completed", "response.incomplete", "response.failed", "error"}


def ws_url(server: Server) -> str:
    return server.url.replace("http://", "ws://") + "/responses"


def events_until_terminal(conn: Any, validate: bool = True) -> list[dict]:
    """Raw events of one response from an SDK connection, validated against the schema."""
    events = []
    while True:
        event = json.loads(conn.recv_bytes())
        if validate:
            validate_event(event, websocket=True)
        events.append(event)
        if event["type"] in TERMINAL:
            return events


def raw_turn(ws: Any, body: dict) -> list[dict]:
    ws.send(json.dumps({"type": "response.create", "model": MODEL, **body}))
    events = []
    while True:
        event = json.loads(ws.recv(timeout=30))
        validate_event(event, websocket=True)
        events.append(event)
        if event["type"] in TERMINAL:
            return events


@pytest.fixture(scope="module")
def slow(serve: Serve) -> Server:
    """A server whose model decodes slowly enough to overlap, steer and interleave."""
    return serve("--sim-decode-tps", "300", "--sim-base-latency-ms", "1")


def test_thirty_turn_function_calling_loop_with_store_false_and_incremental_input(client: OpenAI, server: Server):
    targets = [f"pkg/file_{i:02d}.py" for i in range(30)]
    ids, read = [], []
    with client.responses.connect() as conn:
        conn.response.create(
            model=MODEL,
            tools=[READ_FILE],
            store=False,
            instructions="Read every file.",
            input="Read these: " + " ".join(targets),
        )
        for turn in range(31):
            events = events_until_terminal(conn)
            final = events[-1]
            assert final["type"] == "response.completed", final
            assert all("stream_id" not in e for e in events)
            assert [e["sequence_number"] for e in events] == list(range(len(events)))
            response = final["response"]
            ids.append(response["id"])
            if turn > 1:  # the engine saw all but the new items before
                usage = response["usage"]
                assert usage["input_tokens_details"]["cached_tokens"] >= usage["input_tokens"] - 200
            calls = [o for o in response["output"] if o["type"] == "function_call"]
            if not calls:
                break
            read.append(json.loads(calls[0]["arguments"])["path"])
            conn.response.create(
                model=MODEL,
                tools=[READ_FILE],
                store=False,
                instructions="Read every file.",
                previous_response_id=response["id"],
                input=[
                    {
                        "type": "function_call_output",
                        "call_id": calls[0]["call_id"],
                        "output": f"# {read[-1]}\nprint('hello')\n",
                    }
                ],
            )
    assert read == targets and len(ids) == 31
    assert "pkg/file_29.py" in response["output"][0]["content"][0]["text"]
    for response_id in ids[:3] + ids[-3:]:  # store=false: nothing was written anywhere
        assert httpx.get(f"{server.url}/responses/{response_id}").status_code == 404


def test_warm_up_then_chaining(client: OpenAI):
    with client.responses.connect() as conn:
        conn.response.create(
            model=MODEL,
            generate=False,
            store=False,
            tools=[READ_FILE],
            input=[{"role": "developer", "content": "You are careful."}],
        )
        events = events_until_terminal(conn)
        assert [e["type"] for e in events] == ["response.created", "response.completed"]
        warm = events[-1]["response"]
        assert warm["output"] == [] and warm["usage"]["output_tokens"] == 0
        conn.response.create(
            model=MODEL, store=False, tools=[READ_FILE], previous_response_id=warm["id"], input="Please read src/app.py"
        )
        final = events_until_terminal(conn)[-1]
        assert final["type"] == "response.completed"
        assert final["response"]["output"][0]["name"] == "read_file"


def test_named_lanes_tag_every_event_and_run_concurrently(slow: Server):
    client = OpenAI(base_url=slow.url, api_key="sk-test")
    with client.responses.connect() as conn:
        conn.response.create(model=MODEL, input="write a story", stream_id="a", store=False)
        conn.response.create(model=MODEL, input="write a poem", stream_id="b", store=False)
        conn.response.create(model=MODEL, input="write a song", store=False)
        done: dict[Any, int] = {}
        order = []
        while len(done) < 3:
            event = json.loads(conn.recv_bytes())
            validate_event(event, websocket=True)
            lane = event.get("stream_id")
            order.append(lane)
            if event["type"] == "response.completed":
                done[lane] = len(order)
    assert set(done) == {"a", "b", None}
    first_done = min(done.values())
    assert {"a", "b", None} <= set(order[:first_done])  # all three lanes streamed before any finished


def test_same_lane_is_fifo(slow: Server):
    with connect(ws_url(slow)) as ws:
        for text in ("first", "second"):
            ws.send(
                json.dumps(
                    {
                        "type": "response.create",
                        "model": MODEL,
                        "input": f"say {text}",
                        "store": False,
                        "stream_id": "x",
                        "max_output_tokens": 30,
                    }
                )
            )
        ids: list[str] = []
        while len(ids) < 2 or ids[-1] == "open":
            event = json.loads(ws.recv(timeout=30))
            if event["type"] == "response.created":
                assert len(ids) == 0 or ids[-1] != "open", "second started before first ended"
                ids.append("open")
            elif event["type"] in ("response.completed", "response.incomplete"):
                ids[-1] = event["response"]["id"]
    assert all(i.startswith("resp_") for i in ids)


def test_more_than_sixteen_responses_are_queued_not_refused(slow: Server):
    with connect(ws_url(slow)) as ws:
        for lane in range(20):
            ws.send(
                json.dumps(
                    {
                        "type": "response.create",
                        "model": MODEL,
                        "input": "hi",
                        "store": False,
                        "stream_id": f"lane{lane}",
                        "max_output_tokens": 40,
                    }
                )
            )
        running, peak, finished = set(), 0, 0
        while finished < 20:
            event = json.loads(ws.recv(timeout=30))
            assert event["type"] != "error", event
            if event["type"] == "response.in_progress":
                running.add(event["stream_id"])
                peak = max(peak, len(running))
            elif event["type"] in ("response.completed", "response.incomplete"):
                running.discard(event["stream_id"])
                finished += 1
    assert peak == 16


def test_fork_from_another_lane(client: OpenAI):
    with connect(ws_url_of(client)) as ws:
        base = raw_turn(ws, {"input": "Please read src/app.py", "tools": [READ_FILE], "store": False, "stream_id": "main"})[
            -1
        ]["response"]
        call = base["output"][0]
        output = {"type": "function_call_output", "call_id": call["call_id"], "output": "x = 1"}
        fork = raw_turn(
            ws,
            {
                "input": [output],
                "tools": [READ_FILE],
                "store": False,
                "stream_id": "fork",
                "previous_response_id": base["id"],
            },
        )
        assert fork[-1]["type"] == "response.completed" and all(e["stream_id"] == "fork" for e in fork)
        main = raw_turn(
            ws,
            {
                "input": [output],
                "tools": [READ_FILE],
                "store": False,
                "stream_id": "main",
                "previous_response_id": base["id"],
            },
        )
        assert main[-1]["type"] == "response.completed"


def ws_url_of(client: OpenAI) -> str:
    return str(client.base_url).rstrip("/").replace("http://", "ws://") + "/responses"


def error_of(events: list[dict]) -> dict:
    assert events[-1]["type"] == "error", events[-1]
    return events[-1]


def test_invalid_stream_id(client: OpenAI):
    with connect(ws_url_of(client)) as ws:
        for bad in ("", "has space", "x" * 257, "semi;colon"):
            error = error_of(raw_turn(ws, {"input": "hi", "stream_id": bad}))
            assert error["status"] == 400 and error["error"]["code"] == "invalid_stream_id"
            assert error["error"]["param"] == "stream_id" and "stream_id" not in error


def test_stream_limit(client: OpenAI):
    with connect(ws_url_of(client)) as ws:
        for lane in range(32):
            assert (
                raw_turn(ws, {"input": "hi", "store": False, "stream_id": f"s{lane}", "max_output_tokens": 16})[-1]["type"]
                == "response.incomplete"
            )
        error = error_of(raw_turn(ws, {"input": "hi", "stream_id": "one-too-many"}))
        assert error["error"]["code"] == "websocket_stream_limit_reached" and error["stream_id"] == "one-too-many"
        assert (
            raw_turn(ws, {"input": "hi", "store": False, "stream_id": "s3", "max_output_tokens": 16})[-1]["type"]
            == "response.incomplete"
        )


def test_previous_response_not_found_with_store_false(client: OpenAI):
    with connect(ws_url_of(client)) as ws:
        error = error_of(
            raw_turn(ws, {"input": "hi", "store": False, "previous_response_id": "resp_nope", "stream_id": "l"})
        )
        assert error == {
            "type": "error",
            "status": 400,
            "stream_id": "l",
            "error": {
                "type": "invalid_request_error",
                "code": "previous_response_not_found",
                "param": "previous_response_id",
                "message": "Previous response with id 'resp_nope' not found.",
            },
        }


def test_failed_same_lane_continuation_evicts_parent(client: OpenAI):
    with connect(ws_url_of(client)) as ws:
        parent = raw_turn(ws, {"input": "hi", "store": False})[-1]["response"]["id"]
        bad = {"type": "function_call_output", "call_id": "call_unknown", "output": "?"}
        assert (
            error_of(raw_turn(ws, {"input": [bad], "store": False, "previous_response_id": parent}))["error"]["code"]
            == "tool_call_not_found"
        )
        again = error_of(raw_turn(ws, {"input": "hi", "store": False, "previous_response_id": parent}))
        assert again["error"]["code"] == "previous_response_not_found"


def test_failed_fork_keeps_parent(client: OpenAI):
    with connect(ws_url_of(client)) as ws:
        parent = raw_turn(ws, {"input": "hi", "store": False, "stream_id": "a"})[-1]["response"]["id"]
        bad = {"type": "function_call_output", "call_id": "call_unknown", "output": "?"}
        assert (
            error_of(raw_turn(ws, {"input": [bad], "store": False, "stream_id": "b", "previous_response_id": parent}))[
                "stream_id"
            ]
            == "b"
        )
        ok = raw_turn(ws, {"input": "go on", "store": False, "stream_id": "a", "previous_response_id": parent})
        assert ok[-1]["type"] == "response.completed"


def test_new_connection_after_close(client: OpenAI):
    with connect(ws_url_of(client)) as ws:
        volatile = raw_turn(ws, {"input": "hi", "store": False})[-1]["response"]["id"]
        stored = raw_turn(ws, {"input": "hello", "store": True})[-1]["response"]["id"]
    with connect(ws_url_of(client)) as ws:
        assert (
            error_of(raw_turn(ws, {"input": "x", "store": False, "previous_response_id": volatile}))["error"]["code"]
            == "previous_response_not_found"
        )
        resumed = raw_turn(ws, {"input": "continue", "store": True, "previous_response_id": stored})[-1]
        assert resumed["type"] == "response.completed"
        assert resumed["response"]["usage"]["input_tokens"] > 20  # the stored context came back


def test_stored_response_is_readable_over_http_right_after_completed(client: OpenAI):
    with connect(ws_url_of(client)) as ws:
        for _ in range(5):
            response = raw_turn(ws, {"input": "hello", "store": True})[-1]["response"]
            fetched = httpx.get(f"{client.base_url}responses/{response['id']}")
            assert fetched.status_code == 200 and fetched.json()["status"] == "completed"


@pytest.mark.parametrize(
    "frame,code",
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_event"),
        ('{"type": "response.cancel"}', "unknown_event_type"),
        ('{"type": "response.create", "model": "loopway-sim", "input": "x", "background": true}', "unsupported_parameter"),
        ('{"type": "response.create", "model": "loopway-sim", "input": 7}', "invalid_type"),
        ('{"type": "response.create", "input": "x"}', "missing_required_parameter"),
        ('{"type": "response.create", "model": "nope", "input": "x"}', "model_not_found"),
    ],
)
def test_bad_frames_get_an_error_and_the_connection_stays_usable(client: OpenAI, frame: str, code: str):
    with connect(ws_url_of(client)) as ws:
        ws.send(frame)
        error = json.loads(ws.recv(timeout=10))
        validate_event(error, websocket=True)
        assert error["type"] == "error" and error["status"] == 400 and error["error"]["code"] == code
        assert raw_turn(ws, {"input": "still there?", "store": False})[-1]["type"] == "response.completed"


def test_binary_frames_are_refused(client: OpenAI):
    with connect(ws_url_of(client)) as ws:
        ws.send(b'{"type": "response.create"}')
        error = json.loads(ws.recv(timeout=10))
        assert error["error"]["code"] == "binary_frames_not_supported"
        assert raw_turn(ws, {"input": "ok", "store": False})[-1]["type"] == "response.completed"


def test_a_frame_over_the_size_limit_closes_with_1009_and_the_server_goes_on(tmp_path_factory: pytest.TempPathFactory):
    server = Server(tmp_path_factory.mktemp("frames"), "--max-frame-bytes", "2000", "--store", "memory")
    try:
        with connect(ws_url(server)) as ws:
            ws.send(json.dumps({"type": "response.create", "model": MODEL, "input": "x" * 5000}))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        with connect(ws_url(server)) as ws:
            assert raw_turn(ws, {"input": "ok", "store": False})[-1]["type"] == "response.completed"
    finally:
        server.stop()


def test_connection_age_limit(tmp_path_factory: pytest.TempPathFactory):
    server = Server(tmp_path_factory.mktemp("age"), "--ws-connection-max-age-s", "0.5", "--store", "memory")
    try:
        with connect(ws_url(server)) as ws:
            assert raw_turn(ws, {"input": "hi", "store": False})[-1]["type"] == "response.completed"
            error = json.loads(ws.recv(timeout=10))
            assert error["error"]["code"] == "websocket_connection_limit_reached" and error["status"] == 400
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=10)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    finally:
        server.stop()


def test_handshake_accepts_codex_headers_and_compression(client: OpenAI):
    headers = {
        "Authorization": "Bearer sk-test",
        "OpenAI-Beta": "responses_websockets=2026-02-06",
        "originator": "codex_exec",
        "x-codex-turn-metadata": '{"request_kind":"prewarm"}',
    }
    with connect(ws_url_of(client), additional_headers=headers, compression="deflate") as ws:
        assert raw_turn(ws, {"input": "hi", "store": False, "stream": True})[-1]["type"] == "response.completed"


def test_plain_get_on_the_websocket_path_is_an_http_error(client: OpenAI):
    r = httpx.get(f"{client.base_url}responses")
    assert r.status_code in (400, 405, 426) and "error" in r.json()


def test_steering_a_text_answer_starts_a_successor_when_the_item_ends(slow: Server):
    client = OpenAI(base_url=slow.url, api_key="sk-test")
    with client.responses.connect() as conn:
        conn.response.create(model=MODEL, input="write a long story", store=False)
        created = json.loads(conn.recv_bytes())
        target = created["response"]["id"]
        while json.loads(conn.recv_bytes())["type"] != "response.output_text.delta":
            pass
        conn.response.steer(previous_response_id=target, input="Actually, make it about src/cat.py instead.")
        seen = read_until(conn, lambda e, seen: e["type"] == "response.completed" and e["response"]["id"] != target)
    accepted = next(e for e in seen if e["type"] == "response.steer.accepted")
    assert accepted["steer"]["previous_response_id"] == target and accepted["steer"]["id"].startswith("steer_")
    first = next(e for e in seen if e["type"] == "response.completed")  # one item: it finishes normally
    assert first["response"]["id"] == target
    successor = next(e for e in seen if e["type"] == "response.created")
    assert successor["response"]["previous_response_id"] == target
    assert "src/cat.py" in json.dumps(seen[-1]["response"]["output"])


def read_until(conn: Any, stop: Any) -> list[dict]:
    seen: list[dict] = []
    while True:
        event = json.loads(conn.recv_bytes())
        validate_event(event, websocket=True)
        seen.append(event)
        if stop(event, seen):
            return seen


def test_steering_parallel_calls_ends_steered_and_waits_for_tool_output(slow: Server):
    client = OpenAI(base_url=slow.url, api_key="sk-test")
    targets = " ".join(f"src/m{i}.py" for i in range(8))
    with client.responses.connect() as conn:
        conn.response.create(model=MODEL, input=f"read all of {targets}", tools=[READ_FILE], store=False)
        target = json.loads(conn.recv_bytes())["response"]["id"]
        while json.loads(conn.recv_bytes())["type"] != "response.function_call_arguments.delta":
            pass
        conn.response.steer(previous_response_id=target, input="Stop, read src/cat.py instead.")
        seen = read_until(conn, lambda e, seen: e["type"] == "response.steer.pending")
        ended = next(e for e in seen if e["type"] == "response.incomplete")
        assert ended["response"]["incomplete_details"] == {"reason": "steered"}
        calls = [o for o in ended["response"]["output"] if o["type"] == "function_call"]
        assert 1 <= len(calls) < 8 and all(c["status"] == "completed" for c in calls)
        pending = seen[-1]
        assert pending["required_input"] == [
            {"type": "function_call_output", "call_id": c["call_id"], "name": "read_file"} for c in calls
        ]
        conn.response.create(
            model=MODEL,
            tools=[READ_FILE],
            store=False,
            previous_response_id=target,
            input=[{"type": "function_call_output", "call_id": c["call_id"], "output": "ok"} for c in calls],
        )
        final = events_until_terminal(conn)[-1]
    assert final["type"] == "response.completed"
    assert json.loads(final["response"]["output"][0]["arguments"]) == {"path": "src/cat.py"}


def test_steering_failures(client: OpenAI):
    with client.responses.connect() as conn:
        conn.response.steer(previous_response_id="resp_unknown", input="hi")
        failed = json.loads(conn.recv_bytes())
        validate_event(failed, websocket=True)
        assert failed["type"] == "response.steer.failed" and failed["error"]["code"] == "response_not_found"
        conn.response.create(model=MODEL, input="hi", store=False)
        done = events_until_terminal(conn)[-1]["response"]["id"]
        conn.response.steer(previous_response_id=done, input="too late")
        failed = json.loads(conn.recv_bytes())
        assert failed["error"]["code"] == "response_already_completed"
        assert failed["steer"]["input"] == "too late"


@pytest.mark.parametrize(
    "headers",
    [
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n",
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n",
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 99\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    ],
)
def test_malformed_upgrades_get_an_http_error_and_the_server_lives_on(server: Server, headers: bytes):
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /v1/responses HTTP/1.1\r\nHost: localhost\r\n" + headers + b"\r\n")
        status_line = sock.recv(200).split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 4"), status_line
    assert httpx.get(f"{server.url}/models").status_code == 200


@pytest.mark.parametrize(
    ("flags", "negotiated", "small_compressed"),
    [((), True, False), (("--ws-deflate-min-bytes", "0"), True, True), (("--ws-deflate", "off"), False, False)],
)
def test_deflate_only_where_it_pays(tmp_path_factory, flags: tuple[str, ...], negotiated: bool, small_compressed: bool):
    """With permessage-deflate negotiated, deltas (small) go out as they are and response snapshots
    (large) compressed; --ws-deflate-min-bytes 0 compresses all; --ws-deflate off offers none."""
    from tests.hostile.conftest import RawSocket

    server = Server(tmp_path_factory.mktemp("deflate"), "--store", "memory", *flags)
    try:
        ws = RawSocket(server)
        assert (b"permessage-deflate" in ws.head.lower()) is negotiated
        ws.send_text(json.dumps({"type": "response.create", "model": MODEL, "store": False, "input": "hello there"}))
        seen: dict[str, bool] = {}
        while "response.completed" not in seen:
            opcode, payload = ws.recv()
            assert opcode == 1
            seen.setdefault(json.loads(payload)["type"], ws.compressed)
        assert seen["response.output_text.delta"] is small_compressed
        assert seen["response.created"] is negotiated  # about a kilobyte: worth compressing
        ws.close()
    finally:
        server.stop()
