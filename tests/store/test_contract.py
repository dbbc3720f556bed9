"""What every store promises, run against each: memory, SQLite, and Redis (a real redis-server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loopway.store.base import StoredResponse
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
