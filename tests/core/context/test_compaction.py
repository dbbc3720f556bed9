"""Compaction: sealed context round-trips, tampering is refused, a compaction replaces what precedes it."""

from __future__ import annotations

import pytest

from loopway.core.context import compaction
from loopway.core.context.sealing import Sealer
from loopway.protocol.errors import ApiError
from loopway.protocol.items import Compaction, FunctionCall, FunctionCallOutput, Message

SEALER = Sealer(b"k" * 32)
HISTORY = [
    Message(role="user", content="read src/app.py"),
    FunctionCall(call_id="c1", name="read_file", arguments='{"path":"src/app.py"}'),
    FunctionCallOutput(call_id="c1", output="x = 1\n" * 100),
    Message(role="assistant", content="Done."),
]


def test_compact_keeps_user_messages_and_digests_tools():
    compacted = compaction.compact(HISTORY)
    assert compacted[-1] == HISTORY[0]
    assert "read_file" in compacted[0].content and "600 characters" in compacted[0].content


def test_effective_context_expands_the_last_compaction_and_drops_what_precedes_it():
    sealed = compaction.seal_items(SEALER, compaction.compact(HISTORY))
    after = Message(role="user", content="next")
    context = compaction.effective_context(SEALER, [Message(role="user", content="old"), sealed, after])
    assert context == [*compaction.compact(HISTORY), after]


def test_tampered_or_foreign_tokens_are_refused():
    sealed = compaction.seal_items(SEALER, HISTORY)
    forged = Compaction(encrypted_content=sealed.encrypted_content[:-4] + "AAAA")
    with pytest.raises(ApiError) as info:
        compaction.effective_context(SEALER, [forged])
    assert info.value.status == 400 and info.value.param == "input[0].encrypted_content"
    with pytest.raises(ApiError):
        compaction.effective_context(Sealer(b"other" * 8), [sealed])
    with pytest.raises(ApiError):
        compaction.effective_context(SEALER, [Compaction(encrypted_content="%%%")])
