"""A conversation: the header, the context items and their rendered tokens, append-only.

A turn's engine sees ``header + items``; a continuation appends the previous output and the new
input. Rendering is per item, so appending costs O(new items), and the rendered prefix is exactly
what a from-scratch render of the same history would give.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import msgspec

from loopway.protocol.items import FunctionCall, Item, McpApprovalRequest, McpCall, McpListTools, settle
from loopway.protocol.tools import ToolSet
from loopway.tokens.render import Renderer
from loopway.tokens.sequence import AppendOnly, TokenSequence


def header_key(instructions: str | None, tools: ToolSet) -> bytes:
    """What the rendered header depends on: a continuation may reuse tokens only if it matches."""
    return msgspec.json.encode([instructions, tools.echo])


def _index_calls(calls: dict[str, int], items: Sequence[Item], offset: int) -> dict[str, int]:
    """Where the items a later turn looks up are: function calls by ``call_id``, each MCP server's
    latest tool list by its label, MCP approval requests by id."""
    for i, item in enumerate(items):
        if isinstance(item, FunctionCall):
            calls[item.call_id] = offset + i
        elif isinstance(item, McpListTools) and item.error is None:
            calls[_LISTED + item.server_label] = offset + i
        elif isinstance(item, McpApprovalRequest) and item.id:
            calls[_APPROVAL + item.id] = offset + i
        elif isinstance(item, McpCall) and item.approval_request_id:
            calls[_APPROVED + item.approval_request_id] = offset + i
    return calls


_LISTED = "\x00mcp_list_tools:"  # keys no call_id can be
_APPROVAL = "\x00mcp_approval_request:"
_APPROVED = "\x00mcp_call approved by:"


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

    def mcp_tools_listed(self, server_label: str) -> McpListTools | None:
        """The latest successful ``mcp_list_tools`` of a server in this context (reused, not re-listed)."""
        found = self._lookup(_LISTED + server_label)
        return found if isinstance(found, McpListTools) else None

    def mcp_approval_request(self, request_id: str) -> McpApprovalRequest | None:
        found = self._lookup(_APPROVAL + request_id)
        return found if isinstance(found, McpApprovalRequest) else None

    def mcp_call_approved(self, request_id: str) -> bool:
        """Whether the approved call already ran (its ``mcp_call`` names the approval request)."""
        return self._lookup(_APPROVED + request_id) is not None

    def _lookup(self, key: str) -> Item | None:
        index = self._calls.get(key)
        if index is None:
            return None
        if index < len(self.items):
            return self.items[index]  # type: ignore[return-value]
        # A longer branch sharing this buffer indexed a later one: find this view's own, newest first.
        items = self.items.to_list()
        for i in range(len(items) - 1, -1, -1):
            if key in _index_calls({}, [items[i]], i):
                return items[i]
        return None

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
