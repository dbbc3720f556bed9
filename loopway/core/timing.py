"""Per-turn stage times, so tests and benchmarks can see where a turn spends its time."""

from __future__ import annotations

import time
from contextlib import contextmanager
from collections.abc import Iterator

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

    def header(self) -> str:
        """A ``Server-Timing`` header value."""
        return ", ".join(f"{stage};dur={getattr(self, stage):.3f}" for stage in STAGES)
