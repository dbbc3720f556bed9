"""Hostile MCP servers: what a server a client points loopway at can make it spend.

Each serves one misbehaviour for every request (the client's ``server_url`` picks it): a stream
that does not answer (a keep-alive comment every 100 ms, for 5 s), a line with no end of message
(4 MiB of it),
a gzip bomb (100 MB of zeros in about 100 kB), a listing nested 100,000 deep, and 5,000 tools.
Under the watch (``/health`` within 1 s, a normal client's turns complete, memory bounded) every
one of them costs a call or a listing its error, in its time, and nothing else.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loopway.bench.mcp_rollout import AppThread
from tests.conftest import MODEL, Server, free_port
from tests.hostile.conftest import FAST, Watch, asgi_body

READ_NOTE = {"name": "read_note", "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}}}


@functools.cache
def bomb() -> bytes:
    return gzip.compress(b"0" * 100_000_000, compresslevel=9)


def _initialize(body: dict[str, Any]) -> bytes:
    result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": {"name": "bad"}}
    return json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": result}).encode()


async def hostile(scope: dict, receive: Any, send: Any) -> None:
    """One ASGI app, a misbehaviour per path; ``initialize`` is answered properly so each gets its chance."""
    if scope["type"] != "http":
        return
    raw = await asgi_body(receive)
    body = json.loads(raw or b"{}")
    if "id" not in body:
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    kind = scope["path"].strip("/")
    if body.get("method") == "initialize":
        await _answer(send, _initialize(body))
    elif kind == "drip":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for _ in range(50):  # 5 s, past the 2 s limit (bounded: this server must stop when the test ends)
            await send({"type": "http.response.body", "body": b": still thinking\n\n", "more_body": True})
            await asyncio.sleep(0.1)
        await send({"type": "http.response.body", "body": b""})
    elif kind == "endless":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for _ in range(64):  # 4 MiB, past the 1 MiB cap
            await send({"type": "http.response.body", "body": b"data: " + b"x" * 65536, "more_body": True})
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b""})
    elif kind == "bomb":
        headers = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": bomb()})
    elif kind == "deep":
        tools = "[" * 100_000 + "]" * 100_000
        await _answer(send, f'{{"jsonrpc":"2.0","id":{body["id"]},"result":{{"tools":{tools}}}}}'.encode())
    elif kind == "redirect":  # a listing that looks right, on a 302: never read as an answer
        listing = {"jsonrpc": "2.0", "id": body["id"], "result": {"tools": [READ_NOTE]}}
        headers = [(b"content-type", b"application/json"), (b"location", b"http://127.0.0.1:1/")]
        await send({"type": "http.response.start", "status": 302, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(listing).encode()})
    elif kind == "hold":  # a listing that takes 3 s: it holds a pooled connection until loopway gives up
        await asyncio.sleep(3)
        await _answer(send, json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": {"tools": [READ_NOTE]}}).encode())
    elif kind == "quick":  # a server as it should be: one tool, answered at once
        result = (
            {"tools": [READ_NOTE]} if body.get("method") == "tools/list" else {"content": [{"type": "text", "text": "ok"}]}
        )
        await _answer(send, json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": result}).encode())
    elif kind in ("slow", "deep-call") and body.get("method") == "tools/list":
        await _answer(send, json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": {"tools": [READ_NOTE]}}).encode())
    elif kind == "slow":  # a call that takes 5.5 s: longer than httpx's default 5 s, within the call limit
        await asyncio.sleep(5.5)
        result = {"content": [{"type": "text", "text": "slow but sure"}]}
        await _answer(send, json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": result}).encode())
    elif kind == "deep-call":
        content = "[" * 5_000 + "]" * 5_000
        await _answer(send, f'{{"jsonrpc":"2.0","id":{body["id"]},"result":{{"content":{content}}}}}'.encode())
    elif kind == "many":
        tool = {"name": "t", "inputSchema": {"type": "object"}}
        tools = [{**tool, "name": f"t{i}"} for i in range(5_000)]
        await _answer(send, json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": {"tools": tools}}).encode())


async def _answer(send: Any, data: bytes) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": data})


@pytest.fixture(scope="module")
def bad_mcp() -> Iterator[AppThread]:
    with AppThread(hostile) as server:
        yield server


@pytest.fixture
def mcp_target(tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path, *FAST, "--mcp-allow", "127.0.0.1", "--mcp-call-timeout-s", "2", "--mcp-list-timeout-s", "2")
    yield server
    server.stop()


def test_hostile_mcp_servers_cost_a_call_its_error_and_nothing_else(mcp_target: Server, bad_mcp: AppThread):
    base = f"http://127.0.0.1:{bad_mcp.port}"
    failures: dict[str, str] = {}

    def attack(kind: str) -> None:
        tool = {"type": "mcp", "server_label": kind, "server_url": f"{base}/{kind}", "require_approval": "never"}
        body = {"model": MODEL, "input": "read notes/a.md", "tools": [tool]}
        response = httpx.post(f"{mcp_target.url}/responses", json=body, timeout=30)
        assert response.status_code == 200, response.text
        listing = response.json()["output"][0]
        assert listing["type"] == "mcp_list_tools"
        failures[kind] = listing.get("error") or f"{len(listing['tools'])} tools"

    with Watch(mcp_target, rss_bound_mib=250):
        for kind in ("drip", "endless", "bomb", "deep", "many"):
            attack(kind)
    assert "did not list its tools within 2 s" in failures["drip"]
    assert f"exceeded {1 << 20} bytes" in failures["endless"] and f"exceeded {1 << 20} bytes" in failures["bomb"]
    assert any(reason in failures["deep"] for reason in ("not JSON", "nested too deeply", "exceeded"))
    assert failures["many"] == "128 tools"  # kept from a listing of 5,000


def test_an_allow_list_entry_opens_only_what_it_names(tmp_path: Path, bad_mcp: AppThread):
    """``--mcp-allow http://127.0.0.1:P/many,localhost:P``: not every port and path of loopback."""
    port = bad_mcp.port
    server = Server(tmp_path, *FAST, "--mcp-allow", f"http://127.0.0.1:{port}/many,localhost:{port}")
    internal = free_port()  # another service on the same address: must stay out of reach
    try:

        def create(url: str) -> httpx.Response:
            tool = {"type": "mcp", "server_label": "s", "server_url": url, "require_approval": "never"}
            body = {"model": MODEL, "input": "read notes/a.md", "tools": [tool]}
            return httpx.post(f"{server.url}/responses", json=body, timeout=30)

        with Watch(server, rss_bound_mib=250):
            named = create(f"http://127.0.0.1:{port}/many")
            assert named.status_code == 200 and named.json()["output"][0]["tools"], named.text
            for url in (
                f"http://127.0.0.1:{port}/drip",  # another path of the entry's address and port
                f"http://127.0.0.1:{internal}/many",  # another port
                f"http://127.0.0.1:{server.port}/v1/models",  # loopway itself
                f"http://127.0.0.2:{port}/many",  # the rest of 127/8
                f"http://[::ffff:127.0.0.1]:{port}/many",
                f"http://127.0.0.1:{port}/many/%2e%2e/drip",
                f"http://127.0.0.1:{port}/many%2f..%2fdrip",
                f"http://localhost:{internal}/",  # localhost's entry names a port
            ):
                refused = create(url)
                assert refused.status_code == 400, (url, refused.text)
                assert refused.json()["error"]["code"] == "mcp_server_not_allowed", url
            assert create(f"http://localhost:{port}/many").status_code == 200
    finally:
        server.stop()


def test_a_redirect_a_slow_tool_and_a_deep_answer_each_end_as_data(tmp_path: Path, bad_mcp: AppThread):
    """A 302 whose body looks like a listing is not read; a 5.5 s tool runs to its answer under a 10 s
    call limit (no library default cuts it at 5 s); an answer nested 5,000 deep is that call's
    error, and the response completes, in a normal round and on the approved-call path."""
    server = Server(tmp_path, *FAST, "--mcp-allow", "127.0.0.1", "--mcp-call-timeout-s", "10")
    base = f"http://127.0.0.1:{bad_mcp.port}"
    try:

        def create(kind: str, **extra: Any) -> dict[str, Any]:
            tool = {"type": "mcp", "server_label": "s", "server_url": f"{base}/{kind}", "require_approval": "never"}
            body = {"model": MODEL, "input": "read notes/a.md", "tools": [{**tool, **extra}], "store": True}
            answer = httpx.post(f"{server.url}/responses", json=body, timeout=30)
            assert answer.status_code == 200, answer.text
            return answer.json()

        with Watch(server, rss_bound_mib=250):
            redirected = create("redirect")["output"][0]
            assert redirected["type"] == "mcp_list_tools" and "redirects are not followed" in redirected["error"]
            slow = create("slow")
            assert slow["status"] == "completed"
            assert [i.get("output") for i in slow["output"] if i["type"] == "mcp_call"] == ["slow but sure"]
            deep = create("deep-call")
            assert deep["status"] == "completed" and deep["output"][-1]["type"] == "message"
            call = next(i for i in deep["output"] if i["type"] == "mcp_call")
            assert "nested too deeply" in json.dumps(call["error"])
            asked = create("deep-call", require_approval="always")
            request = next(i for i in asked["output"] if i["type"] == "mcp_approval_request")
            approval = {"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": True}
            tool = {"type": "mcp", "server_label": "s", "server_url": f"{base}/deep-call", "require_approval": "always"}
            body = {"model": MODEL, "input": [approval], "tools": [tool], "previous_response_id": asked["id"]}
            ran = httpx.post(f"{server.url}/responses", json=body, timeout=30)
            assert ran.status_code == 200 and ran.json()["status"] == "completed", ran.text
    finally:
        server.stop()


def test_one_tenant_cannot_take_every_pooled_connection(tmp_path: Path, bad_mcp: AppThread):
    """17 requests of 16 servers each that hold their listings (272 at once, past the pool's 256):
    the tenant waits for its own share, and another tenant's listing goes through at once."""
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-mallory mallory\nsk-alice alice\n")
    server = Server(tmp_path, *FAST, "--api-keys", str(keys), "--mcp-allow", "127.0.0.1", "--mcp-list-timeout-s", "2.5")
    base = f"http://127.0.0.1:{bad_mcp.port}"
    try:

        def create(key: str, tools: list[dict[str, Any]]) -> httpx.Response:
            body = {"model": MODEL, "input": "read notes/a.md", "tools": tools, "max_output_tokens": 16}
            return httpx.post(f"{server.url}/responses", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30)

        holding = [
            {"type": "mcp", "server_label": f"h{i}", "server_url": f"{base}/hold?{i}", "require_approval": "never"}
            for i in range(16)
        ]
        attack = [threading.Thread(target=create, args=("sk-mallory", holding)) for _ in range(17)]
        for thread in attack:
            thread.start()
        time.sleep(0.5)  # every holding listing has its connection now
        started = time.monotonic()
        quick = {"type": "mcp", "server_label": "q", "server_url": f"{base}/quick", "require_approval": "never"}
        answer = create("sk-alice", [quick])
        took = time.monotonic() - started
        assert answer.status_code == 200 and answer.json()["output"][0]["tools"], answer.text
        assert took < 1.2, f"another tenant's listing waited {took:.2f} s for a connection"  # 2 s before
        for thread in attack:
            thread.join(timeout=30)
    finally:
        server.stop()
