"""A conversation: the header, the context items and their rendered tokens, append-only.

A turn's engine sees ``header + items``; a continuation appends the previous output and the new
input. Rendering is per item, so appending costs O(new items), and the rendered prefix is exactly
what a from-scratch render of the same history would give.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from loopway.protocol.items import FunctionCall, Item
from loopway.protocol.tools import ToolSet
from loopway.tokens.render import Renderer
from loopway.tokens.sequence import AppendOnly, TokenSequence


def header_key(instructions: str | None, tools: ToolSet) -> bytes:
    """What the rendered header depends on: a continuation may reuse tokens only if it matches."""
    return msgspec.json.encode([instructions, tools.echo])


def _index_calls(calls: dict[str, int], items: Sequence[Item], offset: int) -> dict[str, int]:
    for i, item in enumerate(items):
        if isinstance(item, FunctionCall):
            calls[item.call_id] = offset + i
    return calls


class Conversation:
    __slots__ = ("key", "items", "tokens", "header_length", "_calls")

    def __init__(
        self,
        key: bytes,
        items: AppendOnly[Item],
        tokens: TokenSequence,
        header_length: int,
        calls: dict[str, int] | None = None,
    ) -> None:
        self.key = key
        self.items = items
        self.tokens = tokens
        self.header_length = header_length
        # call_id -> index of its function_call; shared along with the items buffer, so an entry
        # counts only if its index lies inside this view.
        self._calls = calls if calls is not None else _index_calls({}, items.to_list(), 0)

    def has_call(self, call_id: str) -> bool:
        index = self._calls.get(call_id)
        return index is not None and index < len(self.items)

    @classmethod
    def start(cls, renderer: Renderer, instructions: str | None, tools: ToolSet, items: Sequence[Item] = ()) -> Conversation:
        header = renderer.header(instructions, tools)
        tokens = TokenSequence.of(header + renderer.items(list(items)))
        return cls(header_key(instructions, tools), AppendOnly(list(items)), tokens, len(header))

    def append(self, renderer: Renderer, items: Sequence[Item]) -> Conversation:
        if not items:
            return self
        extended = self.items.extend(items)
        if self.items.shares_buffer(extended):
            calls = self._calls
        else:  # a fork copied the buffer: index the copied prefix for this branch alone
            calls = _index_calls({}, self.items.to_list(), 0)
        _index_calls(calls, items, len(self.items))
        return Conversation(self.key, extended, self.tokens.extend(renderer.items(list(items))), self.header_length, calls)

    def rebase(self, renderer: Renderer, instructions: str | None, tools: ToolSet) -> Conversation:
        """The same items under a new header: reused when the header is unchanged, else re-rendered."""
        if header_key(instructions, tools) == self.key:
            return self
        return Conversation.start(renderer, instructions, tools, self.items.to_list())
