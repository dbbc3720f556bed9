"""The embedded default store: SQLite in WAL mode, driven from one worker thread.

One connection on one thread keeps SQLite's locking trivial and the event loop free; WAL lets
a reader and the writer proceed together. ``synchronous=FULL``: a ``put`` that returned is on
disk, so a ``store=true`` response survives ``kill -9`` once acknowledged.

Every SQLite error at run time (a full disk, a file size limit, a corrupted page, a locked file)
is ``StoreUnavailable``: the client's 503, never a 500. A file that is not a usable database at
start-up is ``StoreOpenError``, which ``loopway serve`` reports in one line.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

import msgspec

from loopway.store.base import StoredConversation, StoredItem, StoredResponse, StoreUnavailable

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    previous_response_id TEXT,
    response BLOB NOT NULL,
    input_items BLOB NOT NULL,
    events BLOB,
    tenant TEXT NOT NULL DEFAULT '',
    replica TEXT
);
CREATE TABLE IF NOT EXISTS items (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    response_id TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS items_by_response ON items (response_id);
CREATE TABLE IF NOT EXISTS claims (
    id TEXT PRIMARY KEY,
    until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    tenant TEXT NOT NULL DEFAULT '',
    metadata BLOB NOT NULL,
    version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS conversation_items (
    conversation_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    id TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (conversation_id, position)
);
CREATE INDEX IF NOT EXISTS conversation_items_by_id ON conversation_items (conversation_id, id);
"""


class StoreOpenError(Exception):
    """The database cannot be opened or is not a usable SQLite database."""


class SqliteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopway-sqlite")
        self._db: sqlite3.Connection | None = None
        try:
            self._executor.submit(self._open).result()
        except sqlite3.Error as exc:
            self._executor.shutdown(wait=False)
            raise StoreOpenError(f"{self.path} is not a usable SQLite database ({exc})") from None

    def _open(self) -> None:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(responses)")}
            if "replica" not in columns:  # a database from before engine fleets
                db.execute("ALTER TABLE responses ADD COLUMN replica TEXT")
            db.execute("SELECT count(*) FROM responses").fetchone()
        except sqlite3.Error:
            db.close()
            raise
        self._db = db

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: {exc}") from None

    def _put(self, r: StoredResponse) -> None:
        assert self._db is not None
        with self._db:  # the response and its items' index entries, in one transaction
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO responses (id, created_at, previous_response_id, response, input_items, events,"
                " tenant, replica) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (r.id, r.created_at, r.previous_response_id, r.response, r.input_items, r.events, r.tenant, r.replica),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO items (tenant, id, response_id) VALUES (?, ?, ?)",
                [(r.tenant, item_id, r.id) for item_id in r.item_ids],
            )

    def _get(self, response_id: str) -> StoredResponse | None:
        assert self._db is not None
        row = self._db.execute(
            "SELECT id, created_at, previous_response_id, response, input_items, events, tenant, replica"
            " FROM responses WHERE id = ?",
            (response_id,),
        ).fetchone()
        if row is None:
            return None
        return StoredResponse(
            id=row[0],
            created_at=row[1],
            previous_response_id=row[2],
            response=bytes(row[3]),
            input_items=bytes(row[4]),
            events=bytes(row[5]) if row[5] is not None else None,
            tenant=row[6],
            replica=row[7],
        )

    def _delete(self, response_id: str) -> bool:
        assert self._db is not None
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM items WHERE response_id = ?", (response_id,))
            return self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

    def _find_item(self, tenant: str, item_id: str) -> str | None:
        assert self._db is not None
        row = self._db.execute("SELECT response_id FROM items WHERE tenant = ? AND id = ?", (tenant, item_id)).fetchone()
        return row[0] if row else None

    async def put(self, record: StoredResponse) -> None:
        await self._run(self._put, record)

    async def get(self, response_id: str) -> StoredResponse | None:
        return await self._run(self._get, response_id)

    async def delete(self, response_id: str) -> bool:
        return await self._run(self._delete, response_id)

    def _claim(self, response_id: str, until: float) -> None:
        assert self._db is not None
        self._db.execute("INSERT OR REPLACE INTO claims (id, until) VALUES (?, ?)", (response_id, until))

    def _release(self, response_id: str) -> None:
        assert self._db is not None
        self._db.execute("DELETE FROM claims WHERE id = ?", (response_id,))

    def _orphans(self, now: float) -> list[str]:
        assert self._db is not None
        return [row[0] for row in self._db.execute("SELECT id FROM claims WHERE until < ?", (now,))]

    async def find_item(self, tenant: str, item_id: str) -> str | None:
        return await self._run(self._find_item, tenant, item_id)

    async def claim(self, response_id: str, until: float) -> None:
        await self._run(self._claim, response_id, until)

    async def release(self, response_id: str) -> None:
        await self._run(self._release, response_id)

    async def orphans(self, now: float) -> list[str]:
        return await self._run(self._orphans, now)

    # Conversations ----------------------------------------------------------------------------

    def _put_conversation(self, c: StoredConversation) -> None:
        assert self._db is not None
        self._db.execute(
            "INSERT INTO conversations (id, created_at, tenant, metadata) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET metadata = excluded.metadata",
            (c.id, c.created_at, c.tenant, msgspec.json.encode(c.metadata)),
        )

    def _get_conversation(self, conversation_id: str) -> StoredConversation | None:
        assert self._db is not None
        row = self._db.execute(
            "SELECT created_at, tenant, metadata, version FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()
        if row is None:
            return None
        metadata = msgspec.json.decode(row[2])
        return StoredConversation(id=conversation_id, created_at=row[0], tenant=row[1], metadata=metadata, version=row[3])

    def _delete_conversation(self, conversation_id: str) -> bool:
        assert self._db is not None
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM conversation_items WHERE conversation_id = ?", (conversation_id,))
            return self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)).rowcount > 0

    def _append_items(self, conversation_id: str, items: list[StoredItem]) -> int | None:
        assert self._db is not None
        with self._db:  # one writer thread, one transaction: appends never interleave
            self._db.execute("BEGIN")
            version = self._bump(conversation_id)
            if version is None:
                return None
            (last,) = self._db.execute(
                "SELECT COALESCE(MAX(position), -1) FROM conversation_items WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()
            self._db.executemany(
                "INSERT INTO conversation_items (conversation_id, position, id, data) VALUES (?, ?, ?, ?)",
                [(conversation_id, last + 1 + i, item.id, item.data) for i, item in enumerate(items)],
            )
            return version

    def _bump(self, conversation_id: str) -> int | None:
        """Within the caller's transaction: the conversation's version, moved on (None: no such conversation)."""
        assert self._db is not None
        if self._db.execute("UPDATE conversations SET version = version + 1 WHERE id = ?", (conversation_id,)).rowcount == 0:
            return None
        return self._db.execute("SELECT version FROM conversations WHERE id = ?", (conversation_id,)).fetchone()[0]

    def _conversation_items(
        self, conversation_id: str, after: str | None, limit: int | None, descending: bool
    ) -> list[StoredItem]:
        assert self._db is not None
        query, args = "SELECT id, data FROM conversation_items WHERE conversation_id = ?", [conversation_id]
        if after is not None:
            row = self._db.execute(
                "SELECT position FROM conversation_items WHERE conversation_id = ? AND id = ?", (conversation_id, after)
            ).fetchone()
            if row is None:
                return []
            query += " AND position < ?" if descending else " AND position > ?"
            args.append(row[0])
        query += " ORDER BY position DESC" if descending else " ORDER BY position"
        if limit is not None:
            query += " LIMIT ?"
            args.append(limit)
        return [StoredItem(row[0], bytes(row[1])) for row in self._db.execute(query, args)]

    def _conversation_item(self, conversation_id: str, item_id: str) -> StoredItem | None:
        assert self._db is not None
        row = self._db.execute(
            "SELECT data FROM conversation_items WHERE conversation_id = ? AND id = ?", (conversation_id, item_id)
        ).fetchone()
        return StoredItem(item_id, bytes(row[0])) if row else None

    def _delete_item(self, conversation_id: str, item_id: str) -> bool:
        assert self._db is not None
        with self._db:
            self._db.execute("BEGIN")
            cursor = self._db.execute(
                "DELETE FROM conversation_items WHERE conversation_id = ? AND id = ?", (conversation_id, item_id)
            )
            if cursor.rowcount == 0:
                return False
            self._bump(conversation_id)
            return True

    async def put_conversation(self, conversation: StoredConversation) -> None:
        await self._run(self._put_conversation, conversation)

    async def get_conversation(self, conversation_id: str) -> StoredConversation | None:
        return await self._run(self._get_conversation, conversation_id)

    async def delete_conversation(self, conversation_id: str) -> bool:
        return await self._run(self._delete_conversation, conversation_id)

    async def append_items(self, conversation_id: str, items: list[StoredItem]) -> int | None:
        return await self._run(self._append_items, conversation_id, items)

    async def conversation_items(
        self, conversation_id: str, *, after: str | None = None, limit: int | None = None, descending: bool = False
    ) -> list[StoredItem]:
        return await self._run(self._conversation_items, conversation_id, after, limit, descending)

    async def conversation_item(self, conversation_id: str, item_id: str) -> StoredItem | None:
        return await self._run(self._conversation_item, conversation_id, item_id)

    async def delete_item(self, conversation_id: str, item_id: str) -> bool:
        return await self._run(self._delete_item, conversation_id, item_id)

    async def ping(self) -> None:
        return None  # an embedded file: a broken one fails the next read or write, and the log remembers

    async def aclose(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(close)
        self._executor.shutdown(wait=True)  # and its thread ends
        self._executor.shutdown(wait=True)

    def describe(self) -> str:
        return f"sqlite:{self.path}"
