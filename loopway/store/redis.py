"""A store several replicas share: Redis (``--store redis://HOST:PORT/DB``).

Each response is one hash (``loopway:response:{id}``) with a TTL (30 days, as OpenAI keeps stored
responses). A conversation is a hash of its fields (``loopway:conversation:{id}``), a list of its
item ids in order (``…:ids``) and a hash of the items by id (``…:items``), without a TTL: OpenAI
keeps conversation items until they are deleted. Redis being down is ``StoreUnavailable`` (a 503
for requests that need the store); redis-py reconnects on the next command, so recovery needs
nothing from anyone. Durability across ``kill -9`` is Redis's own: run it with ``appendonly yes``
(and ``appendfsync always`` for every acknowledged write).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from loopway.store.base import StoredConversation, StoredItem, StoredResponse, StoreUnavailable

TTL_S = 30 * 24 * 3600
CLAIMS = "loopway:claims"  # sorted set: background response id → until (epoch seconds)
# Delete a response and those of its items' index entries that still point at it (a later response may
# have indexed the same item id since).
_DELETE = """
local ids = redis.call('HGET', KEYS[1], 'item_ids')
if ids then
    for _, item in ipairs(cjson.decode(ids)) do
        local key = ARGV[1] .. item
        if redis.call('GET', key) == ARGV[2] then redis.call('DEL', key) end
    end
end
return redis.call('DEL', KEYS[1])
"""
# Append items (ARGV: id, data, id, data, ...) to an existing conversation and move its version on, as
# one step; -1 when the conversation is not there.
_APPEND_ITEMS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
for i = 1, #ARGV, 2 do
    redis.call('RPUSH', KEYS[2], ARGV[i])
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
return redis.call('HINCRBY', KEYS[1], 'version', 1)
"""
# Delete one item of a conversation and move its version on, as one step.
_DELETE_ITEM = """
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if removed > 0 and redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HINCRBY', KEYS[3], 'version', 1) end
return removed
"""
_FIELDS = ("created_at", "previous_response_id", "response", "input_items", "events", "tenant")


@contextmanager
def _reachable() -> Iterator[None]:
    """Redis down, or too slow, is ``StoreUnavailable``: the client's 503."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"redis: {exc}") from None


class RedisStore:
    def __init__(self, url: str, *, ttl_s: int = TTL_S, timeout_s: float = 2.0) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self._redis = aioredis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False, health_check_interval=30
        )

    @staticmethod
    def _key(response_id: str) -> str:
        return f"loopway:response:{response_id}"

    @staticmethod
    def _item_key(tenant: str, item_id: str = "") -> str:
        return f"loopway:item:{tenant}:{item_id}"

    async def put(self, record: StoredResponse) -> None:
        mapping = {
            "created_at": record.created_at,
            "previous_response_id": record.previous_response_id or "",
            "response": record.response,
            "input_items": record.input_items,
            "events": record.events or b"",
            "tenant": record.tenant,
            "has_events": int(record.events is not None),
            "item_ids": msgspec.json.encode(record.item_ids),
            "replica": record.replica or "",
        }
        with _reachable():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._key(record.id), mapping=mapping)
                pipe.expire(self._key(record.id), self.ttl_s)
                for item_id in record.item_ids:
                    pipe.set(self._item_key(record.tenant, item_id), record.id, ex=self.ttl_s)
                await pipe.execute()

    async def get(self, response_id: str) -> StoredResponse | None:
        with _reachable():
            raw = await self._redis.hgetall(self._key(response_id))
        if not raw:
            return None
        return StoredResponse(
            id=response_id,
            created_at=int(raw[b"created_at"]),
            previous_response_id=raw[b"previous_response_id"].decode() or None,
            response=raw[b"response"],
            input_items=raw[b"input_items"],
            events=raw[b"events"] if raw.get(b"has_events") == b"1" else None,
            tenant=raw[b"tenant"].decode(),
            replica=raw.get(b"replica", b"").decode() or None,
        )

    async def delete(self, response_id: str) -> bool:
        with _reachable():
            tenant = await self._redis.hget(self._key(response_id), "tenant")
            prefix = self._item_key(tenant.decode() if tenant else "")
            return bool(await self._redis.eval(_DELETE, 1, self._key(response_id), prefix, response_id))

    async def find_item(self, tenant: str, item_id: str) -> str | None:
        with _reachable():
            found = await self._redis.get(self._item_key(tenant, item_id))
        return found.decode() if found else None

    async def claim(self, response_id: str, until: float) -> None:
        with _reachable():
            await self._redis.zadd(CLAIMS, {response_id: until})

    async def release(self, response_id: str) -> None:
        with _reachable():
            await self._redis.zrem(CLAIMS, response_id)

    async def orphans(self, now: float) -> list[str]:
        with _reachable():
            return [member.decode() for member in await self._redis.zrangebyscore(CLAIMS, "-inf", now)]

    # Conversations ----------------------------------------------------------------------------

    @staticmethod
    def _conversation_key(conversation_id: str, part: str = "") -> str:
        return f"loopway:conversation:{conversation_id}{part}"

    async def put_conversation(self, conversation: StoredConversation) -> None:
        key = self._conversation_key(conversation.id)
        with _reachable():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(key, "created_at", conversation.created_at)
                pipe.hsetnx(key, "tenant", conversation.tenant)
                pipe.hsetnx(key, "version", 0)
                pipe.hset(key, "metadata", msgspec.json.encode(conversation.metadata))
                await pipe.execute()

    async def get_conversation(self, conversation_id: str) -> StoredConversation | None:
        with _reachable():
            raw = await self._redis.hgetall(self._conversation_key(conversation_id))
        if not raw:
            return None
        return StoredConversation(
            id=conversation_id,
            created_at=int(raw[b"created_at"]),
            tenant=raw[b"tenant"].decode(),
            metadata=msgspec.json.decode(raw[b"metadata"]),
            version=int(raw.get(b"version", b"0")),
        )

    async def delete_conversation(self, conversation_id: str) -> bool:
        keys = [self._conversation_key(conversation_id, part) for part in ("", ":ids", ":items")]
        with _reachable():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.exists(keys[0])
                pipe.delete(*keys)
                existed, _ = await pipe.execute()
        return bool(existed)

    async def append_items(self, conversation_id: str, items: list[StoredItem]) -> int | None:
        keys = [self._conversation_key(conversation_id, part) for part in ("", ":ids", ":items")]
        pairs = [value for item in items for value in (item.id, item.data)]
        with _reachable():  # one script: appends never interleave, and none outlives a delete
            version = await self._redis.eval(_APPEND_ITEMS, 3, *keys, *pairs)
        return None if version < 0 else int(version)

    async def conversation_items(
        self, conversation_id: str, *, after: str | None = None, limit: int | None = None, descending: bool = False
    ) -> list[StoredItem]:
        ids_key = self._conversation_key(conversation_id, ":ids")
        with _reachable():
            start, stop = await self._range(ids_key, after, limit, descending)
            if start > stop:
                return []
            ids = await self._redis.lrange(ids_key, start, stop)
            if descending:
                ids.reverse()
            data = await self._redis.hmget(self._conversation_key(conversation_id, ":items"), ids) if ids else []
        return [StoredItem(i.decode(), d) for i, d in zip(ids, data) if d is not None]

    async def _range(self, ids_key: str, after: str | None, limit: int | None, descending: bool) -> tuple[int, int]:
        """The list positions a page spans (inclusive), found with LPOS instead of reading every id."""
        length = await self._redis.llen(ids_key)
        if after is None:
            edge = length if descending else -1  # the position just past the page's first item
        else:
            found = await self._redis.lpos(ids_key, after)
            if found is None:
                return 0, -1
            edge = found
        if descending:
            return (0 if limit is None else max(0, edge - limit)), edge - 1
        return edge + 1, (length - 1 if limit is None else edge + limit)

    async def conversation_item(self, conversation_id: str, item_id: str) -> StoredItem | None:
        with _reachable():
            data = await self._redis.hget(self._conversation_key(conversation_id, ":items"), item_id)
        return StoredItem(item_id, data) if data is not None else None

    async def delete_item(self, conversation_id: str, item_id: str) -> bool:
        with _reachable():
            keys = [self._conversation_key(conversation_id, part) for part in (":ids", ":items", "")]
            return bool(await self._redis.eval(_DELETE_ITEM, 3, *keys, item_id))

    async def ping(self) -> None:
        with _reachable():
            await self._redis.ping()

    async def aclose(self) -> None:
        await self._redis.aclose()

    def describe(self) -> str:
        return re.sub(r"//[^@/]*@", "//***@", self.url)  # never print a password
