"""An in-process store (``--store memory``): fast, and gone when the process ends."""

from __future__ import annotations

from loopway.store.base import StoredResponse


class MemoryStore:
    def __init__(self) -> None:
        self._records: dict[str, StoredResponse] = {}
        self._items: dict[tuple[str, str], str] = {}  # (tenant, item id) -> response id
        self._claims: dict[str, float] = {}

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

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        self._records.clear()

    def describe(self) -> str:
        return "memory (responses are lost when the server stops)"
