"""Rebuilding a conversation from the store: the chain, deleted ancestors, tenants, work in progress."""

from __future__ import annotations

import pytest

from loopway.core.records import history
from loopway.core.records.persistence import ResponseLog, record_of
from loopway.core.turn.turn import Turn, TurnOrigin
from loopway.protocol.errors import ApiError
from loopway.protocol.items import Message
from loopway.store.memory import MemoryStore
from tests.core.turns import finished, pipeline, request, user

PIPE = pipeline()


async def chained(log: ResponseLog, texts: list[str], tenant: str = "") -> list[Turn]:
    """A stored conversation: one user message a turn, each continuing the last."""
    turns: list[Turn] = []
    for text in texts:
        parent = await history.load_parent(log, turns[-1].id, tenant) if turns else None
        previous = turns[-1].id if turns else None
        turn = await finished(
            PIPE,
            request(websocket=False, store=True, input=[user(text)], previous_response_id=previous),
            parent,
            TurnOrigin(tenant=tenant),
        )
        await log.put(record_of(turn))
        turns.append(turn)
    return turns


def texts(items: list) -> list[str]:
    return [part.text for item in items if isinstance(item, Message) for part in item.content]


async def test_a_parent_from_the_store_is_every_input_and_output_of_its_chain_in_order():
    log = ResponseLog(MemoryStore())
    turns = await chained(log, ["one", "two", "three"])
    parent = await history.load_parent(log, turns[-1].id, "")
    assert parent.response.id == turns[-1].id
    assert texts(parent.items)[::2] == ["one", "two", "three"]  # each followed by the model's answer
    assert len(parent.items) == 6


async def test_input_items_are_the_context_the_response_was_given_without_its_own_output():
    log = ResponseLog(MemoryStore())
    turns = await chained(log, ["one", "two"])
    record = await log.get(turns[-1].id)
    assert record is not None
    assert texts(await history.input_items(log, record))[::2] == ["one", "two"]
    assert len(await history.input_items(log, record)) == 3


async def test_a_deleted_ancestor_starts_the_context_after_it():
    log = ResponseLog(MemoryStore())
    turns = await chained(log, ["one", "two", "three"])
    await log.delete(turns[0].id)
    parent = await history.load_parent(log, turns[-1].id, "")
    assert texts(parent.items)[::2] == ["two", "three"]


async def test_another_tenants_response_is_previous_response_not_found():
    log = ResponseLog(MemoryStore())
    turns = await chained(log, ["one"], tenant="acme")
    with pytest.raises(ApiError) as missing:
        await history.load_parent(log, turns[0].id, "intruder")
    assert missing.value.code == "previous_response_not_found"


async def test_a_response_still_running_cannot_be_continued():
    log = ResponseLog(MemoryStore())
    turn = PIPE.prepare(request(websocket=False, store=True, background=True), None)
    turn.assembler.queued()
    await log.put(record_of(turn))
    with pytest.raises(ApiError) as busy:
        await history.load_parent(log, turn.id, "")
    assert busy.value.code == "previous_response_in_progress"
