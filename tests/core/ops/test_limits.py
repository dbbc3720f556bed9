"""Per-tenant limits without a server: the token bucket and the connection count."""

from __future__ import annotations

import pytest

from loopway.core.ops.limits import ConnectionLimiter, RateLimiter
from loopway.protocol.errors import ApiError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_the_rate_and_says_when_to_retry():
    clock = Clock()
    limiter = RateLimiter(rpm=2, clock=clock)
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(ApiError) as info:
        limiter.check("a")
    assert info.value.status == 429 and info.value.headers == {"retry-after": "30"}
    limiter.check("b")  # tenants have their own buckets
    clock.now = 30.0
    limiter.check("a")


def test_zero_means_unlimited():
    limiter = RateLimiter(rpm=0)
    for _ in range(1000):
        limiter.check("a")


def test_connection_limit_per_tenant():
    connections = ConnectionLimiter(per_tenant=1)
    connections.acquire("a")
    connections.acquire("b")
    with pytest.raises(ApiError) as info:
        connections.acquire("a")
    assert info.value.status == 429
    connections.release("a")
    connections.acquire("a")
