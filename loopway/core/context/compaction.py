"""Compaction: shrink a context into a summary that a ``compaction`` item carries.

A compaction item replaces everything before it: the effective context of any item list is its
last compaction expanded (the sealed, compacted items) followed by the items after it. The same
rule serves ``POST /v1/responses/compact`` (whose output a client sends back as input) and
``context_management`` compaction inside a response (whose output carries the item).

loopway compacts deterministically rather than by asking the model: the user's messages are kept
verbatim (the last few) and everything else becomes one digest message naming each tool call
and the size of its result. Engines see a shorter, faithful context; nothing is invented.
"""

from __future__ import annotations

from collections.abc import Sequence

from loopway.core.context.sealing import Sealer
from loopway.protocol import ids
from loopway.protocol.items import (
    ENCODER,
    Compaction,
    FunctionCall,
    FunctionCallOutput,
    Item,
    McpCall,
    Message,
    items_from_json,
    text_of,
)

KEEP_USER_MESSAGES = 4
KEEP_USER_CHARS = 4_000  # a kept user message longer than this keeps its head and tail
_PREVIEW = 160


def _digest(items: Sequence[Item]) -> str:
    lines = ["Summary of the earlier conversation (compacted by loopway):"]
    outputs = {i.call_id: i for i in items if isinstance(i, FunctionCallOutput)}
    for item in items:
        if isinstance(item, FunctionCall):
            result = outputs.get(item.call_id)
            size = len(text_of(result.output)) if result else 0
            lines.append(f"- called {item.name}({item.arguments[:_PREVIEW]}) -> {size} characters of output")
        elif isinstance(item, McpCall):
            outcome = f"{len(item.output or '')} characters of output" if item.error is None else "an error"
            lines.append(f"- called {item.server_label}.{item.name}({item.arguments[:_PREVIEW]}) -> {outcome}")
        elif isinstance(item, Message) and item.role == "assistant":
            lines.append(f"- assistant said: {text_of(item.content)[:_PREVIEW]}")
    return "\n".join(lines)


def _shortened(message: Message) -> Message:
    text = text_of(message.content)
    if len(text) <= KEEP_USER_CHARS:
        return message
    half = KEEP_USER_CHARS // 2
    return Message(
        role="user",
        content=f"{text[:half]}\n[... {len(text) - 2 * half} characters compacted ...]\n{text[-half:]}",
        id=message.id,
    )


def compact(items: Sequence[Item]) -> list[Item]:
    """The compacted form of a context: a digest, then the last few user messages (long ones shortened)."""
    users = [i for i in items if isinstance(i, Message) and i.role == "user"][-KEEP_USER_MESSAGES:]
    if not items:
        return []
    return [Message(role="developer", content=_digest(items)), *map(_shortened, users)]


def seal_items(sealer: Sealer, items: Sequence[Item]) -> Compaction:
    return Compaction(encrypted_content=sealer.seal(ENCODER.encode(list(items))), id=ids.new_id(ids.COMPACTION))


def last_compaction(items: Sequence[Item]) -> int:
    for index in range(len(items) - 1, -1, -1):
        if isinstance(items[index], Compaction):
            return index
    return -1


def effective_context(sealer: Sealer, items: Sequence[Item], param: str = "input") -> list[Item]:
    """Items as the model sees them: from the last compaction on, with that compaction expanded."""
    index = last_compaction(items)
    if index < 0:
        return list(items)
    sealed = items[index]
    assert isinstance(sealed, Compaction)
    restored = items_from_json(sealer.unseal(sealed.encrypted_content, param=f"{param}[{index}].encrypted_content"))
    return [*restored, *items[index + 1 :]]
