"""Conversation objects (OpenAI's Conversations API): durable, per tenant, items in order.

Not to be confused with ``core.context.conversation``, a turn's rendered context. A conversation here is
what a client creates with ``POST /v1/conversations`` and names in ``responses.create``
(``conversation``): its items are the context of the next response, and a finished response's input
and output are appended to it, in the order the responses finished (docs/wire.md).

Another tenant's conversation does not exist for you: every read checks the tenant and answers 404.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from loopway.core.ops import offload
from loopway.core.records.persistence import store_unavailable
from loopway.protocol import conversation_objects as wire
from loopway.protocol import ids
from loopway.protocol.errors import ApiError, not_found
from loopway.protocol.items import Item, items_from_json
from loopway.store.base import ConversationStore, StoredConversation, StoredItem, StoreUnavailable

CONVERSATION_ID = re.compile(r"conv_[A-Za-z0-9_-]{1,128}")


def conversation_not_found(conversation_id: str, param: str = "conversation_id") -> ApiError:
    return not_found(f"Conversation with id '{conversation_id}' not found.", param=param)


def item_not_found(item_id: str, param: str = "item_id") -> ApiError:
    return not_found(f"Item with id '{item_id}' not found.", param=param)


@contextmanager
def _answering_503() -> Iterator[None]:
    try:
        yield
    except StoreUnavailable:
        raise store_unavailable() from None


class Conversations:
    def __init__(self, store: ConversationStore) -> None:
        self.store = store

    async def create(self, raw: Any, tenant: str) -> dict[str, Any]:
        items, metadata = wire.parse_create(raw)
        conversation = StoredConversation(
            id=ids.new_id(wire.CONVERSATION), created_at=int(time.time()), tenant=tenant, metadata=metadata
        )
        with _answering_503():
            await self.store.put_conversation(conversation)
        if items:
            await self._append(conversation.id, _stored(items), "conversation_id")
        return _object(conversation)

    async def get(self, conversation_id: str, tenant: str, param: str = "conversation_id") -> StoredConversation:
        if not CONVERSATION_ID.fullmatch(conversation_id):  # never a store key built from arbitrary text
            raise conversation_not_found(conversation_id[:80], param)
        with _answering_503():
            conversation = await self.store.get_conversation(conversation_id)
        if conversation is None or conversation.tenant != tenant:
            raise conversation_not_found(conversation_id, param)
        return conversation

    async def retrieve(self, conversation_id: str, tenant: str) -> dict[str, Any]:
        return _object(await self.get(conversation_id, tenant))

    async def update(self, conversation_id: str, raw: Any, tenant: str) -> dict[str, Any]:
        metadata = wire.parse_update(raw)
        conversation = msgspec.structs.replace(await self.get(conversation_id, tenant), metadata=metadata)
        with _answering_503():
            await self.store.put_conversation(conversation)
        return _object(conversation)

    async def delete(self, conversation_id: str, tenant: str) -> dict[str, Any]:
        await self.get(conversation_id, tenant)
        with _answering_503():
            await self.store.delete_conversation(conversation_id)
        return wire.deleted(conversation_id)

    # Items ----------------------------------------------------------------------------------------

    async def add_items(self, conversation_id: str, raw: Any, tenant: str) -> dict[str, Any]:
        items = wire.parse_add(raw)
        await self.get(conversation_id, tenant)
        stored = _stored(items)
        await self._append(conversation_id, stored, "conversation_id")
        return wire.item_list([msgspec.json.decode(item.data) for item in stored], has_more=False)

    async def append(self, conversation_id: str, items: list[Item], param: str = "conversation_id") -> int:
        """Add a turn's items; the conversation's version after (``StoredConversation.version``). The
        turn checked the tenant when it read the conversation; one deleted since is a 404."""
        return await self._append(conversation_id, _stored(items), param)

    async def _append(self, conversation_id: str, stored: list[StoredItem], param: str) -> int:
        with _answering_503():
            version = await self.store.append_items(conversation_id, stored)
        if version is None:  # the store refuses: the conversation was deleted meanwhile
            raise conversation_not_found(conversation_id, param)
        return version

    async def list_items(
        self, conversation_id: str, tenant: str, *, limit: int, order: str, after: str | None
    ) -> dict[str, Any]:
        await self.get(conversation_id, tenant)
        with _answering_503():
            if after is not None and await self.store.conversation_item(conversation_id, after) is None:
                raise item_not_found(after, param="after")
            found = await self.store.conversation_items(
                conversation_id, after=after, limit=limit + 1, descending=order == "desc"
            )
        return wire.item_list([msgspec.json.decode(item.data) for item in found[:limit]], has_more=len(found) > limit)

    async def item(self, conversation_id: str, item_id: str, tenant: str) -> dict[str, Any]:
        await self.get(conversation_id, tenant)
        with _answering_503():
            found = await self.store.conversation_item(conversation_id, item_id)
        if found is None:
            raise item_not_found(item_id)
        return msgspec.json.decode(found.data)

    async def delete_item(self, conversation_id: str, item_id: str, tenant: str) -> dict[str, Any]:
        """OpenAI answers an item's deletion with the conversation it was deleted from."""
        conversation = await self.get(conversation_id, tenant)
        with _answering_503():
            if not await self.store.delete_item(conversation_id, item_id):
                raise item_not_found(item_id)
        return _object(conversation)

    async def items(self, conversation_id: str) -> tuple[list[Item], int]:
        """Every item of the conversation in order: a response's context (the caller checked the
        tenant), and the bytes of JSON it was read from; a large one is decoded in a worker thread."""
        with _answering_503():
            found = await self.store.conversation_items(conversation_id)
        data = b"[" + b",".join(item.data for item in found) + b"]"
        return await offload.call(len(data) > offload.LARGE_CONTEXT_BYTES, lambda: items_from_json(data)), len(data)


def _stored(items: list[Item]) -> list[StoredItem]:
    return [StoredItem(*wire.item_record(item)) for item in items]


def _object(conversation: StoredConversation) -> dict[str, Any]:
    return wire.conversation_object(conversation.id, conversation.created_at, conversation.metadata)
