"""Injected faults at the wire: what the official SDK and a raw socket see for each one."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.sync.client import connect

from tests.conftest import MODEL, Serve, Server, metric_samples, metric_value
from tests.openapi import validate, validate_event
from tests.transports.test_ws import raw_turn


@pytest.fixture(scope="module")
def faulty(serve: Serve) -> Server:
    """Faults only where a request names one (its metadata), so each test picks its own."""
    return serve(
        "--fault-metadata",
        "on",
        "--store",
        "memory",
        "--sim-decode-tps",
        "2000",
        "--sim-base-latency-ms",
        "1",
    )


@pytest.fixture
def sdk(faulty: Server) -> OpenAI:
    return OpenAI(base_url=faulty.url, api_key="sk-test", max_retries=0)


def fault(clause: str) -> dict[str, Any]:
    return {"metadata": {"loopway_fault": clause}}


def ws_url(server: Server) -> str:
    return server.url.replace("http://", "ws://") + "/responses"


def turn(ws: Any, clause: str | None = None, **body: Any) -> list[dict[str, Any]]:
    """One request on a raw socket, naming its fault; its events up to the terminal one, validated."""
    return raw_turn(ws, {"input": "Tell me a story", **(fault(clause) if clause else {}), **body})


def create(ws: Any, clause: str) -> None:
    ws.send(json.dumps({"type": "response.create", "model": MODEL, "input": "Tell me a story", **fault(clause)}))


# HTTP -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clause", "status", "error_class"),
    [
        ("http-500", 500, openai.InternalServerError),
        ("http-503", 503, openai.InternalServerError),
        ("rate-limit retry-after=2.5", 429, openai.RateLimitError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_http_refusals_come_before_the_first_byte(sdk: OpenAI, clause: str, status: int, error_class: type, stream: bool):
    with pytest.raises(error_class) as refused:
        sdk.responses.create(model=MODEL, input="hi", stream=stream, **fault(clause))
    assert refused.value.status_code == status
    validate("ErrorResponse", refused.value.response.json())
    if status == 429:
        headers = refused.value.response.headers
        assert headers["retry-after"] == "3" and headers["retry-after-ms"] == "2500"
        assert refused.value.code == "rate_limit_exceeded" and "try again in 2.5s" in refused.value.message


def test_the_sdk_retries_an_injected_503_by_itself(faulty: Server):
    """The SDK's own retries see the fault and try again; each try draws again (here: always fails)."""
    client = OpenAI(base_url=faulty.url, api_key="sk-test", max_retries=1)
    before = metric_value(metric_samples(faulty), "loopway_faults_injected_total", kind="http-503")
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model=MODEL, input="hi", **fault("http-503"))
    assert metric_value(metric_samples(faulty), "loopway_faults_injected_total", kind="http-503") == before + 2


def test_sse_drop_cuts_the_stream_after_its_events(faulty: Server):
    body = {"model": MODEL, "input": "Tell me a story", "stream": True, **fault("drop after=4")}
    seen = []
    with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
        with httpx.stream("POST", faulty.url + "/responses", json=body, timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    seen.append(json.loads(line[5:])["type"])
    assert seen[:2] == ["response.created", "response.in_progress"] and len(seen) == 4
    assert httpx.get(faulty.url.removesuffix("/v1") + "/health").status_code == 200  # the server carries on


def test_failed_mid_stream_is_response_failed_with_a_server_error(sdk: OpenAI):
    events = list(sdk.responses.create(model=MODEL, input="Tell me a story", stream=True, **fault("failed after=3")))
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.failed"
    assert sum(kind == "response.output_text.delta" for kind in kinds) == 3
    failed = events[-1].response
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
    for event in events:
        validate_event(event.model_dump(mode="json", exclude_unset=True))
    stored = sdk.responses.retrieve(failed.id)
    assert stored.status == "failed"


def test_failed_without_streaming_returns_the_failed_response(sdk: OpenAI):
    response = sdk.responses.create(model=MODEL, input="Tell me a story", **fault("failed after=1"))
    assert response.status == "failed" and response.error is not None and response.error.code == "server_error"


def test_slow_and_stall_delay_the_stream_but_finish_it(sdk: OpenAI):
    started = time.perf_counter()
    first = None
    for event in sdk.responses.create(model=MODEL, input="hi", stream=True, **fault("slow ms=400")):
        if first is None and event.type == "response.output_text.delta":
            first = time.perf_counter() - started
    assert first is not None and first >= 0.38 and event.type == "response.completed"
    started = time.perf_counter()
    gaps, last = [], None
    for event in sdk.responses.create(
        model=MODEL, input="Tell me a story", stream=True, **fault("stall after=3 times=2 ms=300")
    ):
        if event.type == "response.output_text.delta":
            now = time.perf_counter()
            if last is not None:
                gaps.append(now - last)
            last = now
    assert event.type == "response.completed"
    assert sum(gap >= 0.28 for gap in gaps) == 2


def test_cache_miss_refuses_a_continuation_only(sdk: OpenAI):
    first = sdk.responses.create(model=MODEL, input="hi", **fault("cache-miss"))  # not a continuation: served
    assert first.status == "completed"
    with pytest.raises(openai.BadRequestError) as missed:
        sdk.responses.create(model=MODEL, input="more", previous_response_id=first.id, **fault("cache-miss"))
    assert missed.value.code == "previous_response_not_found" and missed.value.param == "previous_response_id"


def test_a_bad_fault_clause_is_a_400_naming_it(sdk: OpenAI):
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.responses.create(model=MODEL, input="hi", **fault("drop=5% colour=red"))
    assert bad.value.param == "metadata.loopway_fault" and "'colour=red' is not a parameter of drop" in bad.value.message


def test_a_server_that_fails_on_purpose_says_so(faulty: Server):
    assert "FAULTS ON: failing requests on purpose (none drawn); requests may name their own" in faulty.output()


def test_without_the_flag_metadata_is_only_metadata(server: Server):
    client = OpenAI(base_url=server.url, api_key="sk-test", max_retries=0)
    response = client.responses.create(model=MODEL, input="hi", **fault("http-500"))
    assert response.status == "completed" and response.metadata == {"loopway_fault": "http-500"}


# WebSocket ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clause", "status", "code"),
    [
        ("http-500", 500, "server_error"),
        ("http-503", 503, None),
        ("rate-limit retry-after=0.5", 429, "rate_limit_exceeded"),
    ],
)
def test_socket_refusals_are_error_events_and_keep_the_socket(faulty: Server, clause: str, status: int, code: str):
    with connect(ws_url(faulty)) as ws:
        error = turn(ws, clause)[-1]
        validate("ResponseWsError", error)
        assert error["type"] == "error" and error["status"] == status and error["error"]["code"] == code
        if status == 429:
            assert error["error"]["headers"]["retry-after-ms"] == "500"
        assert turn(ws)[-1]["type"] == "response.completed"  # the socket still serves


@pytest.mark.parametrize(("clause", "sent", "close_code"), [("close after=3", 3, 1011), ("drop after=5", 5, None)])
def test_socket_cut_mid_stream(faulty: Server, clause: str, sent: int, close_code: int | None):
    """``close``: a close frame 1011; ``drop``: no close frame at all (the client sees 1006)."""
    with connect(ws_url(faulty)) as ws:
        create(ws, clause)
        seen = []
        with pytest.raises(ConnectionClosedError) as cut:
            while True:
                seen.append(json.loads(ws.recv(timeout=30))["type"])
        assert (cut.value.rcvd.code if cut.value.rcvd is not None else None) == close_code
        assert len(seen) == sent and "response.completed" not in seen


def test_socket_failed_mid_stream(faulty: Server):
    with connect(ws_url(faulty)) as ws:
        events = turn(ws, "failed after=2")
        assert events[-1]["type"] == "response.failed"
        assert events[-1]["response"]["error"]["code"] == "server_error"


def test_socket_connection_limit_early(faulty: Server):
    with connect(ws_url(faulty)) as ws:
        error = turn(ws, "connection-limit")[-1]
        validate("ResponseWsError", error)
        assert error["error"]["code"] == "websocket_connection_limit_reached" and error["status"] == 400
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


def test_socket_cache_miss_on_a_continuation(faulty: Server):
    with connect(ws_url(faulty)) as ws:
        parent = turn(ws)[-1]["response"]["id"]
        error = turn(ws, "cache-miss", previous_response_id=parent, store=False)[-1]
        assert error["error"]["code"] == "previous_response_not_found" and error["status"] == 400


def test_the_sdk_connection_sees_a_socket_fault(sdk: OpenAI):
    with sdk.responses.connect() as conn:
        conn.response.create(model=MODEL, input="hi", **fault("http-500"))
        event = json.loads(conn.recv_bytes())
        assert event["type"] == "error" and event["status"] == 500


def test_seeded_faults_hit_the_same_requests_every_run(tmp_path_factory: pytest.TempPathFactory):
    def run() -> list[int]:
        server = Server(tmp_path_factory.mktemp("seeded"), "--faults", "seed=42; http-500=30%", "--store", "memory")
        try:
            client = httpx.Client(base_url=server.url, timeout=30)
            return [client.post("/responses", json={"model": MODEL, "input": "hi"}).status_code for _ in range(20)]
        finally:
            server.stop()

    first = run()
    assert first == run() and 500 in first and 200 in first


def test_errors_answered_are_counted_by_code(faulty: Server, sdk: OpenAI):
    def errors(code: str) -> float:
        return metric_value(metric_samples(faulty), "loopway_errors_total", code=code)

    before = (errors("rate_limit_exceeded"), errors("server_error"))
    with pytest.raises(openai.RateLimitError):
        sdk.responses.create(model=MODEL, input="hi", **fault("rate-limit"))
    with connect(ws_url(faulty)) as ws:
        turn(ws, "http-503")  # code null: counted by its type
    assert (errors("rate_limit_exceeded"), errors("server_error")) == (before[0] + 1, before[1] + 1)


@pytest.mark.parametrize(("clause", "close_code"), [("close after=3", 1011), ("drop after=3", 1006)])
def test_the_sdks_own_reconnect_takes_a_cut_socket_as_recoverable(sdk: OpenAI, clause: str, close_code: int):
    """openai-python reconnects on the codes RFC 6455 calls recoverable (1006 and 1011 among them):
    a cut loses the response in flight, and the same connection object serves the next request."""
    reconnects: list[tuple[int, int]] = []
    with sdk.responses.connect(
        on_reconnecting=lambda e: reconnects.append((e.attempt, e.close_code)), initial_delay=0.05
    ) as conn:
        conn.response.create(model=MODEL, input="Tell me a story", store=False, **fault(clause))
        events = iter(conn)
        assert [next(events).type for _ in range(3)] == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
        ]
        following: list[Any] = []

        def read() -> None:  # the SDK reconnects inside its receive loop
            for event in events:
                following.append(event)
                if event.type == "response.completed":
                    return

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 10
        while not reconnects and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reconnects == [(1, close_code)]
        conn.response.create(model=MODEL, input="again", store=False)
        while not (following and following[-1].type == "response.completed") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert following[0].type == "response.created" and following[-1].type == "response.completed"
