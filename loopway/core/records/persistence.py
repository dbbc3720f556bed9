"""Write-behind persistence with read-your-writes, and the store's health.

WebSocket turns send ``response.completed`` first and persist after, so the next turn never waits
on bookkeeping. A record is readable from the moment it is submitted: reads look at the pending
writes before the store. The log owns its write tasks; ``drain`` waits for them at shutdown.

Every store failure is one error, ``503 store_unavailable``: before any work when it is known
(``check``), or naming the response that was not saved when a write fails after generating. A
failed write marks the store unhealthy until a write succeeds again; while it is, ``check`` probes
(at most once a second) with a write as large as the one that failed, capped at 1 MiB, instead of
letting store=true requests generate for nothing, and ``/health`` says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from loopway.core.turn.turn import Turn
from loopway.protocol import response as wire
from loopway.protocol.errors import ApiError, unavailable
from loopway.protocol.events import encode_event
from loopway.protocol.items import ENCODER as ITEMS_ENCODER
from loopway.protocol.items import Item, ItemReference, item_id
from loopway.store.base import Store, StoredResponse, StoreUnavailable

log = logging.getLogger("loopway.persistence")

PROBE_ID = "loopway-health-probe"
PROBE_INTERVAL_S = 1.0
PROBE_MAX_BYTES = 1 << 20


def store_unavailable(detail: str = "") -> ApiError:
    return unavailable(
        f"The response store is unavailable right now{detail}; retry shortly, or use store=false.",
        code="store_unavailable",
        retry_after="1",
    )


def unsaved(response_id: str) -> ApiError:
    """The response was generated but could not be stored: the client must not count on it."""
    return store_unavailable(f": response '{response_id}' was not saved")


class ResponseLog:
    """The responses' side of the store, with what the turn path needs on top: writes behind the
    terminal event that stay readable while in flight, a 503 naming the response when a write fails,
    and a cheap probe of a failing store. It uses ``ResponseStore``, ``ItemIndex`` and ``Reachable``;
    ``store`` is the whole backend, handed on to the conversations and the background runs.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: dict[str, StoredResponse] = {}
        self._writes: dict[str, asyncio.Task[None]] = {}
        self.failing: str | None = None  # why the last write failed, until one succeeds
        self._failed_size = 0  # how large the write was that failed: the probe writes as much
        self._probed = 0.0
        self.on_persisted: Callable[[float], None] = lambda seconds: None  # store write times, for metrics

    async def put(self, record: StoredResponse) -> None:
        """Write now and return once the store has it (durable for SQLite); 503 naming it otherwise."""
        self._pending[record.id] = record
        try:
            await self._timed_put(record)
        except StoreUnavailable:
            raise unsaved(record.id) from None
        finally:
            if self._pending.get(record.id) is record:
                del self._pending[record.id]

    @contextmanager
    def _answering_503(self) -> Iterator[None]:
        """A store that cannot be reached is the client's 503, with a hint to retry; health remembers it."""
        try:
            yield
        except StoreUnavailable as exc:
            log.warning("store unavailable: %s", exc)
            self.failing = str(exc)
            raise store_unavailable() from None

    async def check(self) -> None:
        """Refuse work that needs the store while it is down (503), before any of it is done."""
        with self._answering_503():
            await self.store.ping()
            if self.failing is not None and time.monotonic() - self._probed >= PROBE_INTERVAL_S:
                self._probed = time.monotonic()
                await self._probe()
        if self.failing is not None:
            raise store_unavailable(f" (writes fail: {self.failing})")

    async def _probe(self) -> None:
        payload = b"0" * min(self._failed_size, PROBE_MAX_BYTES)
        probe = StoredResponse(id=PROBE_ID, created_at=0, previous_response_id=None, response=payload, input_items=b"[]")
        await self._timed_put(probe)
        await self.store.delete(PROBE_ID)

    async def health(self) -> dict[str, Any]:
        try:
            await self.check()
        except ApiError as err:
            return {"state": "unavailable", "detail": err.message}
        return {"state": "ok"}

    def put_behind(self, record: StoredResponse, on_unsaved: Callable[[ApiError], None] | None = None) -> None:
        """Write in the background; reads see the record immediately. A failed write is logged and
        reported to ``on_unsaved`` (the WebSocket session tells its client)."""
        previous = self._writes.get(record.id)
        self._pending[record.id] = record
        self._writes[record.id] = asyncio.create_task(self._write(record, previous, on_unsaved))

    async def _write(
        self,
        record: StoredResponse,
        previous: asyncio.Task[None] | None,
        on_unsaved: Callable[[ApiError], None] | None,
    ) -> None:
        if previous is not None:
            await asyncio.shield(previous)  # writes of one id land in order
        try:
            await self._timed_put(record)
        except Exception as exc:
            log.error("response %s was not saved: %s", record.id, exc)
            if on_unsaved is not None:
                on_unsaved(unsaved(record.id))
        finally:
            if self._pending.get(record.id) is record:
                del self._pending[record.id]
            if self._writes.get(record.id) is asyncio.current_task():
                del self._writes[record.id]

    async def _timed_put(self, record: StoredResponse) -> None:
        start = time.perf_counter()
        try:
            await self.store.put(record)
        except StoreUnavailable as exc:
            self.failing = str(exc)
            if record.id != PROBE_ID:
                self._failed_size = len(record.response) + len(record.input_items) + len(record.events or b"")
            raise
        self.failing = None
        self.on_persisted(time.perf_counter() - start)

    async def get(self, response_id: str, tenant: str | None = None) -> StoredResponse | None:
        """The record, if it exists and (when ``tenant`` is given) belongs to that tenant."""
        with self._answering_503():
            record = self._pending.get(response_id) or await self.store.get(response_id)
        if record is None or (tenant is not None and record.tenant != tenant):
            return None
        return record

    async def find_item(self, tenant: str, item_id: str) -> str | None:
        """The response holding a stored item (pending writes first: read-your-writes holds here too)."""
        for record in reversed(list(self._pending.values())):
            if record.tenant == tenant and item_id in record.item_ids:
                return record.id
        with self._answering_503():
            return await self.store.find_item(tenant, item_id)

    async def delete(self, response_id: str, tenant: str | None = None) -> bool:
        if tenant is not None and await self.get(response_id, tenant) is None:
            return False
        write = self._writes.get(response_id)
        if write is not None:
            await asyncio.shield(write)
        self._pending.pop(response_id, None)
        with self._answering_503():
            return await self.store.delete(response_id)

    async def drain(self) -> None:
        while self._writes:
            await asyncio.gather(*list(self._writes.values()), return_exceptions=True)


def record_of(turn: Turn) -> StoredResponse:
    """What the store keeps of a turn: the response, its input, its events when kept for replay
    (background), and the ids of its items for ``item_reference``."""
    return StoredResponse(
        id=turn.id,
        created_at=turn.response.created_at,
        previous_response_id=turn.request.previous_response_id,
        response=wire.encode(turn.response),
        input_items=ITEMS_ENCODER.encode(turn.new_items),
        events=b"[" + b",".join(encode_event(e) for e in turn.events) + b"]" if turn.events is not None else None,
        tenant=turn.tenant,
        item_ids=[item_id(i) for i in [*turn.new_items, *turn.response.output] if _indexed(i)],
        replica=turn.served_by,
    )


def _indexed(item: Item) -> bool:
    """Whether a stored item goes in the item index: it has an id, and is not itself a reference."""
    return not isinstance(item, ItemReference) and bool(item_id(item))
