"""openai-node 7.57 (HTTP, SSE, ResponsesWS) and the Vercel AI SDK 7 (@ai-sdk/openai 4) against loopway."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.clients.conftest import run_node
from tests.conftest import MODEL, Serve, Server


@pytest.fixture(scope="module")
def server(serve: Serve) -> Server:
    return serve("--sim-decode-tps", "20000", "--store", "memory")


def test_openai_node_over_http_sse_and_its_websocket_client(server: Server, tmp_path: Path):
    seen = run_node("openai_node.mjs", server.url, MODEL, tmp=tmp_path)
    assert seen["http"]["status"] == "completed" and seen["http"]["text"]
    assert seen["sse"][0] == "response.created" and seen["sse"][-1] == "response.completed"
    assert seen["ws"]["call"] == ["read_file", {"path": "src/app.py"}]
    assert "hello from app.py" in seen["ws"]["answer"]  # the tool output reached the model


def test_the_ai_sdk_runs_tools_over_steps_and_a_second_turn_by_reference(server: Server, tmp_path: Path):
    seen = run_node("ai_sdk.mjs", server.url, MODEL, tmp=tmp_path)
    assert seen["generate"]["calls"] == ["src/app.py", "src/util.py"] and seen["generate"]["steps"] == 3
    assert "def util(): return 42" in seen["generate"]["text"]
    assert seen["stream"]["steps"] == 2 and "def util" in seen["stream"]["text"]
    assert seen["second_turn"]["text"]
    first = httpx.get(f"{server.url}/responses/{seen['second_turn']['first_id']}").json()
    context = httpx.get(
        f"{server.url}/responses/{seen['second_turn']['second_id']}/input_items", params={"order": "asc"}
    ).json()["data"]
    assert [item.get("role") for item in context] == ["user", "assistant", "user"]
    assert context[1]["id"] == first["output"][0]["id"]  # the earlier answer, sent as an item_reference
