"""What the server counts: Prometheus metrics and one log line per finished response.

Every metric is prefixed ``loopway_`` and lives in the app's own registry, so several servers in
one process (tests, benchmarks) never collide. Nothing here sees keys or request bodies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from loopway.core.timing import STAGES

if TYPE_CHECKING:
    from loopway.core.pipeline import Turn

log = logging.getLogger("loopway.responses")

_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stage = Histogram(
            "loopway_stage_seconds",
            "Time per turn stage (persist: the store write itself).",
            ["stage"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.responses = Counter(
            "loopway_responses",
            "Finished responses by status and transport.",
            ["status", "transport"],
            registry=self.registry,
        )
        self.cache = Counter(
            "loopway_connection_cache",
            "WebSocket continuations by connection-cache result.",
            ["result"],
            registry=self.registry,
        )
        self.connections = Gauge("loopway_open_connections", "Open WebSocket connections.", registry=self.registry)
        self.lanes = Gauge("loopway_open_lanes", "Lanes in use on open WebSocket connections.", registry=self.registry)

    def watch_connections(self, connections: Callable[[], int], lanes: Callable[[], int]) -> None:
        """Read the open connections and their lanes at scrape time (nothing to keep in step)."""
        self.connections.set_function(connections)
        self.lanes.set_function(lanes)

    def turn_finished(self, turn: Turn, transport: str) -> None:
        times = turn.times
        for stage in STAGES:
            if stage != "persist":  # observed when the write lands (write-behind on WebSocket)
                self.stage.labels(stage).observe(getattr(times, stage) / 1000)
        status = turn.response.status
        self.responses.labels(status, transport).inc()
        log.info(
            "response %s %s",
            turn.id,
            status,
            extra={
                "response_id": turn.id,
                "status": status,
                "transport": transport,
                "model": turn.request.model,
                "previous_response_id": turn.request.previous_response_id,
                "stored": turn.request.store,
                "stages_ms": {stage: round(getattr(times, stage), 3) for stage in STAGES},
                "usage": {
                    "input_tokens": turn.response.usage.input_tokens,
                    "output_tokens": turn.response.usage.output_tokens,
                },
            },
        )

    def persisted(self, seconds: float) -> None:
        self.stage.labels("persist").observe(seconds)

    def cache_lookup(self, hit: bool) -> None:
        self.cache.labels("hit" if hit else "miss").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
