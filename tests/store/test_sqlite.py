"""Stores: put, get, delete; SQLite keeps what it acknowledged across a reopen."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from loopway.store.base import StoredResponse
from loopway.store.memory import MemoryStore
from loopway.store.sqlite import SqliteStore

RECORD = StoredResponse(id="resp_1", created_at=1, previous_response_id=None, response=b'{"id":"resp_1"}', input_items=b"[]")


@pytest.fixture(params=["memory", "sqlite"])
async def store(request, tmp_path: Path):
    s = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "db.sqlite3")
    yield s
    await s.aclose()


async def test_put_get_delete(store):
    assert await store.get("resp_1") is None
    await store.put(RECORD)
    assert await store.get("resp_1") == RECORD
    assert await store.delete("resp_1") is True
    assert await store.delete("resp_1") is False
    assert await store.get("resp_1") is None


async def test_sqlite_is_durable_across_reopen(tmp_path: Path):
    path = tmp_path / "db.sqlite3"
    first = SqliteStore(path)
    await first.put(RECORD)
    await first.aclose()
    second = SqliteStore(path)
    assert await second.get("resp_1") == RECORD
    await second.aclose()


async def test_a_database_from_before_engine_fleets_gains_the_replica_column(tmp_path: Path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE responses (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, previous_response_id TEXT,"
        " response BLOB NOT NULL, input_items BLOB NOT NULL, events BLOB, tenant TEXT NOT NULL DEFAULT '')"
    )
    db.execute("INSERT INTO responses VALUES ('resp_old', 1, NULL, X'7B7D', X'5B5D', NULL, '')")
    db.commit()
    db.close()
    store = SqliteStore(path)
    assert (await store.get("resp_old")).replica is None
    await store.put(msgspec.structs.replace(RECORD, replica="http://a/v1"))
    assert (await store.get("resp_1")).replica == "http://a/v1"
    await store.aclose()
