"""A hostile upstream: what an OpenAI-compatible server loopway sits in front of can make it spend.

One Chat Completions server, a misbehaviour per upstream model name: an answer that never ends and
ignores ``max_tokens``, a line of the event stream that never ends, and a 4xx whose body is 200 MB.
The watch's normal client maps to ``good``, which answers as a server should. Under the watch
(``/health`` within 1 s, the normal client's turns complete, memory bounded) each costs its own
response an ending, in its time, and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loopway.bench.mcp_rollout import AppThread
from tests.conftest import MODEL, Server
from tests.hostile.conftest import Watch, asgi_body

SSE = [(b"content-type", b"text/event-stream")]


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def upstream(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["method"] == "GET":  # /v1/models: the health probe
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"object":"list","data":[{"id":"good","object":"model"}]}'})
        return
    raw = await asgi_body(receive)
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch())
    try:
        await BEHAVIOURS[json.loads(raw)["model"]](send, gone)
    finally:
        watcher.cancel()


async def good(send: Any, gone: asyncio.Event) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": SSE})
    usage = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    body = chunk({"role": "assistant", "content": "hi"}) + chunk({}, "stop")
    body += b"data: " + json.dumps({"id": "c", "choices": [], "usage": usage}).encode() + b"\n\ndata: [DONE]\n\n"
    await send({"type": "http.response.body", "body": body})


async def endless(send: Any, gone: asyncio.Event) -> None:
    """Words (about 25,000 a second) until loopway hangs up (or 30 s), whatever ``max_tokens`` said."""
    await send({"type": "http.response.start", "status": 200, "headers": SSE})
    words = chunk({"role": "assistant", "content": "word " * 8})
    deadline = time.monotonic() + 30
    while not gone.is_set() and time.monotonic() < deadline:
        await send({"type": "http.response.body", "body": words * 16, "more_body": True})
        await asyncio.sleep(0.005)
    await send({"type": "http.response.body", "body": b""})


async def flood(
    send: Any, gone: asyncio.Event, start: dict[str, Any], head: bytes, piece: bytes, times: int, tail: bytes
) -> None:
    """``head``, then ``piece`` ``times`` over (until loopway hangs up), then ``tail``."""
    await send({"type": "http.response.start", **start})
    await send({"type": "http.response.body", "body": head, "more_body": True})
    for _ in range(times):
        if gone.is_set():
            break
        await send({"type": "http.response.body", "body": piece, "more_body": True})
        await asyncio.sleep(0)
    await send({"type": "http.response.body", "body": tail})


async def one_line(send: Any, gone: asyncio.Event) -> None:
    """One ``data:`` line that never ends: 64 MiB, four times the bound."""
    await flood(send, gone, {"status": 200, "headers": SSE}, b"data: ", b"x" * 65536, 1024, b"")


async def big_error(send: Any, gone: asyncio.Event) -> None:
    """A 400 whose error message is 200 MB."""
    start = {"status": 400, "headers": [(b"content-type", b"application/json")]}
    await flood(send, gone, start, b'{"error": {"message": "', b"x" * 1_000_000, 200, b'"}}')


async def bad_usage(send: Any, gone: asyncio.Event) -> None:
    """An answer whose usage is not a count: a string, 10^30, a negative number."""
    await send({"type": "http.response.start", "status": 200, "headers": SSE})
    usage = {"prompt_tokens": "lots", "completion_tokens": 1e30, "prompt_tokens_details": {"cached_tokens": -5}}
    body = chunk({"role": "assistant", "content": "hi"}) + chunk({}, "stop")
    body += b"data: " + json.dumps({"id": "c", "choices": [], "usage": usage}).encode() + b"\n\ndata: [DONE]\n\n"
    await send({"type": "http.response.body", "body": body})


async def deep_first(send: Any, gone: asyncio.Event) -> None:
    """A first chunk nested 100,000 deep."""
    await send({"type": "http.response.start", "status": 200, "headers": SSE})
    await send({"type": "http.response.body", "body": b"data: " + b"[" * 100_000 + b"]" * 100_000 + b"\n\n"})


BEHAVIOURS = {
    "good": good,
    "endless": endless,
    "one-line": one_line,
    "big-error": big_error,
    "bad-usage": bad_usage,
    "deep-first": deep_first,
}


@pytest.fixture(scope="module")
def hostile_upstream() -> Iterator[AppThread]:
    with AppThread(upstream) as server:
        yield server


@pytest.fixture
def front(tmp_path: Path, hostile_upstream: AppThread) -> Iterator[Server]:
    models = ",".join([f"{MODEL}=good", *(f"{kind}={kind}" for kind in BEHAVIOURS if kind != "good")])
    server = Server(
        tmp_path,
        "--engine",
        "openai-chat",
        "--upstream",
        f"http://127.0.0.1:{hostile_upstream.port}/v1",
        "--upstream-model",
        models,
        "--store",
        "memory",
    )
    yield server
    server.stop()


def create(server: Server, model: str, **fields: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = httpx.post(
        f"{server.url}/responses", json={"model": model, "input": "go", "store": False, **fields}, timeout=30
    )
    return answer, time.monotonic() - started


def test_an_upstream_that_never_stops_is_cut_at_max_output_tokens(front: Server):
    with Watch(front, rss_bound_mib=250):
        answer, took = create(front, "endless", max_output_tokens=50)
        assert answer.status_code == 200, answer.text
        response = answer.json()
        assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "max_output_tokens"}
        assert 50 <= response["usage"]["output_tokens"] <= 50 + 16 + 8 * 2 * 16  # the slack, and one chunk of words
        assert took < 5, took
        queued = httpx.post(
            f"{front.url}/responses",
            json={"model": "endless", "input": "go", "background": True},  # bounded by the window only
            timeout=10,
        ).json()
        time.sleep(0.5)
        started = time.monotonic()
        cancelled = httpx.post(f"{front.url}/responses/{queued['id']}/cancel", timeout=10)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert time.monotonic() - started < 2


def test_a_line_that_never_ends_and_a_huge_error_body_cost_their_response_only(front: Server):
    with Watch(front, rss_bound_mib=250):
        answer, took = create(front, "one-line")
        assert answer.status_code == 200 and answer.json()["status"] == "failed", answer.text
        assert took < 10, took
        refused, took = create(front, "big-error")
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "upstream_error" and len(error["message"]) < 1000
        assert took < 5, took


def test_usage_that_is_not_a_count_and_a_deep_first_chunk_end_as_data(front: Server):
    with Watch(front, rss_bound_mib=250):
        answer, _ = create(front, "bad-usage")
        assert answer.status_code == 200 and answer.json()["status"] == "completed", answer.text
        usage = answer.json()["usage"]
        assert 0 < usage["input_tokens"] < 1000 and 0 < usage["output_tokens"] < 1000  # loopway's own counts
        assert usage["input_tokens_details"]["cached_tokens"] == 0
        for _ in range(4):
            deep, _ = create(front, "deep-first")
            assert deep.status_code == 200 and deep.json()["status"] == "failed", deep.text
