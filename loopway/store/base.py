"""The store interface: put, get and delete stored responses, and claims on running background responses.

Records hold JSON bytes as they go on the wire, so a store never needs the wire types and a read
is one decode. ``input_items`` are the items this response added; the full context of a chained
response is assembled by walking ``previous_response_id`` (``core.history``). Every stored item is
indexed by id per tenant, so an ``item_reference`` can name any item the tenant has stored, as
OpenAI resolves them (``store=false`` items are never put, so never indexed). A claim says a
process is still running a background response, so that one that died (``kill -9``) leaves
something for its successor, or a peer replica, to end (``core.background``).
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


class StoreUnavailable(Exception):
    """The store cannot be reached; callers answer 503."""


class Store(Protocol):
    async def put(self, record: StoredResponse) -> None: ...

    async def get(self, response_id: str) -> StoredResponse | None: ...

    async def delete(self, response_id: str) -> bool:
        """Delete a response and its items' entries in the item index."""
        ...

    async def find_item(self, tenant: str, item_id: str) -> str | None:
        """The stored response of ``tenant`` that holds item ``item_id`` (the latest to index it)."""
        ...

    async def claim(self, response_id: str, until: float) -> None:
        """A background run is alive until ``until`` (epoch seconds); its owner renews the claim."""
        ...

    async def release(self, response_id: str) -> None: ...

    async def orphans(self, now: float) -> list[str]:
        """Runs whose claim has expired: their process died without finishing them."""
        ...

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` if the store cannot be reached now."""
        ...

    async def aclose(self) -> None: ...

    def describe(self) -> str: ...
