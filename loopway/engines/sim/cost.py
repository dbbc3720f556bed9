"""How long the simulated model takes, what its prefix cache holds, and how requests share it.

Time to first token = base latency + uncached prompt tokens ÷ prefill rate; then output tokens at
the decode rate. The prefix cache is keyed by chained block hashes of the token prefix (as in
vLLM's automatic prefix caching), so a stateless client resending identical history gets the
same hits as a continuation: benchmarks compare transports, not engines.

One engine is one GPU, so concurrent requests share it (``Capacity``), as an engine fleet's
replicas do: prefills queue for the one prefill throughput, first come first served (vLLM's
default scheduling), and every decode step takes longer as the batch grows. The prefix cache holds
a finite number of tokens (a GPU's KV budget) and evicts the least recently used blocks, which is
what makes routing a conversation back to the replica that holds its prefix worth anything.
Defaults and where they come from: docs/upstream.md ("The sim as a fleet").
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
    shared_prefill: bool
    decode_slowdown: float


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


class Capacity:
    """One engine's shared throughput: the prefill queue and the decode batch.

    ``prefill_done(tokens, now)`` books a prefill behind those already queued and says when it
    ends; ``decode_rate()`` is one sequence's decode rate with ``decoding`` sequences in the batch:
    the single-sequence rate ÷ (1 + ``slowdown`` × (batch − 1)).
    """

    def __init__(self, prefill_tokens_per_s: float, decode_tokens_per_s: float, *, shared: bool, slowdown: float) -> None:
        self.prefill_tokens_per_s = prefill_tokens_per_s
        self.decode_tokens_per_s = decode_tokens_per_s
        self.shared = shared
        self.slowdown = slowdown
        self.decoding = 0
        self._prefill_free_at = 0.0

    @classmethod
    def of(cls, settings: SimSettingsLike) -> Capacity:
        return cls(
            settings.prefill_tokens_per_s,
            settings.decode_tokens_per_s,
            shared=settings.shared_prefill,
            slowdown=settings.decode_slowdown,
        )

    def prefill_done(self, tokens: int, now: float) -> float:
        """When a prefill of ``tokens`` that arrives at ``now`` ends."""
        if not self.shared:
            return now + tokens / self.prefill_tokens_per_s
        self._prefill_free_at = max(now, self._prefill_free_at) + tokens / self.prefill_tokens_per_s
        return self._prefill_free_at

    def decode_rate(self) -> float:
        return self.decode_tokens_per_s / (1 + self.slowdown * max(0, self.decoding - 1))


class PrefixCache:
    """A bounded LRU set of block hashes; the longest cached prefix is found by binary search.

    Chained hashes make "block i cached" imply "every block before i was cached when i was", so
    the search is O(log n) in the context length. ``capacity_tokens`` 0 means unbounded.
    """

    def __init__(self, capacity_tokens: int = 0) -> None:
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self._capacity = capacity_tokens // BLOCK_SIZE if capacity_tokens > 0 else 1 << 62
        self.evicted_blocks = 0

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
        """Blocks from ``start_block`` on become the most recently used (from 0: the whole prefix
        was just read, so its cached blocks are as fresh as its new ones). They are touched last to
        first, so a prefix's tail is evicted before its head (as vLLM frees a sequence's blocks),
        and "block i cached" keeps implying "every block before it is"."""
        blocks = self._blocks
        for i in range(len(hashes) - 1, start_block - 1, -1):
            h = hashes[i]
            blocks[h] = None
            blocks.move_to_end(h)
        while len(blocks) > self._capacity:
            blocks.popitem(last=False)
            self.evicted_blocks += 1
