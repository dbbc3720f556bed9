"""A web page the operator visits must not drive an open server: origins, content types, hosts."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL, Serve, Server
from tests.hostile.conftest import FAST, RawSocket, assert_openai_error

BODY = json.dumps({"model": MODEL, "input": "hi", "store": False})


@pytest.fixture(scope="module")
def open_server(serve: Serve) -> Server:
    return serve(*FAST)


def test_a_cross_origin_websocket_handshake_is_refused(open_server: Server):
    ws = RawSocket(open_server, {"Origin": "https://evil.example"})
    assert ws.status == 403
    assert_openai_error(json.loads(ws.buffer or ws.sock.recv(4096)), "origin_not_allowed")
    ws.close()


def test_the_servers_own_origin_and_clients_without_one_are_served(open_server: Server):
    for headers in ({}, {"Origin": f"http://127.0.0.1:{open_server.port}"}):
        ws = RawSocket(open_server, headers)
        assert ws.status == 101
        ws.send_text(json.dumps({"type": "response.create", "model": MODEL, "input": "hi", "store": False}))
        assert ws.events()[-1]["type"] == "response.completed"
        ws.close()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None])
def test_bodies_a_browser_sends_without_asking_are_refused(open_server: Server, content_type: str | None):
    headers = {"content-type": content_type} if content_type else {}
    answer = httpx.post(f"{open_server.url}/responses", content=BODY, headers=headers)
    assert answer.status_code == 415
    assert_openai_error(answer.json(), "unsupported_content_type")


def test_a_cross_origin_post_is_refused_even_as_json(open_server: Server):
    answer = httpx.post(
        f"{open_server.url}/responses",
        content=BODY,
        headers={"content-type": "application/json", "origin": "https://evil.example"},
    )
    assert answer.status_code == 403
    assert_openai_error(answer.json(), "origin_not_allowed")


def test_a_foreign_host_header_is_refused(open_server: Server):
    """DNS rebinding: evil.example resolves to 127.0.0.1, and the browser says Host: evil.example."""
    answer = httpx.post(
        f"{open_server.url}/responses", content=BODY, headers={"content-type": "application/json", "host": "evil.example"}
    )
    assert answer.status_code == 400
    assert_openai_error(answer.json(), "invalid_host")
    assert httpx.get(f"http://127.0.0.1:{open_server.port}/health", headers={"host": "evil.example"}).status_code == 400
    for host in ("localhost", f"localhost:{open_server.port}", f"127.0.0.1:{open_server.port}"):
        assert httpx.get(f"{open_server.url}/models", headers={"host": host}).status_code == 200


def test_each_check_has_a_flag_to_widen_it(tmp_path: Path):
    server = Server(
        tmp_path,
        *FAST,
        "--allowed-hosts",
        "evil.example",
        "--allowed-origins",
        "https://app.example",
        "--require-json",
        "off",
    )
    try:
        plain = httpx.post(
            f"{server.url}/responses",
            content=BODY,
            headers={"content-type": "text/plain", "host": "evil.example", "origin": "https://app.example"},
        )
        assert plain.status_code == 200, plain.text
        ws = RawSocket(server, {"Origin": "https://app.example"})
        assert ws.status == 101
        ws.close()
    finally:
        server.stop()


def test_bound_beyond_loopback_any_host_is_served(tmp_path: Path):
    server = Server(tmp_path, *FAST, "--host", "0.0.0.0")
    try:
        assert httpx.get(f"{server.url}/models", headers={"host": "api.example.com"}).status_code == 200
    finally:
        server.stop()
