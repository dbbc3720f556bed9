"""What every store promises, run against each: memory, SQLite, and Redis (a real redis-server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loopway.store.base import StoredConversation, StoredItem, StoredResponse
from loopway.store.memory import MemoryStore
from loopway.store.redis import RedisStore
from loopway.store.sqlite import SqliteStore
from tests.conftest import RedisServer


def record(response_id: str, tenant: str = "acme", item_ids: tuple[str, ...] = ()) -> StoredResponse:
    return StoredResponse(
        id=response_id,
        created_at=1,
        previous_response_id=None,
        response=b"{}",
        input_items=b"[]",
        tenant=tenant,
        item_ids=list(item_ids),
    )


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[object]:
    redis = None
    if request.param == "memory":
        store = MemoryStore()
    elif request.param == "sqlite":
        store = SqliteStore(tmp_path / "db.sqlite3")
    else:
        redis = RedisServer(tmp_path / "redis")
        store = RedisStore(redis.url)
    yield store
    await store.aclose()
    if redis is not None:
        redis.stop()


async def test_stored_items_are_found_by_id_per_tenant(store):
    await store.put(record("resp_1", item_ids=("msg_a", "fc_b")))
    await store.put(record("resp_x", tenant="other", item_ids=("msg_z",)))
    assert await store.find_item("acme", "msg_a") == "resp_1"
    assert await store.find_item("acme", "fc_b") == "resp_1"
    assert await store.find_item("other", "msg_a") is None  # another tenant's item does not exist for you
    assert await store.find_item("acme", "msg_z") is None


async def test_the_latest_response_to_hold_an_item_wins_and_deleting_an_older_one_keeps_it(store):
    await store.put(record("resp_1", item_ids=("msg_a",)))
    await store.put(record("resp_2", item_ids=("msg_a",)))  # a stateless client resending the same item
    assert await store.find_item("acme", "msg_a") == "resp_2"
    assert await store.delete("resp_1")
    assert await store.find_item("acme", "msg_a") == "resp_2"
    assert await store.delete("resp_2")
    assert await store.find_item("acme", "msg_a") is None


async def test_claims_expire_into_orphans_and_release_clears_them(store):
    await store.claim("resp_run", 100.0)
    await store.claim("resp_live", 10_000.0)
    assert await store.orphans(now=500.0) == ["resp_run"]
    await store.release("resp_run")
    assert await store.orphans(now=500.0) == []


async def test_the_replica_that_served_a_response_is_kept_with_it(store):
    served = record("resp_r")
    served.replica = "http://10.0.0.7:8000/v1"
    await store.put(served)
    await store.put(record("resp_n"))
    assert (await store.get("resp_r")).replica == "http://10.0.0.7:8000/v1"
    assert (await store.get("resp_n")).replica is None


# Conversations -----------------------------------------------------------------------------------


def items(*ids: str) -> list[StoredItem]:
    return [StoredItem(item_id, b'{"id": "%s"}' % item_id.encode()) for item_id in ids]


def ids_of(found: list[StoredItem]) -> list[str]:
    return [item.id for item in found]


async def test_a_conversation_keeps_its_fields_and_its_metadata_can_change(store):
    await store.put_conversation(StoredConversation(id="conv_1", created_at=7, tenant="acme", metadata={"a": "1"}))
    await store.put_conversation(StoredConversation(id="conv_1", created_at=99, tenant="other", metadata={"b": "2"}))
    found = await store.get_conversation("conv_1")
    assert found == StoredConversation(id="conv_1", created_at=7, tenant="acme", metadata={"b": "2"})
    assert await store.get_conversation("conv_none") is None


async def test_items_append_in_order_and_page_both_ways(store):
    await store.put_conversation(StoredConversation(id="conv_1", created_at=1))
    await store.append_items("conv_1", items("a", "b"))
    await store.append_items("conv_1", items("c", "d", "e"))
    assert ids_of(await store.conversation_items("conv_1")) == ["a", "b", "c", "d", "e"]
    assert ids_of(await store.conversation_items("conv_1", limit=2)) == ["a", "b"]
    assert ids_of(await store.conversation_items("conv_1", after="b", limit=2)) == ["c", "d"]
    assert ids_of(await store.conversation_items("conv_1", after="d")) == ["e"]
    assert ids_of(await store.conversation_items("conv_1", after="e")) == []
    assert ids_of(await store.conversation_items("conv_1", descending=True)) == ["e", "d", "c", "b", "a"]
    assert ids_of(await store.conversation_items("conv_1", descending=True, limit=2)) == ["e", "d"]
    assert ids_of(await store.conversation_items("conv_1", descending=True, after="d", limit=2)) == ["c", "b"]
    assert ids_of(await store.conversation_items("conv_1", descending=True, after="a")) == []
    assert await store.conversation_items("conv_1", after="missing") == []
    assert (await store.conversation_item("conv_1", "c")) == items("c")[0]
    assert await store.conversation_items("conv_none") == []


async def test_items_can_be_deleted_one_by_one_and_with_their_conversation(store):
    await store.put_conversation(StoredConversation(id="conv_1", created_at=1))
    await store.append_items("conv_1", items("a", "b", "c"))
    assert await store.delete_item("conv_1", "b")
    assert not await store.delete_item("conv_1", "b")
    assert ids_of(await store.conversation_items("conv_1")) == ["a", "c"]
    assert await store.conversation_item("conv_1", "b") is None
    await store.append_items("conv_1", items("d"))
    assert ids_of(await store.conversation_items("conv_1", after="a")) == ["c", "d"]
    assert await store.delete_conversation("conv_1")
    assert not await store.delete_conversation("conv_1")
    assert await store.get_conversation("conv_1") is None and await store.conversation_items("conv_1") == []


async def test_concurrent_appends_never_interleave(store):
    await store.put_conversation(StoredConversation(id="conv_1", created_at=1))
    batches = [items(*(f"{n}-{i}" for i in range(5))) for n in range(8)]
    await asyncio.gather(*(store.append_items("conv_1", batch) for batch in batches))
    found = ids_of(await store.conversation_items("conv_1"))
    assert len(found) == 40
    for start in range(0, 40, 5):  # each batch stays whole and in its own order
        run = found[start : start + 5]
        assert run == [f"{run[0].split('-')[0]}-{i}" for i in range(5)]


async def test_every_append_and_deleted_item_moves_the_version_on(store):
    await store.put_conversation(StoredConversation(id="conv_1", created_at=1, version=99))
    assert (await store.get_conversation("conv_1")).version == 0  # a new conversation starts at 0
    assert await store.append_items("conv_1", items("a", "b")) == 1
    assert await store.append_items("conv_1", items("c")) == 2
    await store.put_conversation(StoredConversation(id="conv_1", created_at=1, metadata={"k": "v"}))
    assert (await store.get_conversation("conv_1")).version == 2  # metadata is not the context
    assert await store.delete_item("conv_1", "b")
    assert (await store.get_conversation("conv_1")).version == 3
    assert not await store.delete_item("conv_1", "b")
    assert (await store.get_conversation("conv_1")).version == 3


async def test_nothing_is_appended_to_a_conversation_that_is_not_there(store):
    assert await store.append_items("conv_gone", items("a")) is None
    await store.put_conversation(StoredConversation(id="conv_1", created_at=1))
    assert await store.delete_conversation("conv_1")
    assert await store.append_items("conv_1", items("a")) is None  # a turn that finished after the delete
    assert await store.get_conversation("conv_1") is None and await store.conversation_items("conv_1") == []
