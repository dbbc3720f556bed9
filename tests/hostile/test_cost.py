"""Small requests that used to cost the server far more than they are worth, and large legal ones.

Each attack runs against a real server under a ``Watch``: ``/health`` within 1 s, a normal client's
responses complete, memory bounded, and the refusal (when there is one) OpenAI-shaped.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL, sse_events
from tests.hostile.conftest import Watch, assert_openai_error, started


def post(server, body: dict | bytes, timeout: float = 60) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{server.url}/responses", content=content, timeout=timeout, headers={"content-type": "application/json"}
    )


def test_truncation_auto_over_many_items_is_one_pass(tmp_path: Path):
    """25,000 one-letter messages, truncated to a 2,000-token window (was 55 s of a frozen loop)."""
    server = started(tmp_path, "--sim-context-window", "2000")
    try:
        items = [{"type": "message", "role": "user", "content": "a"} for _ in range(25_000)]
        with Watch(server):
            answer = post(server, {"model": MODEL, "input": items, "truncation": "auto", "store": False})
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["input_tokens"] <= 2_000
    finally:
        server.stop()


NESTED_ARRAYS = {
    "type": "object",
    "properties": {
        "grid": {
            "type": "array",
            "minItems": 30_000,
            "items": {"type": "array", "minItems": 30_000, "items": {"type": "string", "minLength": 1_000}},
        }
    },
    "required": ["grid"],
}


@pytest.mark.parametrize(
    "body",
    [
        {  # a 323-byte tool whose arguments would be 900 million strings
            "tools": [{"type": "function", "name": "fill", "parameters": NESTED_ARRAYS}],
            "tool_choice": "required",
        },
        {  # a 212-byte format asking for the same
            "text": {"format": {"type": "json_schema", "name": "grid", "schema": NESTED_ARRAYS}},
        },
        {  # a $ref cycle: a tree whose every node requires a child
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "tree",
                    "schema": {
                        "$defs": {
                            "node": {
                                "type": "object",
                                "properties": {"child": {"$ref": "#/$defs/node"}},
                                "required": ["child"],
                            }
                        },
                        "$ref": "#/$defs/node",
                    },
                }
            },
        },
        {  # one string of a billion characters
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "long",
                    "schema": {
                        "type": "object",
                        "properties": {"s": {"type": "string", "minLength": 10**9}},
                        "required": ["s"],
                    },
                }
            },
        },
    ],
    ids=["tool-parameters", "json-schema-format", "ref-cycle", "min-length"],
)
def test_schema_explosions_end_at_the_output_limit(tmp_path: Path, body: dict):
    server = started(tmp_path)
    try:
        with Watch(server):
            answer = post(
                server, {"model": MODEL, "input": "Fill it in", "store": False, "max_output_tokens": 500, **body}, timeout=30
            )
        assert answer.status_code == 200, answer.text
        response = answer.json()
        assert response["status"] == "incomplete" and response["incomplete_details"]["reason"] == "max_output_tokens"
        assert response["usage"]["output_tokens"] <= 500
    finally:
        server.stop()


def test_a_million_character_text_is_tokenized_not_a_500(tmp_path: Path):
    server = started(tmp_path, "--sim-context-window", "2000000")
    try:
        with Watch(server):
            answer = post(server, {"model": MODEL, "input": "word " * 300_000, "store": False})
            unbroken = post(server, {"model": MODEL, "input": "x" * 1_500_000, "store": False})
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["input_tokens"] > 300_000
        assert unbroken.status_code == 200, unbroken.text
    finally:
        server.stop()


def test_deep_nesting_is_a_400(tmp_path: Path):
    server = started(tmp_path)
    try:
        with Watch(server):
            for depth in (100, 2_000, 100_000):
                body = b'{"model": "loopway-sim", "input": ' + b"[" * depth + b"]" * depth + b"}"
                answer = post(server, body)
                assert answer.status_code == 400, (depth, answer.text)
                assert_openai_error(answer.json(), "json_too_deep")
    finally:
        server.stop()


def test_json_amplification_is_refused_before_it_is_built(tmp_path: Path):
    """30 MiB of ``{}``: 10 million dicts (about 0.8 GB) if decoded; refused from a count of the text."""
    server = started(tmp_path)
    try:
        items = b"[" + b",".join([b"{}"] * (10 * 1024 * 1024)) + b"]"
        with Watch(server, rss_bound_mib=200):
            answer = post(server, b'{"model": "loopway-sim", "input": ' + items + b"}")
        assert answer.status_code == 400
        assert_openai_error(answer.json(), "json_too_large")
    finally:
        server.stop()


def test_too_many_input_items_are_counted_before_they_are_parsed(tmp_path: Path):
    server = started(tmp_path, "--max-input-items", "1000")
    try:
        items = [{"type": "message", "role": "user", "content": "a"} for _ in range(1_001)]
        answer = post(server, {"model": MODEL, "input": items})
        assert answer.status_code == 400
        assert_openai_error(answer.json(), "array_above_max_length")
        assert answer.json()["error"]["param"] == "input"
    finally:
        server.stop()


def test_a_large_legal_body_is_parsed_off_the_loop_while_others_stream(tmp_path: Path):
    """Twenty megabytes of tool output in one request: everyone else keeps being answered meanwhile."""
    server = started(
        tmp_path, "--sim-context-window", "20000000", "--sim-prefill-tps", "1e12", "--max-body-bytes", str(64 << 20)
    )
    try:
        output = "line of tool output with some words in it\n" * 500_000  # 21 MB
        items = [
            {"type": "message", "role": "user", "content": "Summarise the log"},
            {"type": "function_call", "call_id": "c1", "name": "read_log", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": output},
        ]
        with Watch(server, rss_bound_mib=600):
            with httpx.stream(
                "POST",
                f"{server.url}/responses",
                timeout=120,
                json={"model": MODEL, "input": items, "store": False, "stream": True},
            ) as answer:
                events = sse_events(answer.read().decode())
        assert events[-1]["type"] == "response.completed"
        assert events[-1]["response"]["usage"]["input_tokens"] > 4_000_000
    finally:
        server.stop()


def chat(server, body: dict | bytes, timeout: float = 120) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{server.url}/chat/completions", content=content, timeout=timeout, headers={"content-type": "application/json"}
    )


def test_the_chat_endpoint_counts_messages_and_values_before_it_parses_them(tmp_path: Path):
    server = started(tmp_path, "--max-input-items", "1000")
    try:
        messages = [{"role": "user", "content": "a"} for _ in range(1_001)]
        answer = chat(server, {"model": MODEL, "messages": messages})
        assert answer.status_code == 400
        assert_openai_error(answer.json(), "array_above_max_length")
        assert answer.json()["error"]["param"] == "messages"
        amplified = b"[" + b",".join([b"{}"] * (10 * 1024 * 1024)) + b"]"
        with Watch(server, rss_bound_mib=200):
            answer = chat(server, b'{"model": "loopway-sim", "messages": ' + amplified + b"}")
        assert answer.status_code == 400
        assert_openai_error(answer.json(), "json_too_large")
        deep = b'{"model": "loopway-sim", "messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
        answer = chat(server, deep)
        assert answer.status_code == 400
        assert_openai_error(answer.json())
    finally:
        server.stop()


def test_a_large_chat_body_is_rendered_off_the_loop_while_others_are_served(tmp_path: Path):
    server = started(
        tmp_path, "--sim-context-window", "20000000", "--sim-prefill-tps", "1e12", "--max-body-bytes", str(64 << 20)
    )
    try:
        output = "line of tool output with some words in it\n" * 500_000  # 21 MB
        messages = [
            {"role": "user", "content": "Summarise the log"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "read_log", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": output},
        ]  # fmt: skip
        with Watch(server, rss_bound_mib=600):
            answer = chat(server, {"model": MODEL, "messages": messages, "max_tokens": 16})
        assert answer.status_code == 200
        assert answer.json()["usage"]["prompt_tokens"] > 4_000_000
    finally:
        server.stop()
