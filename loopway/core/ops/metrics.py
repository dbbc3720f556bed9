"""What the server counts: Prometheus metrics and one log line per finished response.

Every metric is prefixed ``loopway_`` and lives in the app's own registry, so several servers in
one process (tests, benchmarks) never collide. Nothing here sees keys or request bodies.

With ``--workers N`` each worker writes its numbers to files in a directory the supervisor made
(prometheus_client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``), and ``/metrics``, whichever
worker answers it, reads them all: counters and histograms summed over the workers, the gauges of
open connections and lanes one series per worker (a ``pid`` label; ``sum`` them for the server).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from loopway.core.ops.timing import STAGES
from loopway.core.ops.turn_view import TurnView

log = logging.getLogger("loopway.responses")

_GC_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1)
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class TurnRecord(msgspec.Struct, gc=False):
    """The one log line per finished response (``extra={"turn": ...}``; the JSON format encodes it)."""

    response_id: str
    status: str
    transport: str
    model: str
    previous_response_id: str | None
    stored: bool
    stages_ms: dict[str, float]
    usage: dict[str, int]


class Metrics:
    def __init__(self, multiprocess_dir: str | None = None) -> None:
        """``multiprocess_dir``: the shared directory of a multi-worker server (set in the environment
        as ``PROMETHEUS_MULTIPROC_DIR`` before prometheus_client was imported)."""
        self.multiprocess_dir = multiprocess_dir
        self._watched: tuple[Callable[[], int], Callable[[], int]] | None = None
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
        self.recent = Counter(
            "loopway_http_continuation_cache",
            "HTTP previous_response_id turns by whether the parent was still rendered in this process.",
            ["result"],
            registry=self.registry,
        )
        self.connections = Gauge(
            "loopway_open_connections", "Open WebSocket connections.", registry=self.registry, multiprocess_mode="all"
        )
        self.lanes = Gauge(
            "loopway_open_lanes",
            "Lanes in use on open WebSocket connections.",
            registry=self.registry,
            multiprocess_mode="all",
        )
        self.gc_pause = Histogram(
            "loopway_gc_pause_seconds",
            "Pauses of the cyclic garbage collector, by generation.",
            ["generation"],
            buckets=_GC_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "loopway_errors",
            "Errors answered to clients (HTTP and WebSocket error events), by code (or type, without one).",
            ["code"],
            registry=self.registry,
        )
        self.faults = Counter(
            "loopway_faults_injected",
            "Faults injected on purpose (--faults, or a request's metadata), by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.mcp_calls = Counter(
            "loopway_mcp_calls",
            "MCP tool calls loopway ran, by outcome (completed, or the error's type).",
            ["outcome"],
            registry=self.registry,
        )
        self.mcp_call_latency = Histogram(
            "loopway_mcp_call_seconds", "MCP tool calls, from start to answer.", buckets=_BUCKETS, registry=self.registry
        )
        self.mcp_listings = Counter(
            "loopway_mcp_listings", "MCP servers' tools listed, by outcome.", ["outcome"], registry=self.registry
        )
        self._upstream_metrics()
        self._stage_children = {stage: self.stage.labels(stage) for stage in STAGES}
        self._response_children: dict[tuple[str, str], Any] = {}

    def _upstream_metrics(self) -> None:
        """Per upstream replica (``engines.upstream.fleet`` reports through the methods below)."""
        self.upstream_requests = Counter(
            "loopway_upstream_requests",
            "Requests to upstream replicas by outcome: ok, refused (4xx), failed (before the first "
            "byte), broken (after it), probe_failed.",
            ["replica", "outcome"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "loopway_upstream_first_byte_seconds",
            "From sending a request to a replica to its first event.",
            ["replica"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.upstream_input = Counter(
            "loopway_upstream_input_tokens", "Prompt tokens replicas reported.", ["replica"], registry=self.registry
        )
        self.upstream_cached = Counter(
            "loopway_upstream_cached_tokens",
            "Prompt tokens replicas reported served from their prefix cache.",
            ["replica"],
            registry=self.registry,
        )
        self.upstream_routing = Counter(
            "loopway_upstream_routing",
            "Routing decisions: kept (the conversation's replica), moved (it was down), new (a "
            "connection's first pick), hashed or spilled (stateless), round-robin, least-loaded.",
            ["decision"],
            registry=self.registry,
        )
        self.upstream_in_flight_gauge = Gauge(
            "loopway_upstream_in_flight",
            "Requests open on each replica.",
            ["replica"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.upstream_healthy_gauge = Gauge(
            "loopway_upstream_healthy",
            "1 while a replica takes requests, 0 while it is down.",
            ["replica"],
            registry=self.registry,
            multiprocess_mode="livemin",
        )

    def error(self, code: str) -> None:
        self.errors.labels(code).inc()

    def mcp_call(self, outcome: str, seconds: float) -> None:
        self.mcp_calls.labels(outcome).inc()
        self.mcp_call_latency.observe(seconds)

    def mcp_listing(self, outcome: str) -> None:
        self.mcp_listings.labels(outcome).inc()

    def fault_injected(self, kind: str) -> None:
        self.faults.labels(kind).inc()

    def upstream_request(self, replica: str, outcome: str) -> None:
        self.upstream_requests.labels(replica, outcome).inc()

    def upstream_first_byte(self, replica: str, seconds: float) -> None:
        self.upstream_latency.labels(replica).observe(seconds)

    def upstream_tokens(self, replica: str, input_tokens: int, cached_tokens: int) -> None:
        self.upstream_input.labels(replica).inc(input_tokens)
        self.upstream_cached.labels(replica).inc(cached_tokens)

    def upstream_routed(self, decision: str) -> None:
        self.upstream_routing.labels(decision).inc()

    def upstream_in_flight(self, replica: str, change: int) -> None:
        self.upstream_in_flight_gauge.labels(replica).inc(change)

    def upstream_healthy(self, replica: str, healthy: bool) -> None:
        self.upstream_healthy_gauge.labels(replica).set(1 if healthy else 0)

    def watch_gc(self) -> Callable[[], None]:
        """Time every collection (a callback per GC run; a pause is the tail's usual suspect).

        Returns the function that stops watching."""
        started = [0.0]
        children = [self.gc_pause.labels(str(generation)) for generation in range(3)]

        def callback(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                children[info["generation"]].observe(time.perf_counter() - started[0])

        gc.callbacks.append(callback)
        return lambda: gc.callbacks.remove(callback)

    def watch_connections(self, connections: Callable[[], int], lanes: Callable[[], int]) -> None:
        """Read the open connections and their lanes at scrape time (nothing to keep in step).

        Across workers a scrape cannot call another process's functions: each worker stores its own
        values every second (``refresh``) and before it answers a scrape."""
        if self.multiprocess_dir:
            self._watched = (connections, lanes)
        else:
            self.connections.set_function(connections)
            self.lanes.set_function(lanes)

    def refresh(self) -> None:
        if self._watched is not None:
            self.connections.set(self._watched[0]())
            self.lanes.set(self._watched[1]())

    def turn_finished(self, turn: TurnView, transport: str) -> None:
        times = turn.times
        for stage, child in self._stage_children.items():
            if stage != "persist":  # observed when the write lands (write-behind on WebSocket)
                child.observe(getattr(times, stage) / 1000)
        status = turn.response.status
        counter = self._response_children.get((status, transport))
        if counter is None:
            counter = self._response_children[(status, transport)] = self.responses.labels(status, transport)
        counter.inc()
        if log.isEnabledFor(logging.INFO):
            log.info("response %s %s", turn.id, status, extra={"turn": self._record(turn, transport)})

    @staticmethod
    def _record(turn: TurnView, transport: str) -> TurnRecord:
        usage = turn.response.usage
        return TurnRecord(
            response_id=turn.id,
            status=turn.response.status,
            transport=transport,
            model=turn.request.model,
            previous_response_id=turn.request.previous_response_id,
            stored=turn.request.store,
            stages_ms={stage: round(value, 3) for stage, value in msgspec.structs.asdict(turn.times).items()},
            usage={"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
        )

    def persisted(self, seconds: float) -> None:
        self._stage_children["persist"].observe(seconds)

    def cache_lookup(self, hit: bool) -> None:
        self.cache.labels("hit" if hit else "miss").inc()

    def recent_lookup(self, hit: bool) -> None:
        self.recent.labels("hit" if hit else "miss").inc()

    def render(self) -> bytes:
        if not self.multiprocess_dir:
            return generate_latest(self.registry)
        self.refresh()
        every_worker = CollectorRegistry()
        multiprocess.MultiProcessCollector(every_worker, path=self.multiprocess_dir)
        return generate_latest(every_worker)
