"""The sim engine's Chat Completions endpoint, driven by the official SDK's ``chat.completions``."""

from __future__ import annotations

import json

import httpx
import pytest
from openai import BadRequestError, OpenAI

from tests.conftest import MODEL, Serve, Server
from tests.openapi import validator

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
        },
    }
]


@pytest.fixture(scope="module")
def sim(serve: Serve) -> Server:
    return serve("--store", "memory", "--sim-decode-tps", "20000")


def sdk(server: Server) -> OpenAI:
    return OpenAI(base_url=server.url, api_key="sk-test", max_retries=0)


def test_json_answer_with_usage(sim: Server):
    completion = sdk(sim).chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    )
    choice = completion.choices[0]
    assert completion.object == "chat.completion" and choice.finish_reason == "stop"
    assert choice.message.role == "assistant" and "hello" in choice.message.content
    usage = completion.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == 0


def test_streamed_tool_call_deltas_and_usage_chunk(sim: Server):
    chunks = list(
        sdk(sim).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "read src/app.py please"}],
            tools=TOOLS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert pieces[0].id.startswith("call_") and pieces[0].function.name == "read_file" and pieces[0].index == 0
    assert all(p.id is None and p.function.name is None for p in pieces[1:])
    assert json.loads("".join(p.function.arguments for p in pieces)) == {"path": "src/app.py"}
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["tool_calls"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_a_continued_conversation_hits_the_prefix_cache(sim: Server):
    client = sdk(sim)
    messages = [
        {"role": "system", "content": "You are a careful coding agent. " * 40},
        {"role": "user", "content": "read src/cache.py"},
    ]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    call = first.choices[0].message.tool_calls[0]
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "def cached(): ...\n" * 20},
    ]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached > 0 and cached % 64 == 0 and cached >= first.usage.prompt_tokens - 64
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


def test_the_same_conversation_gets_the_same_answer(sim: Server):
    messages = [{"role": "user", "content": "explain the retry loop"}]
    one = sdk(sim).chat.completions.create(model=MODEL, messages=messages)
    two = sdk(sim).chat.completions.create(model=MODEL, messages=messages)
    assert one.choices[0].message.content == two.choices[0].message.content


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "web"}]}, "tools[0]"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_requests_get_openai_shaped_errors(sim: Server, body: dict, param: str):
    response = httpx.post(f"{sim.url}/chat/completions", json=body, timeout=10)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_a_tool_output_for_an_unknown_call_is_refused_like_the_responses_api(sim: Server):
    with pytest.raises(BadRequestError) as refused:
        sdk(sim).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_x", "content": "out"}],
        )
    assert refused.value.status_code == 400 and refused.value.body["code"] == "tool_call_not_found"


def test_only_the_sim_engine_serves_chat_completions(tmp_path):
    front = Server(tmp_path, "--engine", "openai-chat", "--upstream", "http://127.0.0.1:9/v1", "--upstream-model", "m")
    try:
        response = httpx.post(f"{front.url}/chat/completions", json={"model": "m", "messages": []}, timeout=10)
        assert response.status_code == 404
    finally:
        front.stop()


def raw_chunks(sim: Server, body: dict) -> list[dict]:
    response = httpx.post(f"{sim.url}/chat/completions", json={**body, "stream": True}, timeout=30)
    blocks = [b.removeprefix("data: ") for b in response.text.strip().split("\n\n")]
    assert blocks[-1] == "[DONE]"
    return [json.loads(b) for b in blocks[:-1]]


@pytest.mark.parametrize("tools", [None, TOOLS])
def test_what_it_sends_validates_against_openais_schema(sim: Server, tools: list | None):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "read src/schema.py"}], "tools": tools}
    body = {k: v for k, v in body.items() if v is not None}
    chunks = raw_chunks(sim, {**body, "stream_options": {"include_usage": True}})
    for chunk in chunks:
        validator("CreateChatCompletionStreamResponse").validate(chunk)
    whole = httpx.post(f"{sim.url}/chat/completions", json=body, timeout=30).json()
    validator("CreateChatCompletionResponse").validate(whole)
    assert whole["choices"][0]["finish_reason"] == ("tool_calls" if tools else "stop")
