"""A stored response's replay is the same event sequence its live stream was, reasoning included."""

from __future__ import annotations

import json

import pytest

from loopway.core.turn.replay import rebuild_events
from loopway.protocol.events import encode_event
from tests.core.turns import READ_FILE, events_of, pipeline, request
from tests.openapi import validate_event

PIPE = pipeline()


@pytest.mark.parametrize(
    "fields",
    [
        {"input": "Say hello"},
        {"input": "Please read src/app.py", "tools": [READ_FILE]},
        {"input": "Please read src/app.py", "tools": [READ_FILE], "reasoning": {"effort": "low", "summary": "auto"}},
    ],
    ids=["text", "call", "reasoning"],
)
async def test_replay_matches_the_live_sequence(fields: dict):
    turn = PIPE.prepare(request(**fields), None)
    live = await events_of(PIPE, turn)
    replay = rebuild_events(turn.response)
    assert [e.type for e in replay] == [e.type for e in live]
    assert [e.sequence_number for e in replay] == list(range(len(replay)))
    for event in replay:
        validate_event(json.loads(encode_event(event)))
