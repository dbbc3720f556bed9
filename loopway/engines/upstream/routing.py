"""Which replica: pure choices over replicas' names and loads (the fleet supplies both).

- ``rendezvous``: highest-random-weight hashing (Thaler and Ravishankar, 1996). Every router
  ranks the replicas the same way for a key with no shared state, and losing a replica moves only
  the keys it held.
- ``bounded``: consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018):
  walk the key's ranking and take the first replica under ``factor`` × the average load, so one hot
  prefix spills to its second choice instead of piling onto one replica.
- ``least_loaded``: the lowest load (requests in flight, or any comparable measure); ties go to the
  replica picked longest ago, so idle replicas take new sessions in turn.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

SPILL_FACTOR = 1.25  # ε = 0.25, the paper's example and HAProxy's default (hash-balance-factor 125)


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
