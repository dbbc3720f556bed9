"""Events leaving a WebSocket connection: per token when the server is idle, coalesced under load.

Each connection has an ``Outbox``. Events put in it leave in as few writes as the load allows:

- **Idle** (the event loop's thread used less than half a core lately): a delta with nothing
  waiting before it is written at once; anything else flushes at the end of the current loop
  iteration, so a burst produced in one step (a turn's opening events, its closing ones) is one
  write.
- **Busy**: the outbox waits for the process-wide flush tick (``--ws-flush-ms``); adjacent deltas of
  the same part that are ready within one tick merge into one event, and every waiting connection is
  written in one pass. A merged event takes the first's ``sequence_number``; later events of that
  response are renumbered so the stream stays gapless.

Nothing is held back longer than one tick, and no text is ever split or reordered. The load signal is
the loop thread's own CPU time (``time.thread_time``), sampled every 100 ms, with hysteresis so the
mode does not flap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from msgspec import UNSET

from loopway.protocol.events import (
    Event,
    FunctionCallArgumentsDelta,
    OutputTextDelta,
    ReasoningSummaryTextDelta,
    ReasoningTextDelta,
    ResponseCreated,
    SteerFailed,
    encode_event,
)

BUSY_ABOVE, CALM_BELOW, SAMPLE_S = 0.5, 0.3, 0.1


class Wire(Protocol):
    """Where an outbox writes: a connection that frames UTF-8 payloads as text messages."""

    @property
    def open(self) -> bool: ...
    @property
    def paused(self) -> bool: ...
    async def drained(self) -> None: ...
    def write_texts(self, payloads: list[bytes]) -> None: ...
    def abort(self) -> None:
        """Cut the connection at once, with no close frame (an injected ``drop``)."""


class FlushClock:
    """Process-wide: whether the loop is busy, and one timer that flushes every waiting outbox."""

    def __init__(self, tick_s: float, load: Callable[[], float] | None = None) -> None:
        self.tick_s = tick_s
        self.busy = False
        self._load = load  # for tests: the loop thread's CPU share, 0..1
        self._waiting: dict[Outbox, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._sampler: asyncio.TimerHandle | None = None
        self._last = (0.0, 0.0)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin sampling the load on ``loop`` (idempotent; off when the tick is 0)."""
        if self._sampler is None and self.tick_s > 0:
            self._last = (time.monotonic(), time.thread_time())
            self._sampler = loop.call_later(SAMPLE_S, self._sample, loop)

    def stop(self) -> None:
        for handle in (self._sampler, self._timer):
            if handle is not None:
                handle.cancel()
        self._sampler = self._timer = None

    def _sample(self, loop: asyncio.AbstractEventLoop) -> None:
        now, cpu = time.monotonic(), time.thread_time()
        (then, cpu_then), self._last = self._last, (now, cpu)
        if self._load is not None:
            share = self._load()
        else:
            share = (cpu - cpu_then) / (now - then) if now > then else 0.0
        self.busy = share >= BUSY_ABOVE if not self.busy else share > CALM_BELOW
        self._sampler = loop.call_later(SAMPLE_S, self._sample, loop)

    def defer(self, outbox: Outbox) -> None:
        self._waiting[outbox] = None
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.tick_s, self._tick)

    def _tick(self) -> None:
        self._timer = None
        waiting, self._waiting = self._waiting, {}
        for outbox in waiting:
            outbox.flush()


_MERGEABLE = (OutputTextDelta, FunctionCallArgumentsDelta, ReasoningTextDelta, ReasoningSummaryTextDelta)


def merge(into: Event, event: Event) -> bool:
    """Append ``event``'s delta to ``into`` when both are deltas of the same part of the same stream."""
    if type(into) is not type(event) or not isinstance(event, _MERGEABLE) or into.stream_id != event.stream_id:
        return False
    if into.item_id != event.item_id or into.output_index != event.output_index:  # type: ignore[attr-defined]
        return False
    if getattr(into, "content_index", None) != getattr(event, "content_index", None):
        return False
    if getattr(into, "summary_index", None) != getattr(event, "summary_index", None):
        return False
    into.delta += event.delta  # type: ignore[attr-defined]
    if isinstance(event, OutputTextDelta):
        into.logprobs.extend(event.logprobs)  # type: ignore[attr-defined]
    return True


class Outbox:
    """One connection's events on their way out (see the module docstring)."""

    def __init__(self, wire: Wire, clock: FlushClock) -> None:
        self.wire = wire
        self.clock = clock
        self._pending: list[Event] = []
        self._scheduled = False
        self._merged: dict[object, int] = {}  # per stream: events merged away in its current response

    def put(self, event: Event) -> None:
        if not self.wire.open:
            return
        self._renumber(event)
        if not self._pending and not self.clock.busy and isinstance(event, _MERGEABLE):
            self.wire.write_texts([encode_event(event)])  # a token on its own: out now, no callback
            return
        if self._pending and self.clock.busy and merge(self._pending[-1], event):
            self._merged[event.stream_id] = self._merged.get(event.stream_id, 0) + 1
        else:
            self._pending.append(event)
        if self._scheduled:
            return
        self._scheduled = True
        if self.clock.busy:
            self.clock.defer(self)
        else:
            asyncio.get_running_loop().call_soon(self.flush)

    async def send(self, event: Event) -> None:
        """Put, then wait while the client is not reading (its buffer is full): backpressure."""
        self.put(event)
        if self.wire.paused:
            self.flush()
            await self.wire.drained()

    def flush(self) -> None:
        self._scheduled = False
        if self._pending:
            pending, self._pending = self._pending, []
            self.wire.write_texts([encode_event(event) for event in pending])

    def _renumber(self, event: Event) -> None:
        if isinstance(event, ResponseCreated):
            self._merged[event.stream_id] = 0
        elif event.sequence_number is not UNSET and not isinstance(event, SteerFailed):  # a refusal stands alone
            event.sequence_number -= self._merged.get(event.stream_id, 0)  # type: ignore[operator]
