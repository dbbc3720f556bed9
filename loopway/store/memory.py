"""An in-process store (``--store memory``): fast, and gone when the process ends."""

from __future__ import annotations

from loopway.store.base import StoredResponse


class MemoryStore:
    def __init__(self) -> None:
        self._records: dict[str, StoredResponse] = {}
        self._claims: dict[str, float] = {}

    async def put(self, record: StoredResponse) -> None:
        self._records[record.id] = record

    async def get(self, response_id: str) -> StoredResponse | None:
        return self._records.get(response_id)

    async def delete(self, response_id: str) -> bool:
        return self._records.pop(response_id, None) is not None

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
