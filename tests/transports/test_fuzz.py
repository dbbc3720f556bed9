"""Fuzzing the wire: over 10,000 bad inputs, no 5xx, no crash, every refusal an OpenAI-shaped error.

HTTP bodies run through the app in-process (Starlette's TestClient: the same ASGI app the server
runs, without a socket per example); WebSocket frames go to a real server over one connection,
which must stay usable throughout. Besides random shapes, the classes attackers use: deep nesting,
long strings, many items, schemas that ask for enormous values, and compressed frames.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from websockets.sync.client import connect

from loopway.app import create_app
from loopway.engines.sim import SimSettings
from loopway.settings import Settings
from tests.conftest import MODEL, READ_FILE, Serve, Server
from tests.hostile.conftest import RawSocket, deflated
from tests.openapi import validate, validate_event

FAST = SimSettings(base_latency_ms=0, prefill_tokens_per_s=1e12, decode_tokens_per_s=1e9)
JSON = {"content-type": "application/json"}
VALID = {"model": MODEL, "input": "hi", "tools": [READ_FILE], "max_output_tokens": 16}
FIELDS = [
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "text",
    "metadata",
    "temperature",
    "top_p",
    "max_output_tokens",
    "previous_response_id",
    "include",
    "truncation",
    "store",
    "stream",
    "background",
    "parallel_tool_calls",
    "reasoning",
    "context_management",
    "conversation",
    "stream_id",
    "generate",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
item_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(
            [
                "message",
                "function_call",
                "function_call_output",
                "reasoning",
                "item_reference",
                "compaction",
                "input_text",
                "bogus",
            ]
        )
        | json_values,
        "role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]) | json_values,
        "content": json_values,
        "call_id": json_values,
        "output": json_values,
        "arguments": json_values,
        "name": json_values,
        "id": json_values,
        "encrypted_content": json_values,
        "summary": json_values,
    },
)
mutated = st.builds(lambda field, value: {**VALID, field: value}, st.sampled_from(FIELDS), json_values)
with_items = st.builds(lambda items: {**VALID, "input": items}, st.lists(item_like, max_size=4))
bodies = st.one_of(json_values, mutated, with_items, st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6))


def _nested(depth: int, kind: str) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


deep = st.builds(
    lambda field, depth, kind: {**VALID, field: _nested(depth, kind)},
    st.sampled_from(["input", "tools", "metadata", "text", "reasoning", "extra"]),
    st.integers(40, 400),
    st.sampled_from(["list", "dict"]),
)
long_strings = st.builds(
    lambda field, size, char: {**VALID, field: char * size},
    st.sampled_from(["input", "instructions", "model", "previous_response_id", "user", "prompt_cache_key"]),
    st.integers(10_000, 1_200_000),
    st.sampled_from(["a", " ", "é", "\n", "word ", "<|end|>"]),
)
many_items = st.builds(
    lambda count, item: {**VALID, "input": [item] * count, "truncation": "auto"},
    st.integers(1_000, 60_000),
    st.sampled_from([{"type": "message", "role": "user", "content": "a"}, {}, {"type": "item_reference", "id": "x"}]),
)
explosive_schemas = st.builds(
    lambda key, size, nest: {
        **VALID,
        "tool_choice": "required",
        "tools": [{"type": "function", "name": "f", "parameters": _explosive(key, size, nest)}],
    },
    st.sampled_from(["minItems", "minLength", "minProperties"]),
    st.integers(1_000, 10**9),
    st.integers(1, 3),
)


def _explosive(key: str, size: int, nest: int) -> dict[str, Any]:
    leaf: dict[str, Any] = {"type": "string", key: size}
    for _ in range(nest):
        leaf = {"type": "array", "minItems": size, "items": leaf}
    return {"type": "object", "properties": {"v": leaf}, "required": ["v"]}


costly = st.one_of(deep, long_strings, many_items, explosive_schemas)


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(store="memory", data_dir=str(tmp_path_factory.mktemp("fuzz")), sim=FAST)
    # A served host (the app checks Host), and JSON bodies said to be JSON.
    app = create_app(settings)
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=True, headers=JSON) as client:
        yield client


def check_answer(status: int, body: Any) -> None:
    assert status < 500, body
    if status >= 400:
        validate("ErrorResponse", body)


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies, path=st.sampled_from(["/v1/responses", "/v1/responses/input_tokens"]))
def test_http_bodies(app_client: TestClient, body: Any, path: str):
    response = app_client.post(path, content=json.dumps(body))
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        assert response.status_code == 200
        return
    check_answer(response.status_code, response.json())


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=costly)
def test_costly_http_bodies(app_client: TestClient, body: Any):
    """Each answered (often a 200: long strings and many items are legal) or refused with a 4xx, never a 5xx."""
    response = app_client.post("/v1/responses", content=json.dumps(body))
    check_answer(response.status_code, response.json())


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=st.one_of(
        json_values,
        st.dictionaries(
            st.sampled_from(["model", "input", "previous_response_id", "instructions"]), json_values, max_size=4
        ),
    )
)
def test_compact_bodies(app_client: TestClient, body: Any):
    response = app_client.post("/v1/responses/compact", content=json.dumps(body))
    check_answer(response.status_code, response.json())


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_http_raw_bytes(app_client: TestClient, raw: bytes):
    response = app_client.post("/v1/responses", content=raw)
    check_answer(response.status_code, response.json())


@pytest.fixture(scope="module")
def ws_server(serve: Serve) -> Iterator[Any]:
    server = serve(
        "--store",
        "memory",
        "--sim-decode-tps",
        "1000000000",
        "--sim-base-latency-ms",
        "0",
        "--sim-prefill-tps",
        "1000000000000",
    )
    with connect(server.url.replace("http", "ws", 1) + "/responses", max_size=None) as ws:
        yield ws


frames = st.one_of(
    st.builds(
        lambda body: json.dumps({"type": "response.create", **body}) if isinstance(body, dict) else json.dumps(body), bodies
    ),
    st.builds(
        lambda t, body: json.dumps({"type": t, **body}),
        st.sampled_from(["response.steer", "response.cancel", "response.inject", "", "x"]) | json_values.map(str),
        st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    ),
    st.text(max_size=40),
    st.binary(max_size=40),
)


@settings(max_examples=2500, deadline=None, suppress_health_check=list(HealthCheck))
@given(frame=frames)
def test_websocket_frames(ws_server: Any, frame: str | bytes):
    ws_server.send(frame)
    while True:  # read this frame's answer: an error event, a steering reply, or a response's events
        event = json.loads(ws_server.recv(timeout=10))
        validate_event(event, websocket=True)
        if event["type"] == "error":
            assert event["status"] < 500, event
            return
        if event["type"].startswith("response.steer."):
            return
        if event["type"] in ("response.completed", "response.incomplete", "response.failed"):
            return


@pytest.fixture(scope="module")
def small_frames_server(serve: Serve) -> Server:
    return serve(
        "--store",
        "memory",
        "--max-frame-bytes",
        "1000000",
        "--sim-decode-tps",
        "1000000000",
        "--sim-base-latency-ms",
        "0",
        "--sim-prefill-tps",
        "1e12",
    )


compressed_frames = st.one_of(
    st.builds(
        lambda body: (deflated(json.dumps({"type": "response.create", **body}).encode()), True),
        bodies.filter(lambda b: isinstance(b, dict)),
    ),
    st.builds(lambda text: (deflated(text.encode()), True), st.text(max_size=60)),
    st.builds(
        lambda fill, size: (deflated(fill * size), True),
        st.sampled_from([b"{},", b"[", b"a"]),
        st.integers(100_000, 3_000_000),
    ),
    st.builds(lambda junk: (junk, True), st.binary(min_size=1, max_size=60)),  # not deflate at all
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(frame=compressed_frames)
def test_compressed_websocket_frames(small_frames_server: Server, frame: tuple[bytes, bool]):
    """Compressed frames, well formed or not, small or inflating past the limit: answered with events,
    or the socket closed with a protocol code (1002, 1007, 1009); the server never falls over."""
    payload, compressed = frame
    ws = RawSocket(small_frames_server)
    try:
        ws.send(payload, compressed=compressed)
        opcode, data = ws.recv()
        if opcode == 1:
            validate_event(json.loads(data), websocket=True)
        else:
            assert opcode in (8, -1)
            if opcode == 8 and len(data) >= 2:
                assert int.from_bytes(data[:2], "big") in (1002, 1007, 1009), data
    finally:
        ws.close()
    assert httpx.get(small_frames_server.url.removesuffix("/v1") + "/health", timeout=5).status_code == 200
