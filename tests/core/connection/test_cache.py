"""The connection cache's eviction rules."""

from __future__ import annotations

from loopway.core.connection.cache import CachedResponse, ConnectionCache
from loopway.core.context.conversation import Conversation
from loopway.protocol.response import Response
from loopway.protocol.tools import EMPTY_TOOLS
from loopway.tokens.render import Renderer

CONVERSATION = Conversation.start(Renderer(), None, EMPTY_TOOLS)


def entry(response_id: str, lane: str | None = None) -> CachedResponse:
    return CachedResponse(
        response=Response(id=response_id, created_at=0, status="completed", model="m"), conversation=CONVERSATION, lane=lane
    )


def test_lane_keeps_only_its_latest():
    cache = ConnectionCache()
    cache.put(entry("r1"))
    cache.put(entry("r2"))
    assert cache.get("r1") is None and cache.get("r2") is not None


def test_lanes_keep_their_own_latest():
    cache = ConnectionCache()
    cache.put(entry("a1", "a"))
    cache.put(entry("b1", "b"))
    assert cache.get("a1") and cache.get("b1")


def test_pinned_parent_survives_its_lane_advancing_until_unpinned():
    cache = ConnectionCache()
    cache.put(entry("a1", "a"))
    assert cache.pin("a1")
    cache.put(entry("a2", "a"))
    assert cache.get("a1") is not None
    cache.unpin("a1")
    assert cache.get("a1") is None and cache.get("a2") is not None


def test_pin_of_unknown_response_fails():
    assert not ConnectionCache().pin("nope")


def test_evict_removes_latest():
    cache = ConnectionCache()
    cache.put(entry("r1"))
    cache.evict("r1")
    assert cache.get("r1") is None and len(cache) == 0
