"""The HTTP API at the wire: a real ``loopway serve`` process driven by the official SDK."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import MODEL, READ_FILE, Server, metric_samples, metric_series, sse_events
from tests.openapi import validate, validate_event


def raw(server: Server, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, server.url + path, timeout=30, **kw)


def assert_error(response: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    validate("ErrorResponse", body)
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


def test_create_returns_a_valid_completed_response(client: OpenAI, server: Server):
    response = client.responses.create(model=MODEL, input="Say hello", metadata={"k": "v"}, temperature=0.5)
    assert response.status == "completed" and response.output_text
    assert response.metadata == {"k": "v"} and response.temperature == 0.5
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    validate("Response", raw(server, "GET", f"/responses/{response.id}").json())


def test_streaming_text_event_order_and_sequence_numbers(server: Server):
    body = {"model": MODEL, "input": "Tell me something", "stream": True}
    r = raw(server, "POST", "/responses", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    types = [e["type"] for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == events[-4]["text"]
    for event in events:
        validate_event(event)


def test_streaming_function_call_with_the_sdk(client: OpenAI):
    with client.responses.stream(model=MODEL, input="Please read src/app.py", tools=[READ_FILE]) as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in types and "response.content_part.added" not in types
    (call,) = final.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"path": "src/app.py"}
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")


def test_non_streaming_answer_equals_the_streamed_final_response(server: Server):
    body = {"model": MODEL, "input": "Please read src/app.py", "tools": [READ_FILE]}
    plain = raw(server, "POST", "/responses", json=body).json()
    streamed = sse_events(raw(server, "POST", "/responses", json={**body, "stream": True}).text)[-1]["response"]
    for key in ("id", "created_at", "completed_at"):
        plain.pop(key), streamed.pop(key)
    for item in plain["output"] + streamed["output"]:
        item.pop("id"), item.pop("call_id")
    assert plain == streamed


def test_retrieve_and_delete(client: OpenAI):
    response = client.responses.create(model=MODEL, input="hello")
    assert client.responses.retrieve(response.id).id == response.id
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)


def test_store_false_is_never_retrievable(client: OpenAI):
    response = client.responses.create(model=MODEL, input="secret", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="next", previous_response_id=response.id)
    assert info.value.code == "previous_response_not_found"


def test_ten_turn_function_calling_loop_with_previous_response_id(client: OpenAI):
    targets = [f"src/mod_{i}.py" for i in range(10)]
    response = client.responses.create(
        model=MODEL, tools=[READ_FILE], instructions="You are a coding agent.", input="Read " + " then ".join(targets)
    )
    seen = []
    for turn in range(10):
        (call,) = [o for o in response.output if o.type == "function_call"]
        seen.append(json.loads(call.arguments)["path"])
        response = client.responses.create(
            model=MODEL,
            tools=[READ_FILE],
            previous_response_id=response.id,
            instructions="You are a coding agent.",
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": f"# contents of {seen[-1]}\n" * 20}],
        )
        if turn > 0:
            # Everything but the newest turn is an exact prefix the engine has seen before.
            assert response.usage.input_tokens_details.cached_tokens > 0
    assert seen == targets
    assert response.output[0].type == "message" and "src/mod_9.py" in response.output_text
    items = list(client.responses.input_items.list(response.id, order="asc", limit=100))
    assert items[0].type == "message" and len(items) == 1 + 2 * 10


def test_stateless_loop_resending_history_with_store_false(client: OpenAI):
    history: list = [{"role": "user", "content": "read src/a.py and src/b.py and src/c.py"}]
    cached = []
    for _ in range(3):
        response = client.responses.create(model=MODEL, tools=[READ_FILE], input=history, store=False)
        (call,) = response.output
        history += [
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "x = 1\n" * 50},
        ]
        cached.append((response.usage.input_tokens, response.usage.input_tokens_details.cached_tokens))
    final = client.responses.create(model=MODEL, tools=[READ_FILE], input=history, store=False)
    assert final.output[0].type == "message"
    for (previous_input, _), (_, cached_now) in zip(cached, cached[1:]):
        # Resent history hits the prefix cache: all of the previous prompt, to the block.
        assert cached_now >= previous_input - 64


def test_input_items_pagination(client: OpenAI):
    messages = [{"role": "user", "content": f"message {i}"} for i in range(7)]
    response = client.responses.create(model=MODEL, input=messages)
    page = client.responses.input_items.list(response.id, limit=3, order="asc")
    assert [i.content[0].text for i in page.data] == ["message 0", "message 1", "message 2"]
    assert page.has_more and page.first_id == page.data[0].id and page.last_id == page.data[-1].id
    rest = client.responses.input_items.list(response.id, limit=10, order="asc", after=page.last_id)
    assert [i.content[0].text for i in rest.data] == [f"message {i}" for i in range(3, 7)] and not rest.has_more
    desc = client.responses.input_items.list(response.id, limit=2)
    assert [i.content[0].text for i in desc.data] == ["message 6", "message 5"]


def test_input_items_page_validates_against_the_schema(server: Server, client: OpenAI):
    response = client.responses.create(model=MODEL, input=[{"role": "user", "content": "a"}])
    validate("ResponseItemList", raw(server, "GET", f"/responses/{response.id}/input_items").json())


def test_structured_output(client: OpenAI):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model=MODEL,
        input="Largest city in Peru?",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
    )
    value = json.loads(response.output_text)
    assert set(value) == {"city", "population"} and isinstance(value["population"], int)


def test_background_then_cancel(tmp_path_factory):
    slow = Server(tmp_path_factory.mktemp("slow"), "--sim-decode-tps", "50", "--store", "memory")
    try:
        client = OpenAI(base_url=slow.url, api_key="sk-test", max_retries=0)
        response = client.responses.create(model=MODEL, input="Write a long essay", background=True)
        assert response.status == "queued" and response.background
        time.sleep(0.2)
        assert client.responses.retrieve(response.id).status == "in_progress"
        cancelled = client.responses.cancel(response.id)
        assert cancelled.status == "cancelled"
        assert client.responses.retrieve(response.id).status == "cancelled"
    finally:
        slow.stop()


def test_background_completes_and_replays_its_events(client: OpenAI, server: Server):
    response = client.responses.create(model=MODEL, input="hello there", background=True)
    for _ in range(200):
        if client.responses.retrieve(response.id).status == "completed":
            break
        time.sleep(0.02)
    events = sse_events(raw(server, "GET", f"/responses/{response.id}", params={"stream": "true"}).text)
    assert [e["type"] for e in events[:3]] == ["response.created", "response.queued", "response.in_progress"]
    assert events[-1]["type"] == "response.completed"
    later = sse_events(
        raw(server, "GET", f"/responses/{response.id}", params={"stream": "true", "starting_after": "5"}).text
    )
    assert [e["sequence_number"] for e in later] == [e["sequence_number"] for e in events[6:]]


def test_replaying_a_stored_response(client: OpenAI, server: Server):
    response = client.responses.create(model=MODEL, input="hello")
    events = sse_events(raw(server, "GET", f"/responses/{response.id}", params={"stream": "true"}).text)
    assert events[-1]["type"] == "response.completed" and events[-1]["response"]["id"] == response.id
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == response.output_text
    for event in events:
        validate_event(event)


def test_cancel_of_a_foreground_response_is_refused(client: OpenAI):
    response = client.responses.create(model=MODEL, input="hello")
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(response.id)


def test_input_tokens(client: OpenAI, server: Server):
    count = client.responses.input_tokens.count(model=MODEL, input="hello world", tools=[READ_FILE])
    bare = client.responses.input_tokens.count(model=MODEL, input="hello world")
    assert count.input_tokens > bare.input_tokens > 0
    validate(
        "TokenCountsResource", raw(server, "POST", "/responses/input_tokens", json={"model": MODEL, "input": "x"}).json()
    )


def test_models(client: OpenAI, server: Server):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    validate("ListModelsResponse", raw(server, "GET", "/models").json())


def test_compact_and_continue_from_the_compacted_window(client: OpenAI, server: Server):
    first = client.responses.create(model=MODEL, input="Please read src/app.py", tools=[READ_FILE])
    call = first.output[0]
    second = client.responses.create(
        model=MODEL,
        tools=[READ_FILE],
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "line\n" * 2000}],
    )
    compacted = raw(server, "POST", "/responses/compact", json={"model": MODEL, "previous_response_id": second.id})
    assert compacted.status_code == 200
    body = compacted.json()
    validate("CompactResource", body)
    assert body["object"] == "response.compaction" and body["output"][-1]["type"] == "compaction"
    follow = client.responses.create(model=MODEL, input=[*body["output"], {"role": "user", "content": "and now?"}])
    full = client.responses.input_tokens.count(model=MODEL, previous_response_id=second.id, input="and now?")
    assert follow.status == "completed" and follow.usage.input_tokens < full.input_tokens / 5
    tampered = dict(body["output"][-1], encrypted_content=body["output"][-1]["encrypted_content"][:-6] + "AAAAAA")
    assert_error(
        raw(server, "POST", "/responses", json={"model": MODEL, "input": [tampered]}), 400, "invalid_encrypted_content"
    )


def test_context_management_compacts_during_a_response(client: OpenAI):
    first = client.responses.create(model=MODEL, input="Please read src/big.py", tools=[READ_FILE])
    call = first.output[0]
    management = {"context_management": [{"type": "compaction", "compact_threshold": 1000}]}
    response = client.responses.create(
        model=MODEL,
        tools=[READ_FILE],
        previous_response_id=first.id,
        extra_body=management,
        input=[
            {"type": "function_call_output", "call_id": call.call_id, "output": "word " * 3000},
            {"role": "user", "content": "summarize"},
        ],
    )
    assert response.output[0].type == "compaction" and response.output[-1].type == "message"
    # The new input stays verbatim; only what came before it is compacted.
    assert 3000 < response.usage.input_tokens < 3300
    follow = client.responses.create(model=MODEL, tools=[READ_FILE], previous_response_id=response.id, input="and?")
    assert follow.status == "completed"
    assert follow.usage.input_tokens > response.usage.input_tokens  # the sealed context was expanded


def test_max_output_tokens_gives_incomplete(client: OpenAI):
    response = client.responses.create(model=MODEL, input="write an essay", max_output_tokens=16)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 16


def test_truncation_disabled_refuses_context_overflow(tmp_path_factory):
    small = Server(tmp_path_factory.mktemp("small"), "--sim-context-window", "500", "--store", "memory")
    try:
        r = httpx.post(small.url + "/responses", json={"model": MODEL, "input": "word " * 1000})
        assert_error(r, 400, "context_length_exceeded", "input")
        ok = httpx.post(
            small.url + "/responses",
            json={
                "model": MODEL,
                "truncation": "auto",
                "max_output_tokens": 16,
                "input": [{"role": "user", "content": "word " * 1000}, {"role": "user", "content": "short"}],
            },
        )
        assert ok.status_code == 200 and ok.json()["usage"]["input_tokens"] <= 500
    finally:
        small.stop()


def test_images_and_files_are_counted_as_tokens(client: OpenAI):
    png = (
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
        "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
    )
    base = client.responses.input_tokens.count(model=MODEL, input="what is this?")
    with_image = client.responses.create(
        model=MODEL,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "what is this?"},
                    {"type": "input_image", "image_url": png, "detail": "low"},
                    {"type": "input_file", "filename": "a.txt", "file_data": "data:text/plain;base64,aGVsbG8gd29ybGQ="},
                ],
            }
        ],
    )
    assert with_image.usage.input_tokens >= base.input_tokens + 85


def test_item_reference_names_any_stored_item_of_the_project(client: OpenAI, server: Server):
    """The Vercel AI SDK's second user turn: an earlier assistant message by reference, no previous_response_id."""
    first = client.responses.create(model=MODEL, input="Say hello")
    answer = first.output[0]
    second = raw(
        server,
        "POST",
        "/responses",
        json={
            "model": MODEL,
            "input": [
                {"role": "user", "content": "Say hello"},
                {"type": "item_reference", "id": answer.id},
                {"role": "user", "content": "And again"},
            ],
        },
    )
    assert second.status_code == 200, second.text
    items = client.responses.input_items.list(second.json()["id"], order="asc").data
    assert [i.type for i in items] == ["message", "message", "message"] and items[1].id == answer.id
    assert items[1].content[0].text == answer.content[0].text
    unknown = raw(
        server, "POST", "/responses", json={"model": MODEL, "input": [{"type": "item_reference", "id": "msg_nope"}]}
    )
    assert_error(unknown, 400, "item_not_found", "input[0].id")
    private = client.responses.create(model=MODEL, input="Say hello", store=False)
    unstored = raw(
        server,
        "POST",
        "/responses",
        json={"model": MODEL, "input": [{"type": "item_reference", "id": private.output[0].id}]},
    )
    assert_error(unstored, 400, "item_not_found")  # store=false items are never indexed


def test_item_reference_resolves_against_the_previous_context(client: OpenAI):
    first = client.responses.create(model=MODEL, input="Please read src/app.py", tools=[READ_FILE])
    call = first.output[0]
    follow = client.responses.create(
        model=MODEL,
        tools=[READ_FILE],
        previous_response_id=first.id,
        input=[
            {"type": "item_reference", "id": call.id},
            {"type": "function_call_output", "call_id": call.call_id, "output": "ok"},
        ],
    )
    assert follow.status == "completed"


# Errors ------------------------------------------------------------------------------------


def test_malformed_json(server: Server):
    assert_error(
        raw(server, "POST", "/responses", content=b"{nope", headers={"content-type": "application/json"}),
        400,
        "invalid_json",
    )


def test_wrong_types(server: Server):
    assert_error(raw(server, "POST", "/responses", json={"model": MODEL, "input": 5}), 400, param="input")
    assert_error(raw(server, "POST", "/responses", json={"model": MODEL, "input": "x", "tools": "all"}), 400, param="tools")
    assert_error(raw(server, "POST", "/responses", json=[1, 2]), 400)


def test_missing_and_unknown_model(client: OpenAI):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="no-such-model", input="x")
    assert info.value.code == "model_not_found" and info.value.param == "model"
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(input="x")  # type: ignore[call-arg]
    assert info.value.param == "model"


def test_unknown_previous_response_id(client: OpenAI):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="x", previous_response_id="resp_missing")
    assert info.value.code == "previous_response_not_found" and info.value.param == "previous_response_id"


def test_unknown_response_id_is_404(server: Server):
    for method, path in [
        ("GET", "/responses/resp_missing"),
        ("DELETE", "/responses/resp_missing"),
        ("POST", "/responses/resp_missing/cancel"),
        ("GET", "/responses/resp_missing/input_items"),
    ]:
        assert_error(raw(server, method, path), 404)


def test_body_over_the_size_limit_is_413(tmp_path_factory):
    small = Server(tmp_path_factory.mktemp("limits"), "--max-body-bytes", "1000", "--store", "memory")
    try:
        r = httpx.post(small.url + "/responses", json={"model": MODEL, "input": "x" * 5000})
        assert_error(r, 413, "request_too_large")
        sdk = OpenAI(base_url=small.url, api_key="sk-test", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            sdk.responses.create(model=MODEL, input="x" * 5000)
        assert info.value.status_code == 413 and info.value.code == "request_too_large"
        assert httpx.post(small.url + "/responses", json={"model": MODEL, "input": "ok"}).status_code == 200
    finally:
        small.stop()


def test_unsupported_tool_types(client: OpenAI):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="x", tools=[{"type": "teleport"}])  # type: ignore[list-item]
    assert info.value.param == "tools[0].type"
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="x", tools=[{"type": "web_search"}], tool_choice={"type": "web_search"})  # type: ignore[arg-type]
    assert info.value.code == "unsupported_tool_choice"


def test_unknown_call_id_in_tool_output(client: OpenAI):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input=[{"type": "function_call_output", "call_id": "call_x", "output": "?"}])
    assert info.value.code == "tool_call_not_found"


def test_codex_style_request_is_accepted(server: Server):
    body = {
        "model": MODEL,
        "instructions": "You are Codex.",
        "stream": True,
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "reasoning": {"summary": "auto"},
        "prompt_cache_key": "k",
        "client_metadata": {"x": "y"},
        "tools": [
            {
                "type": "function",
                "name": "shell",
                "parameters": {
                    "type": "object",
                    "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                    "required": ["command"],
                },
                "strict": False,
            },
            {"type": "web_search"},
            {"type": "namespace", "name": "mcp", "description": "d", "tools": [{"type": "function", "name": "lookup"}]},
        ],
        "input": [
            {
                "type": "message",
                "role": "developer",
                "id": "msg_a",
                "content": [{"type": "input_text", "text": "be careful"}],
            },
            {"role": "user", "content": [{"type": "input_text", "text": "run 'ls -la'"}]},
        ],
    }
    events = sse_events(raw(server, "POST", "/responses", json=body).text)
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output"][0]["name"] == "shell"


def test_unknown_route_and_method_are_openai_shaped(server: Server):
    assert_error(raw(server, "GET", "/nothing"), 404)
    assert_error(raw(server, "PUT", "/responses"), 405)


def test_server_says_where_it_listens_and_stores(server: Server):
    output = server.output()
    assert f"http://127.0.0.1:{server.port}/v1" in output and "sqlite:" in output


SPAWN = {
    "type": "namespace",
    "name": "multi_agent_v1",
    "description": "Tools for spawning and managing sub-agents.",
    "tools": [
        {
            "type": "function",
            "name": "spawn_agent",
            "description": "Spawn a sub-agent",
            "parameters": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]},
        }
    ],
}


def test_calls_to_a_namespaced_tool_carry_its_namespace(server: Server):
    """Codex looks calls up by namespace and name: JSON, SSE and WebSocket all say which namespace."""
    body = {
        "model": MODEL,
        "input": "Spawn a helper for 'docs'",
        "tools": [SPAWN, READ_FILE],
        "tool_choice": {"type": "function", "name": "spawn_agent"},
        "store": False,
    }
    response = raw(server, "POST", "/responses", json=body).json()
    validate("Response", response)
    call = response["output"][0]
    assert (call["type"], call["name"], call["namespace"]) == ("function_call", "spawn_agent", "multi_agent_v1")
    events = sse_events(raw(server, "POST", "/responses", json={**body, "stream": True}).text)
    for event in events:
        validate_event(event)
    items = [e["item"] for e in events if e["type"] in ("response.output_item.added", "response.output_item.done")]
    assert items and all(i["namespace"] == "multi_agent_v1" for i in items)
    from websockets.sync.client import connect

    with connect(server.url.replace("http://", "ws://") + "/responses") as ws:
        ws.send(json.dumps({"type": "response.create", **body}))
        while (event := json.loads(ws.recv(timeout=30)))["type"] != "response.completed":
            validate_event(event, websocket=True)
        assert event["response"]["output"][0]["namespace"] == "multi_agent_v1"


def test_a_reasoning_request_streams_a_reasoning_item_before_its_answer(server: Server):
    body = {
        "model": MODEL,
        "input": "Please read src/app.py",
        "tools": [READ_FILE],
        "store": False,
        "reasoning": {"effort": "low", "summary": "auto"},
        "include": ["reasoning.encrypted_content"],
        "stream": True,
    }
    events = sse_events(raw(server, "POST", "/responses", json=body).text)
    for event in events:
        validate_event(event)
    kinds = [e["type"] for e in events]
    first_reasoning = kinds.index("response.reasoning_text.delta")
    assert (
        kinds.index("response.output_item.added") < first_reasoning < kinds.index("response.function_call_arguments.delta")
    )
    assert kinds[first_reasoning - 1] == "response.content_part.added"
    for kind in (
        "response.reasoning_text.done",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
    ):
        assert kind in kinds, kind
    response = events[-1]["response"]
    validate("Response", response)
    reasoning, call = response["output"]
    assert reasoning["type"] == "reasoning" and reasoning["content"][0]["text"] and reasoning["summary"][0]["text"]
    assert reasoning["encrypted_content"] and call["type"] == "function_call"
    details = response["usage"]["output_tokens_details"]
    assert 0 < details["reasoning_tokens"] < response["usage"]["output_tokens"]


def test_encrypted_reasoning_comes_back_on_the_next_turn_and_forgeries_are_refused(server: Server):
    first = raw(
        server,
        "POST",
        "/responses",
        json={
            "model": MODEL,
            "input": "Please read src/app.py",
            "tools": [READ_FILE],
            "store": False,
            "reasoning": {"effort": "minimal"},
            "include": ["reasoning.encrypted_content"],
        },
    ).json()
    reasoning, call = first["output"]
    carried = {
        "type": "reasoning",
        "id": reasoning["id"],
        "summary": [],
        "encrypted_content": reasoning["encrypted_content"],
    }  # what a store=false client sends back
    history = [
        {"role": "user", "content": "Please read src/app.py"},
        carried,
        call,
        {"type": "function_call_output", "call_id": call["call_id"], "output": "print('hi')"},
    ]
    second = raw(server, "POST", "/responses", json={"model": MODEL, "input": history, "tools": [READ_FILE], "store": False})
    assert second.status_code == 200, second.text
    forged = dict(carried, encrypted_content=carried["encrypted_content"][:-8] + "AAAAAAAA")
    refused = raw(server, "POST", "/responses", json={"model": MODEL, "input": [history[0], forged], "store": False})
    assert_error(refused, 400, "invalid_encrypted_content", "input[1].encrypted_content")


def test_http_continuations_from_recent_conversations_match_a_rebuild_from_the_store(tmp_path: Path):
    """Each turn of a tool loop continues on a server that has the parent rendered, and the same
    continuation goes to a second server on the same store that must rebuild it: same context."""
    cached = Server(tmp_path)
    rebuilt = Server(tmp_path, "--http-cache-mb", "0")  # the same data dir: the same SQLite store and keys
    try:
        a, b = OpenAI(base_url=cached.url, api_key="x"), OpenAI(base_url=rebuilt.url, api_key="x")
        targets = [f"src/mod_{i}.py" for i in range(6)]
        response = a.responses.create(
            model=MODEL, tools=[READ_FILE], instructions="You are a coding agent.", input="Read " + " then ".join(targets)
        )
        for _ in range(6):
            call = next(o for o in response.output if o.type == "function_call")
            turn = dict(
                model=MODEL,
                tools=[READ_FILE],
                previous_response_id=response.id,
                instructions="You are a coding agent.",
                input=[{"type": "function_call_output", "call_id": call.call_id, "output": f"# {call.arguments}\n" * 30}],
            )
            response, twin = a.responses.create(**turn), b.responses.create(**turn)
            assert response.usage.input_tokens == twin.usage.input_tokens
            assert [o.model_dump(exclude={"id", "call_id"}) for o in response.output] == [
                o.model_dump(exclude={"id", "call_id"}) for o in twin.output
            ]
        name = "loopway_http_continuation_cache_total"
        assert metric_series(metric_samples(cached), name) == {(("result", "hit"),): 6}
        assert metric_series(metric_samples(rebuilt), name) == {(("result", "miss"),): 6}
    finally:
        cached.stop()
        rebuilt.stop()


def test_a_deleted_response_is_not_continued_from_the_recent_conversations(client: OpenAI):
    first = client.responses.create(model=MODEL, input="hello there")
    client.responses.delete(first.id)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, previous_response_id=first.id, input="and then?")
    assert info.value.code == "previous_response_not_found"
