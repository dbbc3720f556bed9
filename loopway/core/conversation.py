"""A conversation: the header, the context items and their rendered tokens, append-only.

A turn's engine sees ``header + items``; a continuation appends the previous output and the new
input. Rendering is per item, so appending costs O(new items), and the rendered prefix is exactly
what a from-scratch render of the same history would give.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import msgspec

from loopway.protocol.items import FunctionCall, Item, settle
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


def _rendered(renderer: Renderer, items: Sequence[Item], offset: int) -> tuple[list[int], list[int]]:
    """Items' tokens, and where each item's tokens end (counting from ``offset``)."""
    tokens: list[int] = []
    ends: list[int] = []
    for item in items:
        tokens += renderer.item(settle(item))  # it lives on with the conversation: no tracked lists
        ends.append(offset + len(tokens))
    return tokens, ends


class Conversation:
    __slots__ = ("key", "items", "tokens", "ends", "header_length", "_calls")

    def __init__(
        self,
        key: bytes,
        items: AppendOnly[Item],
        tokens: TokenSequence,
        header_length: int,
        ends: AppendOnly[int],
        calls: dict[str, int] | None = None,
    ) -> None:
        self.key = key
        self.items = items
        self.tokens = tokens
        self.ends = ends  # ends[i]: where item i's tokens end, so a window can be cut without re-rendering
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
        body, ends = _rendered(renderer, items, len(header))
        return cls(
            header_key(instructions, tools),
            AppendOnly(list(items)),
            TokenSequence.of(header + body),
            len(header),
            AppendOnly(array("q", ends)),
        )

    def append(self, renderer: Renderer, items: Sequence[Item]) -> Conversation:
        if not items:
            return self
        extended = self.items.extend(items)
        if self.items.shares_buffer(extended):
            calls = self._calls
        else:  # a fork copied the buffer: index the copied prefix for this branch alone
            calls = _index_calls({}, self.items.to_list(), 0)
        _index_calls(calls, items, len(self.items))
        body, ends = _rendered(renderer, items, len(self.tokens))
        return Conversation(self.key, extended, self.tokens.extend(body), self.header_length, self.ends.extend(ends), calls)

    def suffix(self, start: int) -> Conversation:
        """The same header with only items ``start:`` (truncation), from the tokens already rendered."""
        if start == 0:
            return self
        items = self.items.to_list(start)
        cut = self.ends[start - 1]
        tokens = self.tokens.tail(0)
        body_ends = [end - cut + self.header_length for end in self.ends.to_list(start)]
        return Conversation(
            self.key,
            AppendOnly(items),
            TokenSequence.of(tokens[: self.header_length] + tokens[cut:]),
            self.header_length,
            AppendOnly(array("q", body_ends)),
        )

    def item_tokens(self, index: int) -> int:
        """How many tokens item ``index`` renders to."""
        return self.ends[index] - (self.ends[index - 1] if index else self.header_length)

    def rebase(self, renderer: Renderer, instructions: str | None, tools: ToolSet) -> Conversation:
        """The same items under a new header: reused when the header is unchanged, else re-rendered."""
        if header_key(instructions, tools) == self.key:
            return self
        return Conversation.start(renderer, instructions, tools, self.items.to_list())
