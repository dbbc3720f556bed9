"""Per-tenant limits (sans-I/O): requests per minute and open WebSocket connections.

The rate limit is a token bucket per tenant: ``rpm`` requests a minute on average, bursts up to
``rpm``. A refusal says how long until the next request would pass, for ``retry-after``.

Both keep their numbers in ``Tallies``: a dict in one process, shared memory across ``--workers``
(``core.ops.tallies``), so a limit is the server's, not each worker's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from loopway.core.ops.tallies import LocalTallies, Pair, Tallies
from loopway.protocol.errors import too_many_requests


class RateLimiter:
    def __init__(self, rpm: int, clock: Callable[[], float] = time.monotonic, tallies: Tallies | None = None) -> None:
        self.rpm = rpm
        self._clock = clock  # CLOCK_MONOTONIC is system-wide: every worker reads the same clock
        self._buckets = tallies or LocalTallies()  # tenant -> (tokens, at)

    def check(self, tenant: str) -> None:
        """Take one request from the tenant's bucket, or raise the 429 to answer."""
        if self.rpm <= 0:
            return
        now, rpm = self._clock(), float(self.rpm)
        short: list[float] = []  # the tokens a refused request found (change runs once, under the lock)

        def take(bucket: Pair) -> Pair:
            tokens = min(rpm, bucket[0] + (now - bucket[1]) * rpm / 60)
            if tokens < 1:
                short.append(tokens)
                return tokens, now
            return tokens - 1, now

        self._buckets.update(tenant, (rpm, now), take)
        if short:
            tokens = short[0]
            wait = math.ceil((1 - tokens) * 60 / self.rpm)
            raise too_many_requests(
                f"Rate limit reached: {self.rpm} requests per minute. Try again in {wait}s.",
                code="rate_limit_exceeded",
                retry_after=str(wait),
            )


class ConnectionLimiter:
    """Open WebSocket connections per tenant (0: unlimited), over every worker.

    Each worker counts its own sockets under its own key, ``(open, worker)``: the cap is their sum,
    and the supervisor forgets a worker that died (``Tallies.forget``), so a ``kill -9`` does not
    keep its sockets counted against the tenant until the server restarts.
    """

    def __init__(self, per_tenant: int, tallies: Tallies | None = None, worker: int = 0, workers: int = 1) -> None:
        self.per_tenant = per_tenant
        self._open = tallies or LocalTallies()  # (tenant, worker) -> (open, worker)
        self.worker, self.workers = worker, workers

    def _keys(self, tenant: str) -> list[str]:
        """This worker's key first, then every other worker's."""
        others = [w for w in range(self.workers) if w != self.worker]
        return [f"{tenant}\x00{w}" for w in (self.worker, *others)]

    def acquire(self, tenant: str) -> None:
        if not self.per_tenant:
            return
        limit, me = self.per_tenant, float(self.worker)
        granted: list[bool] = []

        def take(counts: list[Pair]) -> list[Pair]:
            if sum(count for count, _ in counts) >= limit:
                return counts
            granted.append(True)
            return [(counts[0][0] + 1, me), *counts[1:]]

        self._open.update_all(self._keys(tenant), (0.0, 0.0), take)
        if not granted:
            raise too_many_requests(
                f"Too many open WebSocket connections for this key (at most {self.per_tenant}). Close one or wait.",
                code="websocket_connections_exceeded",
                retry_after="1",
            )

    def release(self, tenant: str) -> None:
        if self.per_tenant:
            me = float(self.worker)
            self._open.update(self._keys(tenant)[0], (0.0, me), lambda count: (max(0.0, count[0] - 1), me))
