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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loopway.bench.mcp_rollout import AppThread
from tests.conftest import MODEL, Server, free_port
from tests.hostile.conftest import FAST, Watch


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
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            break
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
    assert "not JSON" in failures["deep"] or "exceeded" in failures["deep"]
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
