"""What a turn continues: a previous response (or a conversation object's items) and its context.

Where it comes from is the caller's business (a connection's cache, the recent conversations, the
store: ``core.records``); the context builder only reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec

from loopway.core.context.conversation import Conversation
from loopway.mcp.sessions import McpSessions
from loopway.protocol.items import Item
from loopway.protocol.response import Response


class Parent(msgspec.Struct, kw_only=True):
    """What a continuation continues from: the previous response and its whole context.

    From a connection cache it comes rendered (``conversation``); from the store, as raw items.
    """

    response: Response | None = None  # None for a conversation's items (``core.records.conversation_store``)
    items: list[Item] | None = None  # previous input context + previous output, in order
    conversation: Conversation | None = None
    replica: str | None = None  # the engine replica that served it, where its prefix is cached
    stored_bytes: int = 0  # the JSON its raw items were read from: how large rendering them is

    def context(self) -> Sequence[Item]:
        if self.conversation is not None:
            return self.conversation.items
        return self.items or []


class ParentCache(Protocol):
    """Where a continuation looks before the store: a WebSocket connection's cache."""

    session_id: str  # the connection's id: an engine with several replicas keeps its turns on one
    mcp_sessions: McpSessions | None  # its MCP sessions, kept open between its turns

    def parent(self, response_id: str) -> Parent | None: ...

    def conversation(self, conversation_id: str, version: int) -> Conversation | None:
        """A conversation object's rendering, if this cache holds it at ``version``."""
        ...
