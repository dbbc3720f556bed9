"""The event assembler: exact order, sequence numbers from 0, snapshots, schema-valid events."""

from __future__ import annotations

import msgspec
import pytest

from loopway.core.turn.assembler import AssemblerStateError, EventAssembler, State
from loopway.engines.base import Finish, ReasoningDelta, TextDelta, ToolCallDelta
from loopway.protocol.events import encode_event
from loopway.protocol.items import Message
from loopway.protocol.response import Response
from tests.openapi import validate_event


def run(*deltas) -> list[dict]:
    assembler = EventAssembler(Response(id="resp_1", created_at=1, status="in_progress", model="m"))
    events = assembler.opening()
    for delta in deltas:
        events += assembler.feed(delta)
    return [msgspec.json.decode(encode_event(e)) for e in events]


def finish(reason="stop", out=3):
    return Finish(reason=reason, input_tokens=10, cached_tokens=4, output_tokens=out)


def test_text_sequence():
    events = run(TextDelta("Hel"), TextDelta("lo"), finish())
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[6]["text"] == "Hello"
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == "Hello" and final["status"] == "completed"
    assert final["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 6},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 13,
    }
    for event in events:
        validate_event(event)


def test_earlier_events_are_snapshots():
    events = run(TextDelta("x"), finish())
    assert events[0]["response"]["output"] == [] and events[0]["response"]["status"] == "in_progress"
    assert events[2]["item"]["content"] == [] and events[2]["item"]["status"] == "in_progress"


def test_parallel_function_calls():
    events = run(
        ToolCallDelta(0, '{"a":', "call_1", "f"),
        ToolCallDelta(0, "1}"),
        ToolCallDelta(1, "{}", "call_2", "g"),
        finish("tool_calls"),
    )
    types = [e["type"] for e in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    calls = events[-1]["response"]["output"]
    assert [(c["call_id"], c["name"], c["arguments"]) for c in calls] == [("call_1", "f", '{"a":1}'), ("call_2", "g", "{}")]
    assert events[2]["output_index"] == 0 and events[7]["output_index"] == 1
    for event in events:
        validate_event(event)


def test_truncation_is_incomplete_with_reason():
    events = run(TextDelta("partial"), finish("length"))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"
    for event in events:
        validate_event(event)


def test_failure_is_a_failed_response():
    assembler = EventAssembler(Response(id="resp_1", created_at=1, status="in_progress", model="m"))
    events = assembler.opening() + assembler.feed(TextDelta("x")) + assembler.fail("server_error", "boom")
    decoded = [msgspec.json.decode(encode_event(e)) for e in events]
    assert decoded[-1]["type"] == "response.failed"
    assert decoded[-1]["response"]["error"] == {"code": "server_error", "message": "boom"}
    for event in decoded:
        validate_event(event)


def test_reasoning_then_its_summary_then_the_answer():
    events = run(
        ReasoningDelta("Think"),
        ReasoningDelta("ing."),
        ReasoningDelta("In short.", summary=True),
        TextDelta("Answer"),
        Finish(reason="stop", input_tokens=10, cached_tokens=0, output_tokens=8, reasoning_tokens=5),
    )
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    for event in events:
        validate_event(event)
    reasoning, answer = events[-1]["response"]["output"]
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Thinking."}]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "In short."}]
    assert events[2]["item"]["summary"] == [] and "content" not in events[2]["item"]  # added: empty
    assert answer["content"][0]["text"] == "Answer"
    assert events[-1]["response"]["usage"]["output_tokens_details"]["reasoning_tokens"] == 5


def test_a_seal_gives_the_finished_reasoning_item_its_encrypted_content():
    assembler = EventAssembler(Response(id="resp_1", created_at=1, status="in_progress", model="m"))
    assembler.seal = lambda item: f"sealed:{item.content[0].text}"
    events = assembler.opening() + assembler.feed(ReasoningDelta("Why")) + assembler.feed(TextDelta("x"))
    done = [e for e in events if e.type == "response.output_item.done"][0]
    assert done.item.encrypted_content == "sealed:Why"


def test_input_outside_an_open_response_is_refused_but_notices_ride_on_after_it():
    """h11-style states: no delta before the opening or after the terminal event; a store error
    and a pending steer are numbered after the terminal event, on the same sequence."""
    assembler = EventAssembler(Response(id="resp_1", created_at=1, status="in_progress", model="m"))
    with pytest.raises(AssemblerStateError):
        assembler.feed(TextDelta("early"))
    assert assembler.state is State.IDLE
    events = assembler.opening() + assembler.feed(TextDelta("hi")) + assembler.finish(finish())
    assert assembler.state is State.FINISHED
    for late in (
        lambda: assembler.feed(TextDelta("late")),
        lambda: assembler.finish(finish()),
        lambda: assembler.fail("server_error", "late"),
        lambda: assembler.add_item(Message(id="msg_1", role="assistant", content=[])),
        lambda: assembler.opening(),
    ):
        with pytest.raises(AssemblerStateError):
            late()
    notices = [assembler.stream_error("store_unavailable", "no store", None), assembler.steer_pending("steer_1", [])]
    assert [e.sequence_number for e in events + notices] == list(range(len(events) + 2))
    assert assembler.response.output[0].content[0].text == "hi"  # nothing after the end changed the response
