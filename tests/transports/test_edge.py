"""The edge middleware in process: each refusal in its order, OpenAI-shaped, and the tenant left for the routes."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from loopway.core.ops.auth import KeyRing
from loopway.core.ops.limits import RateLimiter
from loopway.protocol.errors import ApiError
from loopway.transports.edge import EdgeMiddleware, EdgePolicy
from loopway.transports.guard import OVERFLOW


async def echo_tenant(scope: Scope, receive: Receive, send: Send) -> None:
    body = scope.get("state", {}).get("tenant", "-").encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8080")


@pytest.fixture
def keys(tmp_path: Path) -> KeyRing:
    path = tmp_path / "keys"
    path.write_text("sk-acme acme\n")
    return KeyRing(str(path))


def edge(keys: KeyRing, refused: list[ApiError], **policy) -> EdgeMiddleware:
    rules = EdgePolicy.of("127.0.0.1", policy.get("hosts", []), policy.get("origins", []), require_json=True)
    return EdgeMiddleware(echo_tenant, keys, rules, RateLimiter(policy.get("rpm", 0)), observe=refused.append)


async def test_each_check_refuses_in_its_order_and_is_observed(keys: KeyRing):
    refused: list[ApiError] = []
    async with client(edge(keys, refused, origins=["https://app.example"])) as http:
        auth = {"authorization": "Bearer sk-acme"}
        cases = [
            ({"host": "evil.example"}, 400, "invalid_host"),
            ({"origin": "https://evil.example"}, 403, "origin_not_allowed"),
            ({"content-type": "text/plain"}, 415, "unsupported_content_type"),
            ({}, 401, "missing_api_key"),
            ({"authorization": "Bearer sk-nope"}, 401, "invalid_api_key"),
        ]
        for headers, status, code in cases:
            answer = await http.post("/v1/responses", content=b"{}", headers={"content-type": "application/json", **headers})
            assert (answer.status_code, answer.json()["error"]["code"]) == (status, code)
        allowed = {"origin": "https://app.example", "content-type": "application/json", **auth}
        answer = await http.post("/v1/responses", content=b"{}", headers=allowed)
        assert (answer.status_code, answer.text) == (200, "acme")
    assert [e.code for e in refused] == [code for _, _, code in cases]


async def test_public_paths_need_no_key_and_the_rate_limit_counts_http(keys: KeyRing):
    refused: list[ApiError] = []
    async with client(edge(keys, refused, rpm=1)) as http:
        assert (await http.get("/health")).status_code == 200
        auth = {"authorization": "Bearer sk-acme"}
        assert (await http.get("/v1/models", headers=auth)).status_code == 200
        limited = await http.get("/v1/models", headers=auth)
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(limited.headers["retry-after"]) >= 1


async def test_a_connection_over_the_cap_is_busy_but_health_still_answers(keys: KeyRing):
    refused: list[ApiError] = []
    app = edge(keys, refused)

    async def overflowing(scope: Scope, receive: Receive, send: Send) -> None:
        await app({**scope, OVERFLOW: True}, receive, send)

    async with client(overflowing) as http:
        busy = await http.get("/v1/models", headers={"authorization": "Bearer sk-acme"})
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "server_busy"
        assert busy.headers["connection"] == "close" and busy.headers["retry-after"] == "1"
        assert (await http.get("/health")).status_code == 200
