"""Per-tenant limits (sans-I/O): requests per minute and open WebSocket connections.

The rate limit is a token bucket per tenant: ``rpm`` requests a minute on average, bursts up to
``rpm``. A refusal says how long until the next request would pass, for ``retry-after``.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable

from loopway.protocol.errors import ApiError


class RateLimiter:
    def __init__(self, rpm: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rpm = rpm
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)

    def check(self, tenant: str) -> None:
        """Take one request from the tenant's bucket, or raise the 429 to answer."""
        if self.rpm <= 0:
            return
        now = self._clock()
        tokens, at = self._buckets.get(tenant, (float(self.rpm), now))
        tokens = min(float(self.rpm), tokens + (now - at) * self.rpm / 60)
        if tokens < 1:
            wait = math.ceil((1 - tokens) * 60 / self.rpm)
            self._buckets[tenant] = (tokens, now)
            raise ApiError(
                429,
                f"Rate limit reached: {self.rpm} requests per minute. Try again in {wait}s.",
                type="requests",
                code="rate_limit_exceeded",
                headers={"retry-after": str(wait)},
            )
        self._buckets[tenant] = (tokens - 1, now)


class ConnectionLimiter:
    """Open WebSocket connections per tenant (0: unlimited)."""

    def __init__(self, per_tenant: int) -> None:
        self.per_tenant = per_tenant
        self._open: Counter[str] = Counter()

    def acquire(self, tenant: str) -> None:
        if self.per_tenant and self._open[tenant] >= self.per_tenant:
            raise ApiError(
                429,
                f"Too many open WebSocket connections for this key (at most {self.per_tenant}). Close one or wait.",
                type="requests",
                code="websocket_connections_exceeded",
                headers={"retry-after": "1"},
            )
        self._open[tenant] += 1

    def release(self, tenant: str) -> None:
        self._open[tenant] -= 1
        if self._open[tenant] <= 0:
            del self._open[tenant]
