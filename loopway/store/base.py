"""The store interface, in parts: responses, the item index, background claims, conversations.

Records hold JSON bytes as they go on the wire, so a store never needs the wire types and a read
is one decode. ``input_items`` are the items this response added; the full context of a chained
response is assembled by walking ``previous_response_id`` (``core.records.history``). Every stored item is
indexed by id per tenant, so an ``item_reference`` can name any item the tenant has stored, as
OpenAI resolves them (``store=false`` items are never put, so never indexed). A claim says a
process is still running a background response, so that one that died (``kill -9``) leaves
something for its successor, or a peer replica, to end (``core.records.background``).

A conversation (OpenAI's Conversations API) is its metadata and an ordered list of items, each kept
as its JSON with its id. Appends are atomic and ordered: items appended together stay together,
and the order of two appends is the order the store received them. Conversations never expire.
"""

from __future__ import annotations

from typing import Protocol

import msgspec


class StoredResponse(msgspec.Struct, kw_only=True):
    id: str
    created_at: int
    previous_response_id: str | None
    response: bytes  # the Response object's JSON
    input_items: bytes  # JSON array of this response's own input items
    events: bytes | None = None  # JSON array of its events (background responses, for replay)
    tenant: str = ""  # whose response this is: other tenants never see it
    item_ids: list[str] = msgspec.field(default_factory=list)  # its input and output items, for item_reference
    replica: str | None = None  # the engine replica that served it: its continuation goes there too


class StoredConversation(msgspec.Struct, kw_only=True):
    id: str
    created_at: int
    tenant: str = ""
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    version: int = 0  # +1 with every append and every item deleted: a cached rendering is current while it matches


class StoredItem(msgspec.Struct, frozen=True):
    """One item of a conversation: its id, and the item as JSON."""

    id: str
    data: bytes


class StoreUnavailable(Exception):
    """The store cannot be reached; callers answer 503."""


class ResponseStore(Protocol):
    """Stored responses, by id."""

    async def put(self, record: StoredResponse) -> None: ...

    async def get(self, response_id: str) -> StoredResponse | None: ...

    async def delete(self, response_id: str) -> bool:
        """Delete a response and its items' entries in the item index."""
        ...


class ItemIndex(Protocol):
    """Which stored response holds an item: how ``item_reference`` finds any item a tenant stored."""

    async def find_item(self, tenant: str, item_id: str) -> str | None:
        """The stored response of ``tenant`` that holds item ``item_id`` (the latest to index it)."""
        ...


class BackgroundClaims(Protocol):
    """Which process still runs a background response (``core.records.background``)."""

    async def claim(self, response_id: str, until: float) -> None:
        """A background run is alive until ``until`` (epoch seconds); its owner renews the claim."""
        ...

    async def release(self, response_id: str) -> None: ...

    async def orphans(self, now: float) -> list[str]:
        """Runs whose claim has expired: their process died without finishing them."""
        ...


class ConversationStore(Protocol):
    """Conversations: their metadata, and their items in order."""

    async def put_conversation(self, conversation: StoredConversation) -> None:
        """Create a conversation, or replace its metadata."""
        ...

    async def get_conversation(self, conversation_id: str) -> StoredConversation | None: ...

    async def delete_conversation(self, conversation_id: str) -> bool:
        """Delete a conversation and its items."""
        ...

    async def append_items(self, conversation_id: str, items: list[StoredItem]) -> int | None:
        """Add ``items`` at the end of the conversation, together and in order; returns its new version,
        or None (and adds nothing) when there is no such conversation, as after a delete."""
        ...

    async def conversation_items(
        self, conversation_id: str, *, after: str | None = None, limit: int | None = None, descending: bool = False
    ) -> list[StoredItem]:
        """Items in order (newest first when ``descending``), those after item ``after`` in that order
        (none if it is not there), at most ``limit``."""
        ...

    async def conversation_item(self, conversation_id: str, item_id: str) -> StoredItem | None: ...

    async def delete_item(self, conversation_id: str, item_id: str) -> bool:
        """Delete one item (and move the conversation's version on)."""
        ...


class Reachable(Protocol):
    """The store as a connection: whether it answers now, closing it, and what it is."""

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` if the store cannot be reached now."""
        ...

    async def aclose(self) -> None: ...

    def describe(self) -> str: ...


class Store(ResponseStore, ItemIndex, BackgroundClaims, ConversationStore, Reachable, Protocol):
    """What every backend (memory, SQLite, Redis) implements; each part of loopway takes only the
    protocol it uses, so a new backend's contract reads part by part."""


def page(items: list[StoredItem], after: str | None, limit: int | None, descending: bool) -> list[StoredItem]:
    """A page of an ordered list, for a store that holds it whole (memory, and Redis's ids)."""
    ordered = list(reversed(items)) if descending else items
    if after is not None:
        position = next((i for i, item in enumerate(ordered) if item.id == after), None)
        ordered = [] if position is None else ordered[position + 1 :]
    return ordered if limit is None else ordered[:limit]
