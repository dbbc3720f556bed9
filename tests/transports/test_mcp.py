"""Remote MCP tools run by the server, through the openai SDK over HTTP, SSE and WebSocket, against
the official ``mcp`` package's server (``tests/mcp/notes_server.py``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from loopway.bench.server import free_port
from tests.conftest import MODEL, Serve, Server, metric_samples
from tests.mcp.notes import NotesServer
from tests.openapi import validate, validate_event

TERMINAL = ("response.completed", "response.incomplete", "response.failed")
TRANSPORTS = ("http", "sse", "ws")


@pytest.fixture(scope="module")
def notes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotesServer]:
    server = NotesServer(tmp_path_factory.mktemp("notes"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(serve: Serve) -> Server:
    """Loopback MCP servers allowed (the tests' own), calls cut at 1.5 s."""
    return serve("--store", "memory", "--mcp-allow", "127.0.0.1", "--mcp-call-timeout-s", "1.5")


@pytest.fixture(scope="module")
def client(server: Server) -> OpenAI:
    return OpenAI(base_url=server.url, api_key="unused", max_retries=0)


def notes_tool(notes: NotesServer, **extra: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "notes", "server_url": notes.url, "require_approval": "never", **extra}


def drive(client: OpenAI, transport: str, **body: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One response over one transport: its final object and (streamed) every event, each validated."""
    if transport == "http":
        response = client.responses.create(model=MODEL, **body).to_dict()
        validate("Response", response)
        return response, []
    events: list[dict[str, Any]] = []
    if transport == "sse":
        for event in client.responses.create(model=MODEL, stream=True, **body):
            events.append(event.to_dict())
    else:
        with client.responses.connect() as conn:
            conn.response.create(model=MODEL, **body)
            for event in conn:
                events.append(event.to_dict())
                if event.type in (*TERMINAL, "error"):
                    break
    for event in events:
        validate_event(event, websocket=transport == "ws")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] in TERMINAL, events[-1]
    return events[-1]["response"], events


def kinds(response: dict[str, Any]) -> list[str]:
    return [item["type"] for item in response["output"]]


def item_events(events: list[dict[str, Any]], item_id: str) -> list[str]:
    return [e["type"] for e in events if e.get("item_id") == item_id or (e.get("item") or {}).get("id") == item_id]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_one_response_lists_calls_twice_and_answers(client: OpenAI, notes: NotesServer, transport: str):
    """Two tool rounds and the answer in one response: no client round trip in between."""
    response, events = drive(client, transport, input="read notes/a.md and then notes/b.md", tools=[notes_tool(notes)])
    assert response["status"] == "completed"
    assert kinds(response) == ["mcp_list_tools", "mcp_call", "mcp_call", "message"]
    listing, first, second, answer = response["output"]
    assert [t["name"] for t in listing["tools"]] == ["read_note", "write_note", "count_calls"]
    assert listing["tools"][0]["annotations"] == {"readOnlyHint": True} and listing.get("error") is None
    assert [json.loads(c["arguments"]) for c in (first, second)] == [{"path": "notes/a.md"}, {"path": "notes/b.md"}]
    assert first["output"] == "the note at notes/a.md says: remember the milk"
    assert first["status"] == second["status"] == "completed" and first["error"] is None
    assert "notes.read_note" in answer["content"][0]["text"]  # the model saw both results
    assert response["usage"]["input_tokens"] > 0 and response["usage"]["output_tokens"] > 0
    if events:
        assert item_events(events, listing["id"]) == [
            "response.output_item.added",
            "response.mcp_list_tools.in_progress",
            "response.mcp_list_tools.completed",
            "response.output_item.done",
        ]
        calls = [t for t in item_events(events, first["id"]) if t != "response.mcp_call_arguments.delta"]
        assert calls == [
            "response.output_item.added",
            "response.mcp_call.in_progress",
            "response.mcp_call_arguments.done",
            "response.mcp_call.completed",
            "response.output_item.done",
        ]
        deltas = [
            e["delta"] for e in events if e["type"] == "response.mcp_call_arguments.delta" and e["item_id"] == first["id"]
        ]
        assert "".join(deltas) == first["arguments"]


def test_a_listing_in_the_context_is_reused_and_a_socket_keeps_one_session(client: OpenAI, notes: NotesServer):
    before = notes.headers_seen().count("\n")
    with client.responses.connect() as conn:
        previous = None
        outputs = []
        for path in ("notes/1.md", "notes/2.md", "notes/3.md"):
            conn.response.create(
                model=MODEL, input=f"read {path}", tools=[notes_tool(notes)], previous_response_id=previous, store=False
            )
            for event in conn:
                if event.type in TERMINAL:
                    break
            previous = event.response.id
            outputs.append([item.type for item in event.response.output])
    assert outputs == [["mcp_list_tools", "mcp_call", "message"], ["mcp_call", "message"], ["mcp_call", "message"]]
    seen = [json.loads(line) for line in notes.headers_seen().splitlines()[before:]]
    # POSTs only: an earlier test's session may still be closing (its DELETE) as this one starts
    sessions = {h["mcp-session-id"] for h in seen if "mcp-session-id" in h and h[":method"] == "POST"}
    assert len(sessions) == 1  # initialized once, for the connection's life
    # over HTTP, a continuation reuses the listing too (a new session each turn)
    first = client.responses.create(model=MODEL, input="read notes/4.md", tools=[notes_tool(notes)])
    second = client.responses.create(
        model=MODEL, input="read notes/5.md", tools=[notes_tool(notes)], previous_response_id=first.id
    )
    assert [i.type for i in second.output] == ["mcp_call", "message"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_approval_ends_the_response_and_the_next_turn_runs_the_call(client: OpenAI, notes: NotesServer, transport: str):
    tool = notes_tool(notes, require_approval={"never": {"read_only": True}})  # writing needs approval
    asked, _ = drive(client, transport, input="write notes/todo.md", tools=[tool])
    assert kinds(asked) == ["mcp_list_tools", "mcp_approval_request"] and asked["status"] == "completed"
    request = asked["output"][1]
    assert request["name"] == "write_note" and json.loads(request["arguments"])["path"] == "notes/todo.md"
    approval = {"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": True}
    ran, events = drive(client, transport, input=[approval], tools=[tool], previous_response_id=asked["id"])
    assert kinds(ran) == ["mcp_call", "message"]
    call = ran["output"][0]
    assert call["approval_request_id"] == request["id"] and call["output"].startswith("wrote ")
    assert (call["name"], call["arguments"]) == (request["name"], request["arguments"])
    if events:
        assert "response.mcp_call.completed" in item_events(events, call["id"])
    listed = client.get(f"/responses/{ran['id']}/input_items", cast_to=httpx.Response).json()
    assert [i["type"] for i in listed["data"]][:2] == ["mcp_approval_response", "mcp_approval_request"]  # newest first
    # The schema's MCPApprovalResponseResource requires a "request_id" it never defines (the field is
    # approval_request_id, as every SDK has it): validate the rest of the list as it stands.
    fixed = [{**i, "request_id": i["approval_request_id"]} if "approval_request_id" in i else i for i in listed["data"]]
    validate("ResponseItemList", {**listed, "data": fixed})


def test_a_denied_call_does_not_run(client: OpenAI, notes: NotesServer):
    tool = notes_tool(notes, require_approval="always")
    asked = client.responses.create(model=MODEL, input="read notes/secret.md", tools=[tool])
    request = asked.output[-1]
    assert request.type == "mcp_approval_request"
    denial = {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": False, "reason": "no"}
    denied = client.responses.create(model=MODEL, input=[denial], tools=[tool], previous_response_id=asked.id)
    assert [i.type for i in denied.output] == ["message"]
    assert "read notes/secret.md" not in notes_calls(client, notes)


def notes_calls(client: OpenAI, notes: NotesServer) -> str:
    """What the notes server ran, asked through loopway (its count_calls tool)."""
    response = client.responses.create(model=MODEL, input="count calls", tools=[notes_tool(notes)])
    return next(i.output for i in response.output if i.type == "mcp_call")


def test_an_unknown_approval_request_is_a_400(client: OpenAI, notes: NotesServer):
    first = client.responses.create(model=MODEL, input="hello", tools=[notes_tool(notes)])
    approval = {"type": "mcp_approval_response", "approval_request_id": "mcpr_nope", "approve": True}
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input=[approval], tools=[notes_tool(notes)], previous_response_id=first.id)
    validate("ErrorResponse", info.value.body and {"error": info.value.body})
    assert info.value.body["param"] == "input[0].approval_request_id"


@pytest.mark.parametrize("transport", ("http", "ws"))
def test_a_server_that_dies_mid_call_is_a_call_error_the_model_sees(client: OpenAI, tmp_path: Path, transport: str):
    dying = NotesServer(tmp_path)
    try:
        response, _ = drive(client, transport, input="read crash/now.md", tools=[notes_tool(dying)])
    finally:
        dying.stop()
    assert response["status"] == "completed" and kinds(response) == ["mcp_list_tools", "mcp_call", "message"]
    call = response["output"][1]
    assert call["status"] == "failed" and call["output"] is None
    assert call["error"]["type"] == "http_error" and "Could not reach the MCP server" in call["error"]["message"]
    assert "http_error" in response["output"][2]["content"][0]["text"]  # the model read the error


@pytest.mark.parametrize("transport", ("sse", "ws"))
def test_a_slow_call_times_out(client: OpenAI, notes: NotesServer, transport: str):
    started = time.monotonic()
    response, events = drive(client, transport, input="read slow/x.md", tools=[notes_tool(notes)])
    assert time.monotonic() - started < 10
    call = response["output"][1]
    assert call["status"] == "failed"
    assert call["error"] == {
        "type": "mcp_protocol_error",
        "code": -32001,
        "message": "The MCP server did not answer within 1.5 s.",
    }
    assert "response.mcp_call.failed" in item_events(events, call["id"])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_listing_that_fails_goes_on_without_the_tools(client: OpenAI, transport: str):
    nobody = f"http://127.0.0.1:{free_port()}/mcp"
    tool = {"type": "mcp", "server_label": "gone", "server_url": nobody, "require_approval": "never"}
    response, events = drive(client, transport, input="read notes/a.md", tools=[tool])
    assert response["status"] == "completed" and kinds(response) == ["mcp_list_tools", "message"]
    listing = response["output"][0]
    assert listing["tools"] == [] and "Error retrieving tool list from MCP server 'gone'" in listing["error"]
    if events:
        assert "response.mcp_list_tools.failed" in item_events(events, listing["id"])


@pytest.mark.parametrize("url", ["https://example.com/mcp", "http://10.9.9.9/mcp", "http://localhost:1/mcp"])
def test_a_server_url_not_allowed_is_a_400(client: OpenAI, url: str):
    tool = {"type": "mcp", "server_label": "x", "server_url": url}
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="hi", tools=[{"type": "function", "name": "f"}, tool])
    assert info.value.body["code"] == "mcp_server_not_allowed" and info.value.body["param"] == "tools[1].server_url"
    validate("ErrorResponse", {"error": info.value.body})
    with client.responses.connect() as conn:  # on a socket: an error event, and the socket stays open
        conn.response.create(model=MODEL, input="hi", tools=[tool])
        event = next(iter(conn))
        assert event.type == "error" and event.error.code == "mcp_server_not_allowed"
        conn.response.create(model=MODEL, input="hi")
        assert any(e.type == "response.completed" for e in _until_terminal(conn))


def _until_terminal(conn: Any) -> Iterator[Any]:
    for event in conn:
        yield event
        if event.type in TERMINAL:
            return


def test_no_mcp_server_is_allowed_by_default(tmp_path: Path, notes: NotesServer):
    plain = Server(tmp_path, "--store", "memory")
    try:
        body = {"model": MODEL, "input": "hi", "tools": [notes_tool(notes)]}
        answer = httpx.post(f"{plain.url}/responses", json=body, timeout=10)
        announced = plain.output()
    finally:
        plain.stop()
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "mcp_server_not_allowed"
    assert "no MCP servers are allowed" in answer.json()["error"]["message"]
    assert "MCP tools off: no --mcp-allow" in announced


def test_start_up_says_which_mcp_servers_may_be_called(server: Server):
    assert "loopway: MCP tools: this server may call MCP servers at 127.0.0.1" in server.output()


def test_headers_and_authorization_are_sent_but_never_echoed_stored_or_logged(tmp_path: Path):
    guarded = NotesServer(tmp_path, token="auth-secret-456")
    loud = Server(tmp_path, "--mcp-allow", "127.0.0.1", "--log-level", "debug")
    try:
        client = OpenAI(base_url=loud.url, api_key="unused", max_retries=0)
        tool = notes_tool(guarded, headers={"X-Api-Key": "hdr-secret-123"}, authorization="auth-secret-456")
        response = client.responses.create(model=MODEL, input="read notes/a.md", tools=[tool])
        assert [i.type for i in response.output] == ["mcp_list_tools", "mcp_call", "message"]
        streamed = list(client.responses.create(model=MODEL, input="read notes/b.md", tools=[tool], stream=True))
        stored = httpx.get(f"{loud.url}/responses/{response.id}", timeout=10).text
        items = httpx.get(f"{loud.url}/responses/{response.id}/input_items", timeout=10).text
        log = loud.output()
    finally:
        loud.stop()
        guarded.stop()
    echoed = response.to_dict()["tools"][0]
    assert echoed["headers"] is None and "authorization" not in echoed
    assert "hdr-secret-123" in guarded.headers_seen()  # it reached the MCP server
    for text in (response.to_json(), stored, items, log, *(e.to_json() for e in streamed)):
        assert "hdr-secret-123" not in text and "auth-secret-456" not in text
    assert "notes" in log or "POST /v1/responses" in log  # the debug log did run


def test_max_tool_calls_stops_the_calls_and_the_model_answers(client: OpenAI, notes: NotesServer):
    response = client.responses.create(
        model=MODEL, input="read notes/a.md and then notes/b.md", tools=[notes_tool(notes)], max_tool_calls=1
    )
    assert [i.type for i in response.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert response.max_tool_calls == 1


def test_a_client_resending_its_history_does_not_run_an_approved_call_twice(client: OpenAI, notes: NotesServer):
    """Stateless (store=false, no previous_response_id): the history carries the approval and the
    call that answered it; the call does not run again."""
    tool = notes_tool(notes, require_approval="always")
    history: list[Any] = [{"role": "user", "content": "read notes/once.md"}]
    asked = client.responses.create(model=MODEL, input=history, tools=[tool], store=False)
    history += [i.to_dict() for i in asked.output]
    history.append({"type": "mcp_approval_response", "approval_request_id": asked.output[-1].id, "approve": True})
    ran = client.responses.create(model=MODEL, input=history, tools=[tool], store=False)
    assert [i.type for i in ran.output] == ["mcp_call", "message"]
    history += [i.to_dict() for i in ran.output]
    history.append({"role": "user", "content": "thanks"})
    again = client.responses.create(model=MODEL, input=history, tools=[tool], store=False)
    assert [i.type for i in again.output] == ["message"]
    assert notes_calls(client, notes).count("read notes/once.md") == 1


def test_a_conversation_keeps_its_tool_listing(client: OpenAI, notes: NotesServer):
    conversation = client.conversations.create()
    first = client.responses.create(
        model=MODEL, input="read notes/c1.md", tools=[notes_tool(notes)], conversation=conversation.id
    )
    second = client.responses.create(
        model=MODEL, input="read notes/c2.md", tools=[notes_tool(notes)], conversation=conversation.id
    )
    assert [i.type for i in first.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert [i.type for i in second.output] == ["mcp_call", "message"]
    stored = [i.type for i in client.conversations.items.list(conversation.id, order="asc")]
    assert stored == ["message", "mcp_list_tools", "mcp_call", "message", "message", "mcp_call", "message"]
    careful = notes_tool(notes, require_approval="always")  # an approval across turns of a conversation
    asked = client.responses.create(model=MODEL, input="read notes/c3.md", tools=[careful], conversation=conversation.id)
    approval = {"type": "mcp_approval_response", "approval_request_id": asked.output[-1].id, "approve": True}
    ran = client.responses.create(model=MODEL, input=[approval], tools=[careful], conversation=conversation.id)
    assert [i.type for i in ran.output] == ["mcp_call", "message"] and ran.output[0].output.endswith("remember the milk")


def test_large_answers_reach_the_model_and_oversized_ones_are_dropped(client: OpenAI, notes: NotesServer):
    """200 kB is tokenized in a worker thread and read by the model; 2 MB is past the 1 MiB cap."""
    large = client.responses.create(model=MODEL, input="read big/200000.md", tools=[notes_tool(notes)])
    call = large.output[1]
    assert call.type == "mcp_call" and len(call.output) == 200_000
    assert "200000 characters" in large.output[2].content[0].text
    oversized = client.responses.create(model=MODEL, input="read big/2000000.md", tools=[notes_tool(notes)])
    error = oversized.output[1].to_dict()["error"]
    assert error["type"] == "mcp_protocol_error" and f"exceeded {1 << 20} bytes" in error["message"]


def test_a_background_response_runs_its_mcp_calls(client: OpenAI, notes: NotesServer):
    started = client.responses.create(model=MODEL, input="read notes/bg.md", tools=[notes_tool(notes)], background=True)
    deadline = time.monotonic() + 20
    response = client.responses.retrieve(started.id)
    while response.status in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.1)
        response = client.responses.retrieve(started.id)
    assert response.status == "completed" and [i.type for i in response.output] == ["mcp_list_tools", "mcp_call", "message"]


def test_answers_that_outgrow_the_context_window_fail_the_response_cleanly(tmp_path: Path, notes: NotesServer):
    """The window is checked again before every round: past it, with truncation disabled, the
    response fails (a streamed response.failed), never a broken stream or a 500."""
    small = Server(tmp_path, "--store", "memory", "--mcp-allow", "127.0.0.1", "--sim-context-window", "3000")
    try:
        client = OpenAI(base_url=small.url, api_key="unused", max_retries=0)
        response, events = drive(client, "sse", input="read big/100000.md", tools=[notes_tool(notes)])
    finally:
        small.stop()
    assert response["status"] == "failed" and "context window" in response["error"]["message"]
    assert kinds(response)[:2] == ["mcp_list_tools", "mcp_call"] and events[-1]["type"] == "response.failed"


def test_metrics_count_calls_and_listings_by_outcome(server: Server, client: OpenAI, notes: NotesServer):
    before = metric_samples(server)
    client.responses.create(model=MODEL, input="read notes/m.md and then fail/m.md", tools=[notes_tool(notes)])
    after = metric_samples(server)

    def grew(name: str, outcome: str) -> float:
        key = (name, (("outcome", outcome),))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("loopway_mcp_calls_total", "completed") == 1
    assert grew("loopway_mcp_calls_total", "mcp_tool_execution_error") == 1
    assert grew("loopway_mcp_listings_total", "completed") == 1
    assert after[("loopway_mcp_call_seconds_count", ())] - before.get(("loopway_mcp_call_seconds_count", ()), 0) == 2
    assert str(notes.port) not in httpx.get(f"{server.url.removesuffix('/v1')}/metrics").text  # no URL in a label


def test_the_sdk_types_every_mcp_event_and_item(client: OpenAI, notes: NotesServer):
    """openai-python parses each event and item into its own MCP class (none falls back to a generic)."""
    seen = {
        e.type: type(e).__name__
        for e in client.responses.create(
            model=MODEL, input="read notes/a.md and then fail/b.md", tools=[notes_tool(notes)], stream=True
        )
    }
    mcp = {kind: name for kind, name in seen.items() if "mcp" in kind}
    assert mcp == {
        "response.mcp_list_tools.in_progress": "ResponseMcpListToolsInProgressEvent",
        "response.mcp_list_tools.completed": "ResponseMcpListToolsCompletedEvent",
        "response.mcp_call.in_progress": "ResponseMcpCallInProgressEvent",
        "response.mcp_call_arguments.delta": "ResponseMcpCallArgumentsDeltaEvent",
        "response.mcp_call_arguments.done": "ResponseMcpCallArgumentsDoneEvent",
        "response.mcp_call.completed": "ResponseMcpCallCompletedEvent",
        "response.mcp_call.failed": "ResponseMcpCallFailedEvent",
    }
    response = client.responses.create(model=MODEL, input="read notes/a.md", tools=[notes_tool(notes)])
    assert [type(i).__name__ for i in response.output] == ["McpListTools", "McpCall", "ResponseOutputMessage"]


def test_steering_a_response_that_asks_for_approval_waits_for_the_approval(tmp_path: Path, notes: NotesServer):
    """The approval is client-owned input: steering pends with an mcp_approval_response stub, and the
    client's approval runs the call before the steering input is read."""
    # 20 tokens/s: the approval's arguments stream for about 400 ms, while the steer arrives
    slow = Server(tmp_path, "--store", "memory", "--mcp-allow", "127.0.0.1", "--sim-decode-tps", "20")
    try:
        client = OpenAI(base_url=slow.url, api_key="unused", max_retries=0)
        tool = notes_tool(notes, require_approval="always")
        with client.responses.connect() as conn:
            conn.response.create(model=MODEL, input="read notes/steer.md", tools=[tool], store=False)
            seen = []
            for event in conn:
                seen.append(event.to_dict())
                if event.type == "response.output_item.added" and event.item.type == "mcp_approval_request":
                    conn.response.steer(previous_response_id=seen[0]["response"]["id"], input="then read notes/two.md")
                if event.type in ("response.steer.pending", "response.steer.failed"):
                    break
            pending = seen[-1]
            assert pending["type"] == "response.steer.pending", pending
            asked = next(e for e in seen if e["type"] == "response.completed")["response"]
            request = asked["output"][-1]
            assert pending["required_input"] == [{"type": "mcp_approval_response", "approval_request_id": request["id"]}]
            approval = {"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": True}
            conn.response.create(model=MODEL, input=[approval], tools=[tool], store=False, previous_response_id=asked["id"])
            final = next(e for e in conn if e.type in TERMINAL)
    finally:
        slow.stop()
    assert [i.type for i in final.response.output][0] == "mcp_call"
    assert final.response.output[0].arguments == request["arguments"]


# Replays ------------------------------------------------------------------------------------------

EVERY_KIND = [
    ("read notes/a.md and then write notes/todo.md", False),  # compaction, listing, reasoning, approval request
    ("read notes/a.md then run the tests", True),  # ... an MCP call, reasoning, a function call
    ("read notes/a.md", False),  # ... an MCP call, reasoning, the answer
]
RUN_TESTS = {"type": "function", "name": "run_tests", "parameters": {"type": "object", "properties": {}}}


def merged(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events with each run of deltas of one part merged into one (a replay sends a part whole),
    numbered again; the rest as sent."""
    out: list[dict[str, Any]] = []
    for event in events:
        event = {k: v for k, v in event.items() if k != "sequence_number"}
        last = out[-1] if out else None
        if event["type"].endswith(".delta") and last is not None and _same_part(last, event):
            last["delta"] += event["delta"]
            continue
        out.append(event)
    return [{**e, "sequence_number": n} for n, e in enumerate(out)]


def _same_part(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("type", "item_id", "output_index", "content_index", "summary_index")
    return all(a.get(k) == b.get(k) for k in keys)


def _lifecycle(event: dict[str, Any]) -> dict[str, Any]:
    """A response.* event's snapshot differs in what only the live one knew when it was sent
    (usage so far, timestamps); its kind, response id, status and output must not."""
    response = event["response"]
    return {"type": event["type"], "id": response["id"], "status": response["status"], "output": response["output"]}


@pytest.mark.parametrize("background", [True, False], ids=["background", "stored"])
def test_a_replay_is_the_live_stream_field_by_field(client: OpenAI, notes: NotesServer, background: bool):
    """Every item kind (message, reasoning, function call, MCP listing, call and approval request,
    compaction) streamed live, then by ``GET /v1/responses/{id}?stream=true``: a background
    response replays the events it kept, a stored one is rebuilt through the assembler."""
    tool = notes_tool(notes, require_approval={"never": {"read_only": True}})
    seen: set[str] = set()
    for text, with_function in EVERY_KIND:
        body: dict[str, Any] = {
            "input": [{"type": "message", "role": "user", "content": text}, {"type": "compaction_trigger"}],
            "tools": [tool, RUN_TESTS] if with_function else [tool],
            "reasoning": {"effort": "low", "summary": "auto"},
            "store": True,
            "background": background,
        }
        live = [e.to_dict() for e in client.responses.create(model=MODEL, stream=True, **body)]
        final = live[-1]["response"]
        while background and final["status"] in ("queued", "in_progress"):
            time.sleep(0.05)
            final = client.responses.retrieve(final["id"]).to_dict()
        replay = [e.to_dict() for e in client.responses.retrieve(final["id"], stream=True)]
        for event in replay:
            validate_event(event)
        live_items, replay_items = merged(live), merged(replay)
        assert [e["type"] for e in replay_items] == [e["type"] for e in live_items]
        for got, want in zip(replay_items, live_items, strict=True):
            if got["type"].startswith("response.") and "response" in got:
                assert _lifecycle(got) == _lifecycle(want)
            else:
                assert got == want
        seen |= set(kinds(final))
    assert seen >= {"message", "reasoning", "function_call", "mcp_list_tools", "mcp_call", "mcp_approval_request"}
    assert "compaction" in seen
