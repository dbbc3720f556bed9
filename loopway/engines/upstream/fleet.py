"""Several upstream replicas behind one engine: routing for cache locality, health, failover.

What a conversation gains from landing where it was before is the replica's prefix (KV) cache:
the engine recomputes only the new tokens. So, with ``--route affinity`` (the default):

- a WebSocket connection (``EngineRequest.session``) takes the least-loaded healthy replica at its
  first turn and keeps it for every turn (a bounded table of pins, per process). Load, for a new
  session, is first the sessions pinned there that sent a turn in the last two minutes, then the
  requests in flight: in flight alone changes by the second, and placing sessions by it piles
  them up unevenly on replicas that happened to be between turns;
- a ``previous_response_id`` continuation goes where its parent was served
  (``EngineRequest.replica``, recorded with the stored response, so this holds across loopway
  replicas sharing a store);
- anything else goes by rendezvous hashing of its rendered prefix (the instructions, tools and
  first input item: ``EngineRequest.route_prefix`` tokens), so a stateless client resending one
  conversation's history keeps landing on one replica, with bounded loads twice over: a new
  conversation takes the first replica in its key's ranking that holds less than its share
  (⌈(active + 1) ÷ replicas⌉) of the recently active conversations, and keeps it (the placement is
  remembered); and when several requests with one prefix are in flight at once (a hot prefix: one
  conversation has one turn in flight at a time), each spills to the next replica in the ranking
  while its home has more than 1.25 × the average requests in flight, so a hot prefix cannot
  overload a replica while conversations keep their cache.

``round-robin`` and ``least-loaded`` ignore all of that (baselines, and engines without a prefix
cache). Whichever the policy, a replica that is down is skipped, and a conversation pinned to it
moves (its prefix is recomputed on the new replica) instead of failing.

A request that fails before its first byte (no connection, a 5xx, a timeout, a stream that ends
or breaks before its first event) marks that replica down and is retried on another: the client
sees nothing of it. An upstream 4xx is the client's own error and is never retried. A periodic
probe (``GET /models``) brings replicas back, or finds them down before a request does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from loopway.engines.base import EngineError, EngineRequest, ReplicaStatus
from loopway.engines.upstream import routing
from loopway.engines.upstream.health import Health
from loopway.protocol.errors import ApiError
from loopway.tokens.sequence import BLOCK_SIZE

ROUTES = ("affinity", "round-robin", "least-loaded")
MAX_PLACEMENTS = 100_000  # connections and prefixes remembered per process; the oldest are forgotten first
ACTIVE_S = 120.0  # a conversation that sent a turn this recently is part of its replica's load


class FleetObserver(Protocol):
    """Where the fleet reports (``core.ops.metrics`` implements it); every method is cheap and sync."""

    def upstream_request(self, replica: str, outcome: str) -> None: ...

    def upstream_first_byte(self, replica: str, seconds: float) -> None: ...

    def upstream_tokens(self, replica: str, input_tokens: int, cached_tokens: int) -> None: ...

    def upstream_routed(self, decision: str) -> None: ...

    def upstream_in_flight(self, replica: str, change: int) -> None: ...

    def upstream_healthy(self, replica: str, healthy: bool) -> None: ...


class _Silent:
    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


class Connection(Protocol):
    """One replica's connection (``http.Upstream``): a stream opened, its events, a probe."""

    async def open(self, path: str, body: dict[str, Any]) -> Any: ...

    def events(self, response: Any) -> AsyncIterator[dict[str, Any]]: ...

    async def alive(self, timeout_s: float) -> bool: ...

    async def aclose(self) -> None: ...


class Replica:
    def __init__(self, url: str, upstream: Connection) -> None:
        self.name = url.rstrip("/")
        self.upstream = upstream
        self.health = Health()
        self.in_flight = 0


class Stream:
    """An accepted upstream stream: its first event is already in hand, the rest follow."""

    def __init__(
        self,
        fleet: Fleet,
        replica: Replica,
        first: dict[str, Any],
        rest: AsyncIterator[dict[str, Any]],
        release: Callable[[], None],
    ) -> None:
        self.fleet, self.replica = fleet, replica
        self._first, self._rest = first, rest
        # Its place is given back once: when its events end, or when a turn dropped before reading
        # them (its client left in between) is collected; the counts steer routing. (The upstream
        # response, already being read, is closed by the event loop's finalizer of its generator.)
        self._give_back = weakref.finalize(self, _give_back, fleet, replica, release)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        try:
            yield self._first
            async for event in self._rest:
                yield event
        except EngineError:
            self.fleet.failed(self.replica, "broken")
            raise
        finally:
            with contextlib.suppress(Exception):
                await self._rest.aclose()  # type: ignore[attr-defined]
            self._give_back()


def _give_back(fleet: Fleet, replica: Replica, release: Callable[[], None]) -> None:
    fleet.done(replica)
    release()


class Fleet:
    def __init__(
        self,
        urls: Sequence[str],
        upstream_of: Callable[[str], Connection],
        *,
        route: str = "affinity",
        attempts: int = 3,
        probe_s: float = 5.0,
        observer: FleetObserver | None = None,
    ) -> None:
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r} (use {', '.join(ROUTES)})")
        self.replicas = [Replica(url, upstream_of(url)) for url in urls]
        self.by_name = {r.name: r for r in self.replicas}
        self.route = route
        self.attempts = max(1, attempts)
        self.probe_s = probe_s
        self.observer: FleetObserver = observer or _Silent()
        self._sessions = routing.Placements(MAX_PLACEMENTS, ACTIVE_S)  # WebSocket connections
        self._prefixes = routing.Placements(MAX_PLACEMENTS, ACTIVE_S)  # stateless conversations, by prefix key
        self._prefix_flight: dict[bytes, int] = {}  # requests in flight per prefix key (hashed ones)
        self._picks = 0
        self._last_picked: dict[str, int] = {}
        self._prober: asyncio.Task[None] | None = None
        for replica in self.replicas:
            self.observer.upstream_healthy(replica.name, True)

    # Choosing ------------------------------------------------------------------------------------

    def statuses(self) -> list[ReplicaStatus]:
        return [ReplicaStatus(r.name, r.health.up, r.in_flight) for r in self.replicas]

    def _available(self, exclude: set[str]) -> list[Replica]:
        now = time.monotonic()
        fresh = [r for r in self.replicas if r.name not in exclude]
        healthy = [r for r in fresh if r.health.available(now)]
        if healthy:
            return healthy
        # Every untried replica is down: try the one whose backoff ends first rather than fail.
        return sorted(fresh or self.replicas, key=lambda r: r.health.retry_at)[:1]

    def choose(self, request: EngineRequest, exclude: set[str], key: bytes | None = None) -> tuple[Replica, str]:
        """The replica for this attempt and why (kept, moved, new, hashed, spilled, …); ``key``: the
        request's ``prefix_key``, when the caller has it already."""
        candidates = self._available(exclude)
        names = [r.name for r in candidates]
        loads = {r.name: r.in_flight for r in candidates}
        if self.route == "round-robin":
            name, decision = names[self._picks % len(names)], "round-robin"
        elif self.route == "least-loaded":
            name, decision = routing.least_loaded(names, loads, self._last_picked), "least-loaded"
        else:
            name, decision = self._affine(request, names, loads, key)
        self._picks += 1
        self._last_picked[name] = self._picks
        return self.by_name[name], decision

    def _affine(self, request: EngineRequest, names: list[str], loads: dict[str, int], key: bytes | None) -> tuple[str, str]:
        now = time.monotonic()
        if request.session is None and request.replica is None:
            return self._hashed(key or prefix_key(request), names, loads, now)
        # A WebSocket connection is placed as a session, an HTTP continuation as its conversation.
        table: routing.Placements
        if request.session is not None:
            table, placed = self._sessions, request.session
        else:
            table, placed = self._prefixes, key or prefix_key(request)
        pinned = self._sessions.get(request.session) if request.session is not None else None
        preferred = pinned or request.replica  # a connection's replica, else its parent's
        if preferred in names:
            name, decision = preferred, "kept"
        else:
            active = table.active(names, now)
            balance = {n: (active[n], loads[n]) for n in names}  # in flight alone changes by the second
            name = routing.least_loaded(names, balance, self._last_picked)
            decision = "new" if preferred is None else "moved"
        table.place(placed, name, now)  # and it counts as active there
        return name, decision

    def _hashed(self, key: bytes, names: list[str], loads: dict[str, int], now: float) -> tuple[str, str]:
        ranked = routing.rendezvous(key, names)
        home = self._prefixes.get(key)
        decision = "moved" if home is not None and home not in names else "hashed"
        if home not in names:
            home = routing.bounded(ranked, self._prefixes.active(names, now), routing.PLACE_FACTOR)
        self._prefixes.place(key, home, now)
        if self._prefix_flight.get(key, 0) <= 1:  # only this request: a conversation's turn stays home
            return home, decision
        chosen = routing.bounded([home, *(n for n in ranked if n != home)], loads)  # a hot prefix spills
        return chosen, decision if chosen == home else "spilled"

    def _in_flight(self, key: bytes | None) -> Callable[[], None]:
        """Count a hashed request in flight under its prefix key; returns what uncounts it."""
        if key is None:
            return lambda: None
        self._prefix_flight[key] = self._prefix_flight.get(key, 0) + 1

        def release() -> None:
            left = self._prefix_flight.pop(key) - 1
            if left:
                self._prefix_flight[key] = left

        return release

    # Opening ---------------------------------------------------------------------------------------

    async def open(self, path: str, body: Any, request: EngineRequest) -> Stream:
        """Send to a replica and wait for the first event; on a failure before it, the next replica.

        ``body`` is a dict, or a function of the chosen replica that returns one (a body that
        depends on where it goes, such as an upstream ``previous_response_id``)."""
        tried: set[str] = set()
        failure: EngineError | None = None
        key = prefix_key(request) if self.route == "affinity" and request.session is None else None
        release = self._in_flight(key if request.replica is None else None)  # hashed requests are counted
        try:
            for attempt in range(self.attempts):
                replica, decision = self.choose(request, tried, key)
                tried.add(replica.name)
                try:
                    stream = await self._open_on(replica, path, body(replica) if callable(body) else body, release)
                    self.observer.upstream_routed(decision)  # the attempt that ran: after a failure, "moved"
                    return stream
                except EngineError as exc:
                    failure = exc
                    if len(self.replicas) == 1 and attempt + 1 < self.attempts:
                        await asyncio.sleep(0.05 * 2**attempt)  # one replica: give it a moment
        except BaseException:
            release()
            raise
        release()
        assert failure is not None
        raise failure

    async def _open_on(self, replica: Replica, path: str, body: dict[str, Any], release: Callable[[], None]) -> Stream:
        replica.health.trying(time.monotonic())
        replica.in_flight += 1
        self.observer.upstream_in_flight(replica.name, 1)
        started = time.perf_counter()
        try:
            response = await replica.upstream.open(path, body)
            events = replica.upstream.events(response)
            try:
                first = await anext(events)
            except StopAsyncIteration:
                raise EngineError(f"The upstream at {replica.name} ended its stream before the first event.") from None
        except BaseException as exc:
            if isinstance(exc, ApiError):  # the client's error: the replica is fine
                self.observer.upstream_request(replica.name, "refused")
            elif isinstance(exc, EngineError):
                self.failed(replica, "failed")
            self.done(replica)
            raise
        self.observer.upstream_first_byte(replica.name, time.perf_counter() - started)
        self.observer.upstream_request(replica.name, "ok")
        self.succeeded(replica)
        return Stream(self, replica, first, events, release)

    def done(self, replica: Replica) -> None:
        replica.in_flight -= 1
        self.observer.upstream_in_flight(replica.name, -1)

    def failed(self, replica: Replica, outcome: str) -> None:
        """``outcome``: failed (before the first byte), broken (after it) or probe_failed."""
        self.observer.upstream_request(replica.name, outcome)
        if replica.health.failed(time.monotonic()):
            self.observer.upstream_healthy(replica.name, False)

    def succeeded(self, replica: Replica) -> None:
        if replica.health.succeeded():
            self.observer.upstream_healthy(replica.name, True)

    def finished(self, replica: Replica, input_tokens: int, cached_tokens: int) -> None:
        self.observer.upstream_tokens(replica.name, input_tokens, cached_tokens)

    # Probing ---------------------------------------------------------------------------------------

    def start(self) -> None:
        if self.probe_s > 0 and self._prober is None:
            self._prober = asyncio.get_running_loop().create_task(self._probe_forever())

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.gather(*(self.probe(r) for r in self.replicas))
            await asyncio.sleep(self.probe_s)

    async def probe(self, replica: Replica) -> bool:
        alive = await replica.upstream.alive(timeout_s=min(5.0, max(self.probe_s, 1.0)))
        if alive:
            self.succeeded(replica)
        elif replica.health.up or replica.health.available(time.monotonic()):
            self.failed(replica, "probe_failed")
        return alive

    async def aclose(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        for replica in self.replicas:
            await replica.upstream.aclose()


def prefix_key(request: EngineRequest) -> bytes:
    """What identifies a conversation's start: the chained hash of the last full block of its
    rendered prefix, and the ids after it (the part of a block where conversations sharing a
    system prompt first differ)."""
    length = min(request.route_prefix or len(request.tokens), len(request.tokens))
    blocks = length // BLOCK_SIZE
    head = request.tokens.block_hashes()[blocks - 1] if blocks else 0
    return f"{head}:{request.tokens.ids(blocks * BLOCK_SIZE, length)}".encode()
