"""The connection cache: what a WebSocket connection remembers between turns.

Per lane, the latest response with its rendered conversation; plus any older response that a
queued fork still needs (pinned). A continuation that hits here touches no store. The cache lives
and dies with its connection and is never written anywhere.

Eviction rules (websocket-mode guide):
- a lane's new latest replaces its previous latest, unless a pending fork pins it;
- a failed same-lane continuation evicts its parent (stale state is never reused);
- a failed fork keeps the parent, so the source lane can go on.
"""

from __future__ import annotations

from collections import Counter

import msgspec

from loopway.core.context.conversation import Conversation
from loopway.protocol.response import Response


class CachedResponse(msgspec.Struct):
    response: Response
    conversation: Conversation
    lane: str | None


class ConnectionCache:
    """One connection's cached responses: each lane's latest, and the older ones queued forks pin.

    ``put`` makes a response its lane's latest (the rules above decide what it replaces); ``get``
    is the O(1) lookup a continuation does before any store; ``pin``/``unpin`` bracket a queued
    fork's wait. Bounded by the lanes a connection may have, so a client cannot grow it at will.
    """

    def __init__(self) -> None:
        self._entries: dict[str, CachedResponse] = {}
        self._latest: dict[str | None, str] = {}
        self._pins: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._entries)

    def tokens(self) -> int:
        """Rendered tokens held, over every cached response's conversation."""
        return sum(len(entry.conversation.tokens) for entry in self._entries.values())

    def get(self, response_id: str) -> CachedResponse | None:
        return self._entries.get(response_id)

    def put(self, entry: CachedResponse) -> None:
        response_id = entry.response.id
        self._entries[response_id] = entry
        previous = self._latest.get(entry.lane)
        self._latest[entry.lane] = response_id
        if previous is not None and previous != response_id:
            self._drop_if_unused(previous)

    def evict(self, response_id: str) -> None:
        entry = self._entries.pop(response_id, None)
        if entry is not None and self._latest.get(entry.lane) == response_id:
            del self._latest[entry.lane]
        self._pins.pop(response_id, None)

    def pin(self, response_id: str) -> bool:
        """Keep a response while a queued request needs it; False if it is not cached."""
        if response_id not in self._entries:
            return False
        self._pins[response_id] += 1
        return True

    def unpin(self, response_id: str) -> None:
        if self._pins[response_id] <= 1:
            self._pins.pop(response_id, None)
            self._drop_if_unused(response_id)
        else:
            self._pins[response_id] -= 1

    def is_latest(self, response_id: str) -> bool:
        entry = self._entries.get(response_id)
        return entry is not None and self._latest.get(entry.lane) == response_id

    def _drop_if_unused(self, response_id: str) -> None:
        if self._pins.get(response_id) or self.is_latest(response_id):
            return
        self._entries.pop(response_id, None)

    def clear(self) -> None:
        self._entries.clear()
        self._latest.clear()
        self._pins.clear()
