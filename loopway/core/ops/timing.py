"""Per-turn stage times, so tests and benchmarks can see where a turn spends its time."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import msgspec

STAGES = ("validate", "resolve", "render", "queue", "ttft", "decode", "persist")


class StageTimes(msgspec.Struct):
    """Milliseconds per stage; ``pre`` and ``post`` are the API layer's own work around the engine."""

    validate: float = 0.0
    resolve: float = 0.0
    render: float = 0.0
    queue: float = 0.0
    ttft: float = 0.0
    decode: float = 0.0
    persist: float = 0.0

    @property
    def pre(self) -> float:
        return self.validate + self.resolve + self.render

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, stage, getattr(self, stage) + (time.perf_counter() - start) * 1000)

    def header(self, stages: tuple[str, ...] = STAGES) -> str:
        """A ``Server-Timing`` header value."""
        return ", ".join(f"{stage};dur={getattr(self, stage):.3f}" for stage in stages)


class StageLog:
    """The stage times of the most recent turns, by response id (bounded; for tests and benchmarks).

    Entries are the live ``StageTimes`` objects: stages that finish later (decode, persist) show up
    in them when they do.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._times: OrderedDict[str, StageTimes] = OrderedDict()
        self._capacity = capacity

    def add(self, response_id: str, times: StageTimes) -> None:
        self._times[response_id] = times
        if len(self._times) > self._capacity:
            self._times.popitem(last=False)

    def get(self, response_id: str) -> StageTimes | None:
        return self._times.get(response_id)

    def __len__(self) -> int:
        return len(self._times)

    def ids(self) -> list[str]:
        return list(self._times)
