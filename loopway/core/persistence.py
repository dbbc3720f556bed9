"""Write-behind persistence with read-your-writes.

WebSocket turns send ``response.completed`` first and persist after, so the next turn never waits
on bookkeeping. A record is readable from the moment it is submitted: reads look at the pending
writes before the store. The log owns its write tasks; ``drain`` waits for them at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from loopway.protocol.errors import ApiError
from loopway.store.base import Store, StoredResponse, StoreUnavailable

log = logging.getLogger("loopway.persistence")


@contextmanager
def _answering_503() -> Iterator[None]:
    """A store that cannot be reached is the client's 503, with a hint to retry."""
    try:
        yield
    except StoreUnavailable as exc:
        log.warning("store unavailable: %s", exc)
        raise ApiError(
            503,
            "The response store is unavailable right now; retry shortly, or use store=false.",
            type="server_error",
            code="store_unavailable",
            headers={"retry-after": "1"},
        ) from None


class ResponseLog:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: dict[str, StoredResponse] = {}
        self._writes: dict[str, asyncio.Task[None]] = {}
        self.on_persisted: Callable[[float], None] = lambda seconds: None  # store write times, for metrics

    async def put(self, record: StoredResponse) -> None:
        """Write now and return once the store has it (durable for SQLite)."""
        self._pending[record.id] = record
        try:
            with _answering_503():
                await self._timed_put(record)
        finally:
            if self._pending.get(record.id) is record:
                del self._pending[record.id]

    async def check(self) -> None:
        """Refuse work that needs the store while it is down (503), before any of it is done."""
        with _answering_503():
            await self.store.ping()

    def put_behind(self, record: StoredResponse) -> None:
        """Write in the background; reads see the record immediately."""
        previous = self._writes.get(record.id)
        self._pending[record.id] = record
        self._writes[record.id] = asyncio.create_task(self._write(record, previous))

    async def _write(self, record: StoredResponse, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.shield(previous)  # writes of one id land in order
        try:
            await self._timed_put(record)
        except Exception:
            log.exception("persisting %s failed", record.id)
        finally:
            if self._pending.get(record.id) is record:
                del self._pending[record.id]
            if self._writes.get(record.id) is asyncio.current_task():
                del self._writes[record.id]

    async def _timed_put(self, record: StoredResponse) -> None:
        start = time.perf_counter()
        await self.store.put(record)
        self.on_persisted(time.perf_counter() - start)

    async def get(self, response_id: str, tenant: str | None = None) -> StoredResponse | None:
        """The record, if it exists and (when ``tenant`` is given) belongs to that tenant."""
        with _answering_503():
            record = self._pending.get(response_id) or await self.store.get(response_id)
        if record is None or (tenant is not None and record.tenant != tenant):
            return None
        return record

    async def delete(self, response_id: str, tenant: str | None = None) -> bool:
        if tenant is not None and await self.get(response_id, tenant) is None:
            return False
        write = self._writes.get(response_id)
        if write is not None:
            await asyncio.shield(write)
        self._pending.pop(response_id, None)
        with _answering_503():
            return await self.store.delete(response_id)

    async def drain(self) -> None:
        while self._writes:
            await asyncio.gather(*list(self._writes.values()), return_exceptions=True)
