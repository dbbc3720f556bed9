"""One turn without a transport: context, references, tool outputs, fitting, events."""

from __future__ import annotations

import pytest

from loopway.core.context.parent import Parent
from loopway.protocol.errors import ApiError
from loopway.protocol.events import is_terminal
from loopway.protocol.items import FunctionCall, Message
from loopway.tokens.render import Renderer
from tests.core.turns import READ_FILE, events_of, finished, pipeline, request, user

PIPE = pipeline()


async def test_a_turn_streams_numbered_events_ending_in_one_terminal_event():
    turn = PIPE.prepare(request(), None)
    events = await events_of(PIPE, turn)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [is_terminal(e) for e in events].count(True) == 1 and is_terminal(events[-1])
    assert turn.response.status == "completed" and turn.response.usage.output_tokens > 0


async def test_the_conversation_after_a_turn_holds_its_output_for_the_next_one():
    turn = await finished(PIPE, request())
    assert turn.after is not None
    assert list(turn.after.items)[-1] == turn.response.output[-1]


async def test_a_cached_continuation_renders_only_its_new_items():
    first = await finished(PIPE, request())
    parent = Parent(response=first.response, conversation=first.after)
    second = PIPE.prepare(request(input=[user("more")], previous_response_id=first.id), parent)
    assert second.known_prefix == len(first.after.tokens)
    assert second.conversation.tokens.ids(second.known_prefix) == Renderer().item(Message(role="user", content="more"))


async def test_a_stored_continuation_renders_the_same_tokens_as_a_cached_one():
    first = await finished(PIPE, request())
    cached = Parent(response=first.response, conversation=first.after)
    stored = Parent(response=first.response, items=list(first.after.items))
    new = request(input=[user("more")], previous_response_id=first.id)
    assert PIPE.prepare(new, cached).conversation.tokens.ids() == PIPE.prepare(new, stored).conversation.tokens.ids()


async def test_item_reference_resolves_against_the_context_and_an_unknown_one_is_item_not_found():
    first = await finished(PIPE, request())
    parent = Parent(response=first.response, conversation=first.after)
    answer_id = first.response.output[0].id
    turn = PIPE.prepare(request(input=[{"type": "item_reference", "id": answer_id}], previous_response_id=first.id), parent)
    assert list(turn.conversation.items)[-1] == first.response.output[0]
    with pytest.raises(ApiError) as missing:
        PIPE.prepare(request(input=[{"type": "item_reference", "id": "msg_nope"}]), None)
    assert missing.value.code == "item_not_found" and missing.value.param == "input[0].id"


async def test_a_tool_output_must_answer_a_call_of_the_context():
    turn = await finished(PIPE, request(input="Please read src/app.py", tools=[READ_FILE]))
    call = turn.response.output[0]
    assert isinstance(call, FunctionCall)
    parent = Parent(response=turn.response, conversation=turn.after)
    good = {"type": "function_call_output", "call_id": call.call_id, "output": "x = 1"}
    PIPE.prepare(request(input=[good], previous_response_id=turn.id, tools=[READ_FILE]), parent)
    stray = {"type": "function_call_output", "call_id": "call_unknown", "output": "x"}
    with pytest.raises(ApiError) as refused:
        PIPE.prepare(request(input=[stray], previous_response_id=turn.id, tools=[READ_FILE]), parent)
    assert refused.value.code == "tool_call_not_found" and refused.value.param == "input[0]"


def test_an_unknown_model_is_model_not_found():
    with pytest.raises(ApiError) as refused:
        PIPE.prepare(request(model="gpt-nope"), None)
    assert refused.value.code == "model_not_found"


def long_history(count: int) -> list[dict]:
    return [user(f"message number {i} with a few more words in it") for i in range(count)]


def test_over_the_window_with_truncation_disabled_is_context_length_exceeded():
    with pytest.raises(ApiError) as refused:
        PIPE.prepare(request(input=long_history(400)), None)  # the test window is 2,000 tokens
    assert refused.value.code == "context_length_exceeded"


def test_truncation_auto_drops_the_oldest_items_until_the_context_fits():
    items = long_history(400)
    turn = PIPE.prepare(request(input=items, truncation="auto"), None)
    kept = list(turn.conversation.items)
    assert len(turn.conversation.tokens) <= 2_000 and 0 < len(kept) < 400
    assert kept[-1].content[0].text == items[-1]["content"]  # the newest items stay


async def test_generate_false_prepares_the_state_without_asking_the_model():
    turn = PIPE.prepare(request(generate=False), None)
    events = await events_of(PIPE, turn)
    assert [e.type for e in events] == ["response.created", "response.completed"]
    assert turn.response.output == [] and turn.after is not None
