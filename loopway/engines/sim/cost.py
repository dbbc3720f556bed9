"""How long the simulated model takes, and what its prefix cache holds.

Time to first token = base latency + uncached prompt tokens ÷ prefill rate; then output tokens at
the decode rate. The prefix cache is keyed by chained block hashes of the token prefix (as in
vLLM's automatic prefix caching), so a stateless client resending identical history gets the
same hits as a continuation: benchmarks compare transports, not engines.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

import msgspec

from loopway.tokens.sequence import BLOCK_SIZE, AppendOnly


class SimSettingsLike(Protocol):
    base_latency_ms: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float


class CostModel(msgspec.Struct, frozen=True):
    base_latency_s: float = 0.02
    prefill_tokens_per_s: float = 20_000.0
    decode_tokens_per_s: float = 1_000.0

    @classmethod
    def of(cls, settings: SimSettingsLike) -> CostModel:
        return cls(settings.base_latency_ms / 1000, settings.prefill_tokens_per_s, settings.decode_tokens_per_s)

    def time_to_first_token(self, uncached_tokens: int) -> float:
        return self.base_latency_s + uncached_tokens / self.prefill_tokens_per_s

    def decode_time(self, output_tokens: int) -> float:
        return output_tokens / self.decode_tokens_per_s


class PrefixCache:
    """A bounded LRU set of block hashes; the longest cached prefix is found by binary search.

    Chained hashes make "block i cached" imply "every block before i was cached when i was", so
    the search is O(log n) in the context length.
    """

    def __init__(self, capacity_blocks: int = 1 << 20) -> None:
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self._capacity = capacity_blocks

    def cached_tokens(self, hashes: AppendOnly[int]) -> int:
        lo, hi = 0, len(hashes)  # invariant: blocks [0, lo) are cached
        while lo < hi:
            mid = (lo + hi) // 2
            if hashes[mid] in self._blocks:
                lo = mid + 1
            else:
                hi = mid
        return lo * BLOCK_SIZE

    def insert(self, hashes: AppendOnly[int], start_block: int = 0) -> None:
        blocks = self._blocks
        for i in range(start_block, len(hashes)):
            h = hashes[i]
            blocks[h] = None
            blocks.move_to_end(h)
        while len(blocks) > self._capacity:
            blocks.popitem(last=False)
