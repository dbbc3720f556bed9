"""The dashboard's live feed: a snapshot about once a second to each viewer, the newest only.

A viewer that reads slowly holds nothing up: each has a one-frame slot, and a frame still waiting
when the next is ready is replaced (and counted as dropped), so a stalled browser costs one frame
of memory, never a queue. Snapshots are built only while someone watches, once per tick for each
distinct view (a viewer's tenant), by one task; the turn path never waits on any of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from loopway.protocol.errors import too_many_requests

log = logging.getLogger("loopway.dashboard")

Build = Callable[[str | None], Awaitable[dict[str, Any]]]


class Viewer:
    """One open feed: its tenant's view (None: every tenant) and its one-frame slot."""

    def __init__(self, tenant: str | None) -> None:
        self.tenant = tenant
        self.dropped = 0  # frames replaced before this viewer read them
        self._slot: dict[str, Any] | None = None
        self._ready = asyncio.Event()
        self.closed = False

    def offer(self, snapshot: dict[str, Any]) -> None:
        if self._slot is not None:
            self.dropped += 1
        self._slot = snapshot
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def next(self) -> bytes | None:
        """The newest snapshot, as one JSON document, once there is one not yet read; None once the
        feed has closed (the server is shutting down)."""
        await self._ready.wait()
        self._ready.clear()
        if self.closed:
            return None
        snapshot, self._slot = self._slot, None
        return msgspec.json.encode({**(snapshot or {}), "feed": {"dropped": self.dropped}})


class Feed:
    def __init__(self, build: Build, period_s: float = 1.0, max_viewers: int = 8) -> None:
        self.build = build
        self.period_s = period_s
        self.max_viewers = max_viewers
        self.viewers: set[Viewer] = set()
        self._task: asyncio.Task[None] | None = None
        self.closed = False  # the server is shutting down: a late viewer's feed ends at once

    def check_room(self) -> None:
        if len(self.viewers) >= self.max_viewers:
            raise too_many_requests(
                f"At most {self.max_viewers} dashboards may watch this server at once; close one.",
                code="too_many_viewers",
                retry_after="5",
            )

    def join(self, tenant: str | None) -> Viewer:
        viewer = Viewer(tenant)
        if self.closed:
            viewer.close()
            return viewer
        self.viewers.add(viewer)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._publish())
        return viewer

    def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)

    async def _publish(self) -> None:
        """While anyone watches: each tick, one snapshot per view, offered to its viewers."""
        while self.viewers:
            views: dict[str | None, list[Viewer]] = {}
            for viewer in self.viewers:
                views.setdefault(viewer.tenant, []).append(viewer)
            for tenant, watching in views.items():
                try:
                    snapshot = await self.build(tenant)
                except Exception:  # a bug in one snapshot must not end every viewer's feed
                    log.exception("dashboard snapshot failed")
                    continue
                for viewer in watching:
                    viewer.offer(snapshot)
            await asyncio.sleep(self.period_s)

    async def aclose(self) -> None:
        """End every viewer's feed (a drain must not wait on dashboards that never close)."""
        self.closed = True
        for viewer in self.viewers:
            viewer.close()
        self.viewers.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
