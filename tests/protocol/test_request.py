"""Create-request validation: every bad input is an OpenAI-shaped 400 naming its parameter."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopway.protocol.errors import ApiError
from loopway.protocol.items import FunctionCallOutput, ItemReference, Message, OtherItem
from loopway.protocol.request import parse_create

BASE = {"model": "m", "input": "hi"}


def parse(body: Any, **kw: Any):
    return parse_create(json.dumps(body).encode(), **kw)


def error_of(body: Any, **kw: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(body, **kw)
    assert info.value.status == 400
    return info.value


def test_string_input_is_one_user_message():
    request = parse(BASE)
    assert request.input == [Message(role="user", content="hi")]
    assert request.store is True and request.parallel_tool_calls is True and request.temperature == 1.0


def test_items_without_type_are_messages_or_references():
    request = parse({"model": "m", "input": [{"role": "developer", "content": "rules", "id": "msg_1"}, {"id": "fc_9"}]})
    assert isinstance(request.input[0], Message) and request.input[0].role == "developer"
    assert request.input[1] == ItemReference(id="fc_9")


def test_hosted_tool_items_pass_through_verbatim():
    item = {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search"}}
    request = parse({"model": "m", "input": [item]})
    assert request.input == [OtherItem(type="web_search_call", raw=item)]


def test_malformed_json_is_invalid_json():
    with pytest.raises(ApiError) as info:
        parse_create(b"{not json")
    assert info.value.status == 400 and info.value.code == "invalid_json"


def test_wrong_type_names_the_parameter():
    err = error_of({**BASE, "temperature": "hot"})
    assert err.param == "temperature" and err.code == "invalid_type"


def test_wrong_item_field_type_names_the_path():
    err = error_of({"model": "m", "input": [{"type": "function_call_output", "call_id": 3, "output": "x"}]})
    assert err.param == "input[0].call_id"


def test_missing_model():
    assert error_of({"input": "hi"}).param == "model"


def test_missing_input():
    assert error_of({"model": "m"}).param == "input"


@pytest.mark.parametrize(
    "field,value", [("temperature", 2.5), ("top_p", -0.1), ("max_output_tokens", 3), ("top_logprobs", 21)]
)
def test_out_of_range_values(field: str, value: float):
    assert error_of({**BASE, field: value}).param == field


def test_unknown_item_type_lists_supported_types():
    err = error_of({"model": "m", "input": [{"type": "telepathy"}]})
    assert err.param == "input[0].type" and "message" in err.message


def test_unknown_tool_type_is_refused():
    err = error_of({**BASE, "tools": [{"type": "teleport"}]})
    assert err.param == "tools[0].type"


def test_hosted_tools_are_accepted_and_echoed_but_never_callable():
    request = parse({**BASE, "tools": [{"type": "web_search"}, {"type": "function", "name": "f"}]})
    assert [t.name for t in request.tools.functions] == ["f"]
    assert request.tools.echo[0] == {"type": "web_search"}


def test_forcing_a_hosted_tool_is_refused_clearly():
    err = error_of({**BASE, "tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search"}})
    assert err.code == "unsupported_tool_choice" and "hosted" not in err.message or "does not run" in err.message


def test_required_with_only_hosted_tools_is_refused():
    err = error_of({**BASE, "tools": [{"type": "web_search"}], "tool_choice": "required"})
    assert err.code == "unsupported_tool_choice"


def test_namespace_functions_are_callable():
    request = parse(
        {
            **BASE,
            "tools": [
                {"type": "namespace", "name": "crm", "description": "d", "tools": [{"type": "function", "name": "lookup"}]}
            ],
        }
    )
    assert request.tools.functions[0].name == "lookup" and request.tools.functions[0].namespace == "crm"


def test_named_tool_choice_must_exist():
    assert error_of({**BASE, "tool_choice": {"type": "function", "name": "nope"}}).param == "tool_choice"


def test_allowed_tools_restricts_names():
    request = parse(
        {
            **BASE,
            "tools": [{"type": "function", "name": "a"}, {"type": "function", "name": "b"}],
            "tool_choice": {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "b"}]},
        }
    )
    assert request.tool_choice.mode == "required" and request.tool_choice.names == ("b",)


def test_metadata_limits():
    assert error_of({**BASE, "metadata": {f"k{i}": "v" for i in range(17)}}).param == "metadata"
    assert error_of({**BASE, "metadata": {"k": 1}}).param == "metadata.k"


def test_json_schema_format_needs_a_name_and_schema():
    assert error_of({**BASE, "text": {"format": {"type": "json_schema", "schema": {}}}}).param == "text.format.name"
    request = parse({**BASE, "text": {"format": {"type": "json_schema", "name": "p", "schema": {"type": "object"}}}})
    assert request.json_schema is not None and request.json_schema.name == "p"


def test_stream_id_is_websocket_only_and_validated():
    assert error_of({**BASE, "stream_id": "a"}).param == "stream_id"
    assert error_of({**BASE, "stream_id": "bad id!"}, websocket=True).code == "invalid_stream_id"
    assert error_of({**BASE, "stream_id": ""}, websocket=True).code == "invalid_stream_id"
    assert parse({**BASE, "stream_id": "lane_1.a-b"}, websocket=True).stream_id == "lane_1.a-b"
    assert error_of({**BASE, "stream_id": "lane\n"}, websocket=True).code == "invalid_stream_id"  # no trailing newline


@pytest.mark.parametrize("value", [-5, 0])
def test_max_tool_calls_must_be_positive(value: int):
    err = error_of({**BASE, "max_tool_calls": value})
    assert err.param == "max_tool_calls" and err.code == "integer_below_min_value"


def test_json_bounds_are_checked_before_building():
    from loopway.protocol.bounds import JsonBounds

    tight = JsonBounds(max_values=50, max_depth=8, max_input_items=3)
    assert error_of({**BASE, "input": [1] * 60}, limits=tight).code == "json_too_large"
    nested: Any = "x"
    for _ in range(10):
        nested = [nested]
    assert error_of({**BASE, "metadata": nested}, limits=tight).code == "json_too_deep"
    items = [{"type": "message", "role": "user", "content": "a"}] * 4
    assert error_of({**BASE, "input": items}, limits=tight).code == "array_above_max_length"


def test_background_is_refused_on_websocket_and_needs_store():
    assert error_of({**BASE, "background": True}, websocket=True).param == "background"
    assert error_of({**BASE, "background": True, "store": False}).param == "store"


def test_codex_extras_are_ignored():
    request = parse(
        {
            **BASE,
            "client_metadata": {"a": "b"},
            "prompt_cache_key": "k",
            "stream": True,
            "include": ["reasoning.encrypted_content"],
            "reasoning": {"summary": "auto"},
        }
    )
    assert request.stream and request.include == ["reasoning.encrypted_content"]


def test_compaction_trigger_must_be_last():
    request = parse({"model": "m", "input": [{"role": "user", "content": "x"}, {"type": "compaction_trigger"}]})
    assert request.compact_now and len(request.input) == 1
    assert (
        error_of({"model": "m", "input": [{"type": "compaction_trigger"}, {"role": "user", "content": "x"}]}).param
        == "input[0]"
    )


def test_function_call_output_with_parts():
    request = parse(
        {
            "model": "m",
            "input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": "ok"}]}],
        }
    )
    assert isinstance(request.input[0], FunctionCallOutput)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
fields = st.sampled_from(
    [
        "model",
        "input",
        "tools",
        "tool_choice",
        "text",
        "metadata",
        "temperature",
        "max_output_tokens",
        "instructions",
        "previous_response_id",
        "include",
        "truncation",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(fields, json_values, max_size=6))
def test_any_body_is_a_request_or_an_api_error(body: dict[str, Any]):
    try:
        parse(body)
    except ApiError as err:
        assert 400 <= err.status < 500 and err.message


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["type", "role", "content", "id", "call_id", "output", "name", "arguments"]),
            json_values,
            max_size=5,
        ),
        max_size=4,
    )
)
def test_any_item_list_is_a_request_or_an_api_error(items: list[dict[str, Any]]):
    try:
        parse({"model": "m", "input": items})
    except ApiError as err:
        assert err.status == 400 and err.param and err.param.startswith("input")
