"""An in-process store (``--store memory``): fast, and gone when the process ends."""

from __future__ import annotations

import msgspec

from loopway.store.base import StoredConversation, StoredItem, StoredResponse, page


class MemoryStore:
    def __init__(self) -> None:
        self._records: dict[str, StoredResponse] = {}
        self._items: dict[tuple[str, str], str] = {}  # (tenant, item id) -> response id
        self._claims: dict[str, float] = {}
        self._conversations: dict[str, StoredConversation] = {}
        self._conversation_items: dict[str, list[StoredItem]] = {}

    async def put(self, record: StoredResponse) -> None:
        self._records[record.id] = record
        for item_id in record.item_ids:
            self._items[(record.tenant, item_id)] = record.id

    async def get(self, response_id: str) -> StoredResponse | None:
        return self._records.get(response_id)

    async def delete(self, response_id: str) -> bool:
        record = self._records.pop(response_id, None)
        if record is None:
            return False
        for item_id in record.item_ids:
            if self._items.get((record.tenant, item_id)) == response_id:
                del self._items[(record.tenant, item_id)]
        return True

    async def find_item(self, tenant: str, item_id: str) -> str | None:
        return self._items.get((tenant, item_id))

    async def claim(self, response_id: str, until: float) -> None:
        self._claims[response_id] = until

    async def release(self, response_id: str) -> None:
        self._claims.pop(response_id, None)

    async def orphans(self, now: float) -> list[str]:
        return [response_id for response_id, until in self._claims.items() if until < now]

    async def put_conversation(self, conversation: StoredConversation) -> None:
        existing = self._conversations.get(conversation.id)
        if existing is not None:  # only the metadata of a conversation changes
            conversation = msgspec.structs.replace(existing, metadata=conversation.metadata)
        else:
            conversation = msgspec.structs.replace(conversation, version=0)
        self._conversations[conversation.id] = conversation
        self._conversation_items.setdefault(conversation.id, [])

    async def get_conversation(self, conversation_id: str) -> StoredConversation | None:
        found = self._conversations.get(conversation_id)
        return msgspec.structs.replace(found) if found is not None else None  # a copy, as other stores return

    async def delete_conversation(self, conversation_id: str) -> bool:
        self._conversation_items.pop(conversation_id, None)
        return self._conversations.pop(conversation_id, None) is not None

    async def append_items(self, conversation_id: str, items: list[StoredItem]) -> int | None:
        if conversation_id not in self._conversations:
            return None
        self._conversation_items[conversation_id].extend(items)
        return self._bump(conversation_id)

    def _bump(self, conversation_id: str) -> int:
        conversation = self._conversations[conversation_id]
        conversation.version += 1
        return conversation.version

    async def conversation_items(
        self, conversation_id: str, *, after: str | None = None, limit: int | None = None, descending: bool = False
    ) -> list[StoredItem]:
        return page(self._conversation_items.get(conversation_id, []), after, limit, descending)

    async def conversation_item(self, conversation_id: str, item_id: str) -> StoredItem | None:
        return next((i for i in self._conversation_items.get(conversation_id, []) if i.id == item_id), None)

    async def delete_item(self, conversation_id: str, item_id: str) -> bool:
        items = self._conversation_items.get(conversation_id, [])
        kept = [i for i in items if i.id != item_id]
        self._conversation_items[conversation_id] = kept
        if len(kept) == len(items):
            return False
        self._bump(conversation_id)
        return True

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        self._records.clear()

    def describe(self) -> str:
        return "memory (responses are lost when the server stops)"
