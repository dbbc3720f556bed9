"""WebSocket lanes (``stream_id``): FIFO per lane, lanes concurrent, a cap on responses in flight.

Sans-I/O: the scheduler only decides which submitted job may start; the session runs them.

| rule | source |
|---|---|
| same lane: FIFO, never overlapping | websocket-mode guide (stream_id) |
| different lanes: may run concurrently | same |
| at most 16 in flight per connection; more are queued, not refused | same |
| at most 32 distinct named lanes per connection (default lane not counted) | same → ``LaneLimitReached`` |
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

J = TypeVar("J")

DEFAULT_LANE: str | None = None


class LaneLimitReached(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"This WebSocket connection has reached its maximum number of distinct stream IDs ({limit}). "
            "Reuse an existing stream_id or open a new connection."
        )
        self.limit = limit


class LaneScheduler(Generic[J]):
    """Which submitted jobs may start: ``submit`` a job on its lane, ``done`` when one ends; each
    returns the jobs that start now (first in first out per lane, never two of a lane at once, at
    most ``max_in_flight`` in all). It runs nothing itself, so every rule is tested without a socket.
    """

    def __init__(self, max_in_flight: int = 16, max_named_lanes: int = 32) -> None:
        self.max_in_flight = max_in_flight
        self.max_named_lanes = max_named_lanes
        self._queues: dict[str | None, deque[tuple[int, J]]] = {}
        self._busy: set[str | None] = set()
        self._named: set[str] = set()
        self._order = 0

    @property
    def in_flight(self) -> int:
        return len(self._busy)

    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def would_wait(self, lane: str | None) -> bool:
        """Whether a job submitted on ``lane`` now would be queued rather than started."""
        return lane in self._busy or bool(self._queues.get(lane)) or len(self._busy) >= self.max_in_flight

    def admit(self, lane: str | None) -> None:
        """Check a lane may be used, counting a new named lane; raises ``LaneLimitReached``."""
        if lane is not None and lane not in self._named:
            if len(self._named) >= self.max_named_lanes:
                raise LaneLimitReached(self.max_named_lanes)
            self._named.add(lane)

    def submit(self, lane: str | None, job: J, *, front: bool = False) -> list[tuple[str | None, J]]:
        """Queue a job; returns the jobs that may start now. ``front`` jumps the lane's queue."""
        self.admit(lane)
        queue = self._queues.setdefault(lane, deque())
        self._order += 1
        if front:
            queue.appendleft((-self._order, job))
        else:
            queue.append((self._order, job))
        return self._startable()

    def finish(self, lane: str | None) -> list[tuple[str | None, J]]:
        """The lane's running job ended; returns the jobs that may start now."""
        self._busy.discard(lane)
        return self._startable()

    def _startable(self) -> list[tuple[str | None, J]]:
        started = []
        while len(self._busy) < self.max_in_flight:
            waiting = [(q[0][0], lane) for lane, q in self._queues.items() if q and lane not in self._busy]
            if not waiting:
                break
            _, lane = min(waiting, key=lambda w: w[0])  # oldest head first, across lanes
            _, job = self._queues[lane].popleft()
            self._busy.add(lane)
            started.append((lane, job))
        return started
