"""``/dashboard``: who may look, what each viewer sees, the live feed, and the page in a real browser."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from loopway.client import AgentLoop, WebSocketTransport
from tests.browser import Browser
from tests.client.test_loop import TASK, file_tools
from tests.conftest import MODEL, Serve, Server

ALICE, BOB, ADMIN = "sk-alice-0123456789abcdef", "sk-bob-0123456789abcdef", "sk-admin-alice-0123456789"
STAGES = ["validate", "queue", "resolve", "render", "ttft", "decode", "persist"]


def root(server: Server) -> str:
    return server.url.removesuffix("/v1")


@pytest.fixture(scope="module")
def secured(serve: Serve, tmp_path_factory: pytest.TempPathFactory) -> Server:
    tmp = tmp_path_factory.mktemp("dashboard-keys")
    (tmp / "keys.txt").write_text(f"{ALICE} alice\n{BOB} bob\n")
    (tmp / "admin.txt").write_text(f"{ADMIN} alice\n")
    return serve("--api-keys", str(tmp / "keys.txt"), "--admin-keys", str(tmp / "admin.txt"), "--store", "memory")


# Who may look -----------------------------------------------------------------------------------


def test_open_mode_serves_loopback_clients(server: Server):
    page = httpx.get(root(server) + "/dashboard")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"] and "unsafe-inline" not in page.text
    assert httpx.get(root(server) + "/dashboard/app.js").status_code == 200
    assert httpx.get(root(server) + "/dashboard/snapshot").json()["viewer"] is None
    assert f"dashboard on http://127.0.0.1:{server.port}/dashboard (loopback clients only)" in server.output()


PROXIED = ["x-forwarded-for", "forwarded", "x-real-ip", "true-client-ip", "cf-connecting-ip", "via"]


@pytest.mark.parametrize("header", PROXIED)
def test_open_mode_refuses_what_came_through_a_proxy(server: Server, header: str):
    refused = httpx.get(root(server) + "/dashboard/snapshot", headers={header: "203.0.113.9"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "dashboard_loopback_only"


def test_with_api_keys_and_no_admin_keys_the_dashboard_is_off(tmp_path: Path):
    (tmp_path / "keys.txt").write_text(f"{ALICE} alice\n")
    server = Server(tmp_path, "--api-keys", str(tmp_path / "keys.txt"), "--store", "memory")
    try:
        for key in (None, ALICE):  # an API key is not an admin key
            headers = {"authorization": f"Bearer {key}"} if key else {}
            off = httpx.get(root(server) + "/dashboard", headers=headers)
            assert off.status_code == 404 and off.json()["error"]["code"] == "dashboard_disabled"
        assert "dashboard off (start with --admin-keys to open it)" in server.output()
    finally:
        server.stop()


def test_an_admin_key_is_needed_and_a_browser_is_asked_for_one(secured: Server):
    assert httpx.get(root(secured) + "/dashboards").status_code == 401  # only /dashboard skips the API key check
    missing = httpx.get(root(secured) + "/dashboard")
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Basic realm=")
    assert httpx.get(root(secured) + "/dashboard/feed", headers={"authorization": f"Bearer {ALICE}"}).status_code == 401
    for garbled in ("Basic !!not-base64!!", "Basic " + base64.b64encode(b"\xff\xfe").decode(), "Digest x"):
        refused = httpx.get(root(secured) + "/dashboard/snapshot", headers={"authorization": garbled})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_admin_key"
    basic = base64.b64encode(f"ops:{ADMIN}".encode()).decode()
    assert httpx.get(root(secured) + "/dashboard", headers={"authorization": f"Basic {basic}"}).status_code == 200
    bearer = httpx.get(root(secured) + "/dashboard/snapshot", headers={"authorization": f"Bearer {ADMIN}"})
    assert bearer.status_code == 200 and bearer.json()["viewer"] == "alice"
    assert "(admin keys from " in secured.output()


def test_a_viewer_sees_its_tenant_and_only_counts_of_the_others(secured: Server):
    alice = OpenAI(base_url=secured.url, api_key=ALICE, max_retries=0)
    bob = OpenAI(base_url=secured.url, api_key=BOB, max_retries=0)
    mine = alice.responses.create(model=MODEL, input="hi")
    with bob.responses.connect() as conn:
        conn.response.create(model=MODEL, input="a secret plan", store=False)
        theirs = next(e for e in conn if e.type == "response.completed").response
        text = httpx.get(root(secured) + "/dashboard/snapshot", headers={"authorization": f"Bearer {ADMIN}"}).text
    snap = json.loads(text)
    assert mine.id in text and theirs.id not in text and "a secret plan" not in text and "bob" not in text
    assert all(c["tenant"] == "alice" for c in snap["connections"]["shown"])
    assert snap["connections"]["other_tenants"] == {"tenants": 1, "connections": 1, "in_flight": 0, "turns": 1}
    assert {t["tenant"] for t in snap["turns"]} == {"alice"}


# What it shows ----------------------------------------------------------------------------------


def test_the_feed_streams_snapshots_of_connections_turns_and_totals(tmp_path: Path):
    server = Server(tmp_path, "--store", "memory", "--fault-metadata", "on", "--sim-decode-tps", "5000")
    client = OpenAI(base_url=server.url, api_key="sk-test", max_retries=0)
    try:
        with client.responses.connect() as conn:
            conn.response.create(model=MODEL, input="hi", store=False)
            done = next(e for e in conn if e.type == "response.completed").response
            with pytest.raises(Exception):
                client.responses.create(model=MODEL, input="x", metadata={"loopway_fault": "http-503"})
            snap = next(_feed(server))
        row = snap["connections"]["shown"][0]
        assert row["transport"] == "ws" and row["turns"] == 1 and row["cache_items"] == 1 and row["cache_tokens"] > 0
        turn = next(t for t in snap["turns"] if t["id"] == done.id)
        assert list(turn["stages"]) == STAGES and turn["engine_ms"] > 0 and turn["own_ms"] > 0
        assert turn["input_tokens"] == done.usage.input_tokens and turn["output_tokens"] == done.usage.output_tokens
        totals = snap["totals"]
        assert totals["turns"] >= 1 and totals["overhead_p50_ms"] is not None
        assert totals["faults"] == {"http-503": 1} and totals["errors"] == {"server_error": 1}
        assert snap["store"]["state"] == "ok" and snap["feed"]["dropped"] == 0
    finally:
        server.stop()


def _feed(server: Server) -> Iterator[dict[str, Any]]:
    with httpx.stream("GET", root(server) + "/dashboard/feed", timeout=30) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                yield json.loads(line[5:])


def test_shutdown_ends_an_open_feed(tmp_path: Path):
    """A dashboard left open must not hold a draining server up."""
    server = Server(tmp_path, "--store", "memory")
    frames = _feed(server)
    next(frames)
    started = time.monotonic()
    server.stop()  # SIGTERM; a feed that never ended would hold the drain until stop's kill at 10 s
    assert time.monotonic() - started < 5 and server.process.returncode == -signal.SIGTERM
    with pytest.raises(StopIteration):
        while True:
            next(frames)


# In a real browser ------------------------------------------------------------------------------


class AgentSession:
    """A short agent session on one WebSocket, kept open until ``close``: what the page should show."""

    def __init__(self, server: Server, api_key: str = "sk-test") -> None:
        self.finished = threading.Event()
        self._stop = threading.Event()
        self.result: Any = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(server, api_key),), daemon=True)
        self._thread.start()
        assert self.finished.wait(60), "the agent session did not finish"

    async def _run(self, server: Server, api_key: str) -> None:
        tools, _ = file_tools()
        transport = WebSocketTransport(server.url, api_key)
        try:
            self.result = await AgentLoop(transport, tools, model=MODEL).run(TASK)
            self.finished.set()
            while not self._stop.is_set():
                await asyncio.sleep(0.05)
        finally:
            await transport.aclose()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    page = Browser(tmp_path / "profile")
    yield page
    page.close()


def test_the_page_shows_the_connection_and_each_turns_waterfall(tmp_path: Path, browser: Browser):
    server = Server(tmp_path, "--store", "memory", "--sim-decode-tps", "400")
    session = AgentSession(server)
    try:
        browser.open(root(server) + "/dashboard")
        browser.wait_for("document.querySelector('#status').dataset.state === 'live'")
        browser.wait_for(f"document.querySelectorAll('.turn[data-id]').length >= {len(session.result.turns)}")
        row = browser.evaluate(
            "[...document.querySelectorAll('#connections tbody tr')].map(tr => [tr.dataset.transport,"
            " tr.children[7].textContent, tr.children[8].textContent])"
        )
        assert row == [["ws", str(len(session.result.turns)), "1"]]
        turns = browser.evaluate(
            "[...document.querySelectorAll('.turn[data-id]')].map(t => ({id: t.dataset.id, status: t.dataset.status,"
            " stages: [...t.querySelectorAll('.track:not(.own) .seg')].map(s => s.dataset.stage),"
            " own: [...t.querySelectorAll('.track.own .seg')].map(s => s.dataset.stage),"
            " cached: Number(t.querySelector('.tokens').dataset.cached)}))"
        )
        ids = [trace.response_id for trace in session.result.turns]
        assert sorted(t["id"] for t in turns) == sorted(ids)
        for turn in turns:
            assert turn["status"] == "completed"
            assert [s for s in STAGES if s in turn["stages"]] == turn["stages"]  # laid out in order
            assert {"validate", "render", "ttft", "decode"} <= set(turn["stages"])
            assert {"validate", "render"} <= set(turn["own"]) <= {"validate", "resolve", "render", "persist"}
        assert any(t["cached"] > 0 for t in turns)  # later turns reuse the connection's prefix
        assert browser.evaluate("document.querySelector('[data-total=store]').textContent") == "ok"
        shot = Path(os.environ.get("LOOPWAY_DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
        browser.screenshot(shot)
        assert shot.stat().st_size > 10_000
    finally:
        session.close()
        server.stop()


def test_the_page_with_an_admin_key_never_shows_another_tenants_turns(secured: Server, browser: Browser):
    bob = OpenAI(base_url=secured.url, api_key=BOB, max_retries=0)
    theirs = bob.responses.create(model=MODEL, input="bob's private work")
    session = AgentSession(secured, ALICE)
    try:
        browser.headers({"Authorization": f"Bearer {ADMIN}"})
        browser.open(root(secured) + "/dashboard")
        browser.wait_for("document.querySelectorAll('.turn[data-id]').length >= 4")
        text = browser.evaluate("document.body.innerText")
        assert theirs.id[:18] not in text and "bob" not in text
        assert "Other tenants (1)" in text and "tenant alice" in text
    finally:
        session.close()
