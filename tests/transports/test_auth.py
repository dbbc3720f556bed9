"""API keys and tenants: 401 before any work, tenants never see each other's responses, SIGHUP reloads."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import MODEL, Serve, Server

ALICE, BOB = "sk-alice-0123456789abcdef", "sk-bob-0123456789abcdef"


@pytest.fixture(scope="module")
def secured(serve: Serve, tmp_path_factory: pytest.TempPathFactory) -> tuple[Server, Path]:
    keys = tmp_path_factory.mktemp("auth") / "keys.txt"
    keys.write_text(f"# key tenant\n{ALICE} alice\n\n{BOB} bob\n")
    return serve("--api-keys", str(keys), "--store", "memory", "--log-level", "info"), keys


def client(server: Server, key: str) -> OpenAI:
    return OpenAI(base_url=server.url, api_key=key, max_retries=0)


def test_open_mode_says_so(server: Server):
    assert "auth OFF" in server.output()


def test_missing_and_wrong_keys_are_401_in_openai_shape(secured: tuple[Server, Path]):
    server, _ = secured
    r = httpx.post(f"{server.url}/responses", json={"model": MODEL, "input": "hi"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError) as info:
        client(server, "sk-wrong-key-000000000000").responses.create(model=MODEL, input="hi")
    assert info.value.code == "invalid_api_key" and "sk-wrong-key-000000000000" not in info.value.message
    assert client(server, ALICE).responses.create(model=MODEL, input="hi").status == "completed"
    assert httpx.get(server.url.removesuffix("/v1") + "/metrics").status_code == 200  # metrics stay public


def test_websocket_handshake_is_refused_before_the_upgrade(secured: tuple[Server, Path]):
    server, _ = secured
    url = server.url.replace("http", "ws", 1) + "/responses"
    with pytest.raises(InvalidStatus) as info:
        connect(url, additional_headers={"Authorization": "Bearer sk-nope-00000000000"})
    assert info.value.response.status_code == 401
    assert json.loads(info.value.response.body)["error"]["code"] == "invalid_api_key"
    with connect(url, additional_headers={"Authorization": f"Bearer {ALICE}"}) as ws:
        ws.send(json.dumps({"type": "response.create", "model": MODEL, "input": "hi", "store": False}))
        while json.loads(ws.recv(timeout=10))["type"] != "response.completed":
            pass


def test_tenants_never_see_each_other(secured: tuple[Server, Path]):
    server, _ = secured
    alice, bob = client(server, ALICE), client(server, BOB)
    mine = alice.responses.create(model=MODEL, input="secret plans")
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.input_items.list(mine.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.delete(mine.id)
    with pytest.raises(openai.BadRequestError) as info:
        bob.responses.create(model=MODEL, input="continue", previous_response_id=mine.id)
    assert info.value.code == "previous_response_not_found"
    with pytest.raises(openai.BadRequestError) as info:  # nor name one of its items
        bob.responses.create(model=MODEL, input=[{"type": "item_reference", "id": mine.output[0].id}])
    assert info.value.code == "item_not_found"
    with bob.responses.connect() as conn:
        conn.response.create(model=MODEL, input="continue", previous_response_id=mine.id, store=True)
        error = next(iter(conn))
        assert error.type == "error" and error.error.code == "previous_response_not_found"
    assert alice.responses.retrieve(mine.id).id == mine.id
    assert alice.responses.create(model=MODEL, input="go on", previous_response_id=mine.id).status == "completed"


def test_sighup_reloads_the_keys_and_keys_never_reach_the_log(secured: tuple[Server, Path]):
    server, keys = secured
    carol = "sk-carol-0123456789abcdef"
    with pytest.raises(openai.AuthenticationError):
        client(server, carol).responses.create(model=MODEL, input="hi")
    keys.write_text(keys.read_text() + f"{carol} carol\n")
    server.process.send_signal(signal.SIGHUP)
    for _ in range(100):
        try:
            assert client(server, carol).responses.create(model=MODEL, input="hi").status == "completed"
            break
        except openai.AuthenticationError:
            time.sleep(0.05)
    else:
        pytest.fail("the key was not reloaded")
    output = server.output()
    assert ALICE not in output and BOB not in output and carol not in output
