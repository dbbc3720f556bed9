"""The service and its turn driver without a transport: parents, persistence order, store failures."""

from __future__ import annotations

import msgspec
import pytest

from loopway.core.connection.state import ConnectionState
from loopway.core.ops.timing import StageTimes
from loopway.core.records.driver import Persist
from loopway.core.records.persistence import ResponseLog
from loopway.core.service import ResponsesService
from loopway.core.turn.turn import Turn
from loopway.protocol import response as wire
from loopway.protocol.errors import ApiError
from loopway.protocol.events import is_terminal
from loopway.store.base import StoredResponse, StoreUnavailable
from loopway.store.memory import MemoryStore
from tests.core.turns import pipeline, request, user


class FlakyStore(MemoryStore):
    """A memory store whose writes fail while ``down`` is set."""

    down = False

    async def put(self, record: StoredResponse) -> None:
        if self.down:
            raise StoreUnavailable("disk full")
        await super().put(record)


def service(store: MemoryStore | None = None) -> ResponsesService:
    pipe = pipeline()
    return ResponsesService(pipe.engine, pipe, ResponseLog(store or MemoryStore()))


async def run(svc: ResponsesService, turn: Turn, persist: Persist = Persist.FIRST) -> list[str]:
    return [event.type async for event in svc.run(turn, "test", persist)]


async def stored(svc: ResponsesService, **fields: object) -> Turn:
    turn = await svc.prepare(request(websocket=False, store=True, **fields))
    await run(svc, turn)
    return turn


async def test_persist_first_has_the_response_stored_before_the_terminal_event_leaves():
    svc = service()
    turn = await svc.prepare(request(store=True))
    async for event in svc.run(turn, "test", Persist.FIRST):
        if is_terminal(event):
            assert await svc.log.store.get(turn.id) is not None


async def test_persist_behind_sends_the_terminal_event_first_and_is_readable_at_once():
    svc = service()
    turn = await svc.prepare(request(store=True))
    async for event in svc.run(turn, "test", Persist.BEHIND):
        if is_terminal(event):
            assert await svc.log.store.get(turn.id) is None
    assert await svc.log.get(turn.id) is not None  # pending writes are served from memory
    await svc.log.drain()
    assert await svc.log.store.get(turn.id) is not None


async def test_store_false_writes_nothing_either_way():
    svc = service()
    for persist in Persist:
        turn = await svc.prepare(request(store=False))
        await run(svc, turn, persist)
        await svc.log.drain()
        assert await svc.log.get(turn.id) is None


async def test_a_store_that_fails_the_final_write_is_the_503_in_place_of_the_terminal_event():
    store = FlakyStore()
    svc = service(store)
    turn = await svc.prepare(request(store=True))
    store.down = True
    seen: list[str] = []
    with pytest.raises(ApiError) as failed:
        async for event in svc.run(turn, "test", Persist.FIRST):
            seen.append(event.type)
    assert failed.value.status == 503 and failed.value.code == "store_unavailable"
    assert "response.completed" not in seen


async def test_a_continuation_looks_in_the_cache_first_and_counts_the_hit():
    svc = service()
    state = ConnectionState()
    first = await stored(svc)
    job = state.submit(request(store=True), StageTimes())[0]
    turn = await svc.prepare(job.request, job.times, cache=state)
    await run(svc, turn)
    state.completed(job, turn)
    follow = request(store=False, input=[user("more")], previous_response_id=turn.id)
    continued = await svc.prepare(follow, cache=state)
    assert continued.known_prefix == len(turn.after.tokens)
    assert _cache_count(svc, "hit") == 1
    with pytest.raises(ApiError) as missing:  # store=false never falls back to the store
        await svc.prepare(request(store=False, previous_response_id=first.id), cache=state)
    assert missing.value.code == "previous_response_not_found" and _cache_count(svc, "miss") == 1
    from_store = await svc.prepare(request(store=True, previous_response_id=first.id), cache=state)
    assert from_store.request.previous_response_id == first.id


async def test_without_a_cache_http_continues_from_the_store_whatever_its_own_store_flag():
    svc = service()
    first = await stored(svc)
    turn = await svc.prepare(request(websocket=False, store=False, previous_response_id=first.id, input=[user("go")]))
    assert [type(i).__name__ for i in turn.conversation.items] == ["Message", "Message", "Message"]


async def test_store_true_is_refused_before_any_work_while_the_store_is_down():
    class DownStore(MemoryStore):
        async def ping(self) -> None:
            raise StoreUnavailable("connection refused")

    svc = service(DownStore())
    with pytest.raises(ApiError) as refused:
        await svc.prepare(request(store=True))
    assert refused.value.code == "store_unavailable"
    await svc.prepare(request(store=False))  # store=false needs no store


async def test_complete_runs_to_the_end_and_the_response_is_retrievable():
    svc = service()
    turn = await svc.prepare(request(websocket=False, store=True))
    response = await svc.complete(turn)
    assert response.status == "completed"
    assert msgspec.json.encode((await svc.retrieve(turn.id)).output) == msgspec.json.encode(response.output)


async def test_delete_then_retrieve_is_not_found_and_other_tenants_never_see_it():
    svc = service()
    turn = await svc.prepare(request(websocket=False, store=True), tenant="acme")
    await svc.complete(turn)
    with pytest.raises(ApiError) as hidden:
        await svc.retrieve(turn.id, tenant="other")
    assert hidden.value.status == 404
    assert (await svc.delete(turn.id, tenant="acme"))["deleted"]
    with pytest.raises(ApiError):
        await svc.retrieve(turn.id, tenant="acme")


async def test_background_runs_to_completion_and_replays_its_events():
    svc = service()
    turn = await svc.prepare(request(websocket=False, store=True, background=True))
    queued = await svc.start_background(turn)
    assert queued.status == "queued"
    events = [e async for e in await svc.events(turn.id, -1)]
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    record = await svc.log.get(turn.id)
    assert record is not None and wire.decode(record.response).status == "completed"


async def test_cancel_of_a_foreground_response_is_refused():
    svc = service()
    first = await stored(svc)
    with pytest.raises(ApiError) as refused:
        await svc.cancel(first.id)
    assert refused.value.code == "not_cancellable"


def _cache_count(svc: ResponsesService, result: str) -> float:
    return svc.metrics.registry.get_sample_value("loopway_connection_cache_total", {"result": result}) or 0.0
