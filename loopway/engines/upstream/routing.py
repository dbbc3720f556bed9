"""Which replica: pure choices over replicas' names and loads (the fleet supplies both).

- ``rendezvous``: highest-random-weight hashing (Thaler and Ravishankar, 1996). Every router
  ranks the replicas the same way for a key with no shared state, and losing a replica moves only
  the keys it held.
- ``bounded``: consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018):
  walk the key's ranking and take the first replica under ``factor`` × the average load, so one hot
  prefix spills to its second choice instead of piling onto one replica.
- ``least_loaded``: the lowest load (requests in flight, or any comparable measure); ties go to the
  replica picked longest ago, so idle replicas take new sessions in turn.
- ``Placements``: where each conversation (a connection, a prefix) was put, and how many recently
  active ones each replica holds: the load that decides where the next new one goes.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

SPILL_FACTOR = 1.25  # ε = 0.25, the paper's example and HAProxy's default (hash-balance-factor 125)
PLACE_FACTOR = 1.0  # conversations: each replica its share, no more (a placement is remembered, not rehashed)


def _score(key: bytes, name: str) -> int:
    return int.from_bytes(hashlib.blake2b(key + b"\0" + name.encode(), digest_size=8).digest(), "big")


def rendezvous(key: bytes, names: Sequence[str]) -> list[str]:
    """``names`` ranked for ``key``, best first."""
    return sorted(names, key=lambda name: _score(key, name), reverse=True)


def bounded(ranked: Sequence[str], loads: dict[str, int], factor: float = SPILL_FACTOR) -> str:
    """The first of ``ranked`` whose load, with this request, stays within ``factor`` × the average."""
    cap = math.ceil(factor * (sum(loads[n] for n in ranked) + 1) / len(ranked))
    for name in ranked:
        if loads[name] + 1 <= cap:
            return name
    return ranked[0]


def least_loaded(names: Sequence[str], loads: dict[str, Any], last_picked: dict[str, int]) -> str:
    return min(names, key=lambda name: (loads[name], last_picked.get(name, -1)))


class Placements:
    """Conversation → replica, most recently used last, bounded; ``active`` counts per replica
    those used within ``active_s`` (a conversation idle longer no longer loads its replica)."""

    def __init__(self, max_entries: int = 100_000, active_s: float = 120.0) -> None:
        self.max_entries, self.active_s = max_entries, active_s
        self._placed: OrderedDict[Hashable, tuple[str, float]] = OrderedDict()

    def get(self, key: Hashable) -> str | None:
        placed = self._placed.get(key)
        return placed[0] if placed is not None else None

    def place(self, key: Hashable, name: str, now: float) -> None:
        self._placed[key] = (name, now)
        self._placed.move_to_end(key)
        if len(self._placed) > self.max_entries:
            self._placed.popitem(last=False)

    def active(self, names: Sequence[str], now: float) -> dict[str, int]:
        counts = dict.fromkeys(names, 0)
        for name, used in reversed(self._placed.values()):  # the most recently used first
            if used < now - self.active_s:
                break
            if name in counts:
                counts[name] += 1
        return counts
