"""The dashboard's feed: snapshots only while someone watches, the newest only for a slow viewer."""

from __future__ import annotations

import asyncio
import json

import pytest

from loopway.core.ops.feed import Feed
from loopway.protocol.errors import ApiError


class Builds:
    def __init__(self) -> None:
        self.calls: list[str | None] = []

    async def __call__(self, tenant: str | None) -> dict:
        self.calls.append(tenant)
        return {"n": len(self.calls), "tenant": tenant}


async def test_a_slow_viewer_gets_the_newest_snapshot_and_a_count_of_what_it_missed():
    builds = Builds()
    feed = Feed(builds, period_s=0.01)
    viewer = feed.join("alice")
    await asyncio.sleep(0.1)  # about ten snapshots, none read
    frame = json.loads(await viewer.next() or b"")
    assert frame["n"] == len(builds.calls) and frame["feed"]["dropped"] == frame["n"] - 1 > 3
    await feed.aclose()


async def test_snapshots_are_built_once_per_view_and_only_while_someone_watches():
    builds = Builds()
    feed = Feed(builds, period_s=0.02)
    a, b, c = feed.join("alice"), feed.join("alice"), feed.join(None)
    await asyncio.sleep(0.05)
    assert set(builds.calls) == {"alice", None}
    assert builds.calls.count("alice") == builds.calls.count(None)  # two alice viewers, one build
    for viewer in (a, b, c):
        feed.leave(viewer)
    await asyncio.sleep(0.05)
    stopped = len(builds.calls)
    await asyncio.sleep(0.1)
    assert len(builds.calls) == stopped  # nobody watching: nothing built


async def test_viewers_are_capped_and_closing_ends_every_feed():
    feed = Feed(Builds(), period_s=0.01, max_viewers=2)
    first, _ = feed.join(None), feed.join(None)
    with pytest.raises(ApiError) as full:
        feed.check_room()
    assert full.value.status == 429 and full.value.code == "too_many_viewers"
    await feed.aclose()
    assert await first.next() is None
    assert await feed.join(None).next() is None  # one that arrives during the drain ends at once


async def test_a_snapshot_that_fails_is_logged_and_the_feed_goes_on():
    calls = []

    async def flaky(tenant: str | None) -> dict:
        calls.append(tenant)
        if len(calls) == 1:
            raise RuntimeError("a bug in the snapshot")
        return {"n": len(calls)}

    feed = Feed(flaky, period_s=0.01)
    viewer = feed.join(None)
    frame = json.loads(await asyncio.wait_for(viewer.next(), 2) or b"")
    assert frame["n"] >= 2
    await feed.aclose()
