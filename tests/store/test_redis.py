"""The Redis store against a real redis-server."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopway.store.base import StoredResponse, StoreUnavailable
from loopway.store.redis import RedisStore
from tests.conftest import RedisServer, free_port

RECORD = StoredResponse(
    id="resp_1",
    created_at=1,
    previous_response_id="resp_0",
    response=b'{"id":"resp_1"}',
    input_items=b"[]",
    events=None,
    tenant="acme",
)


async def test_put_get_delete_and_ttl(tmp_path: Path):
    server = RedisServer(tmp_path)
    store = RedisStore(server.url)
    try:
        await store.ping()
        assert await store.get("resp_1") is None
        await store.put(RECORD)
        assert await store.get("resp_1") == RECORD
        assert 0 < await store._redis.ttl("loopway:response:resp_1") <= 30 * 24 * 3600
        assert await store.delete("resp_1") is True and await store.delete("resp_1") is False
    finally:
        await store.aclose()
        server.stop()


async def test_events_round_trip(tmp_path: Path):
    server = RedisServer(tmp_path)
    store = RedisStore(server.url)
    try:
        record = StoredResponse(
            id="resp_9",
            created_at=2,
            previous_response_id=None,
            response=b"{}",
            input_items=b"[]",
            events=b'[{"type":"response.created"}]',
            tenant="",
        )
        await store.put(record)
        assert await store.get("resp_9") == record
    finally:
        await store.aclose()
        server.stop()


async def test_an_unreachable_redis_is_store_unavailable():
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    try:
        for call in (store.ping(), store.get("x"), store.delete("x"), store.put(RECORD)):
            with pytest.raises(StoreUnavailable):
                await call
    finally:
        await store.aclose()


def test_the_password_never_shows():
    assert RedisStore("redis://user:hunter2@127.0.0.1:6379/0").describe() == "redis://***@127.0.0.1:6379/0"
