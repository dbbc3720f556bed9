"""What the dashboard shows: open connections, recent turns stage by stage, the last minute's totals.

Recording sits on the turn path, so it is O(1): a finished turn appends one row to a bounded deque
and adds to its second's bucket; an error adds to a counter. Everything else (percentiles, what a
viewer may see) is computed when a snapshot is taken, which ``core.ops.feed`` does about once a
second while someone watches and never when no one does.

Tenancy: a viewer sees its own tenant's connections and turns in full (ids, stage times, token
counts; never content, which is not recorded at all) and every other tenant's traffic only as
counts, all of them together and unnamed. The minute's totals (turns/s, overhead, errors) are the
server's. In open mode there is one tenant, and the viewer sees everything.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

import msgspec

from loopway.core.ops.turn_view import TurnView
from loopway.engines.base import ReplicaStatus

WINDOW_S = 60
RECENT_TURNS = 200  # kept; a snapshot shows the newest ``SHOWN_TURNS`` of them the viewer may see
SHOWN_TURNS = 40
SHOWN_CONNECTIONS = 100
OVERHEAD_SAMPLES = 8192  # the last minute's per-turn overheads kept for p50/p99 (the newest, at most)
ORDER = ("validate", "queue", "resolve", "render", "ttft", "decode", "persist")  # a turn's stages in time
OWN = ("validate", "resolve", "render", "persist")  # loopway's own work; queue waits, ttft and decode are the engine's


class ConnectionView(msgspec.Struct, kw_only=True):
    """One open connection as the dashboard shows it (``OpenConnection.view``)."""

    id: str
    transport: str
    tenant: str
    opened_at: float  # epoch seconds
    lanes: int
    in_flight: int
    queued: int
    cache_items: int
    cache_tokens: int
    turns: int


class TurnRow(msgspec.Struct, kw_only=True, gc=False):
    id: str
    tenant: str
    transport: str
    model: str
    status: str
    error: str | None
    finished_at: float  # epoch seconds
    stages: dict[str, float]  # milliseconds, in ``ORDER``
    own_ms: float  # loopway's own time: validate, resolve, render, persist
    engine_ms: float  # time to first token and decode
    input_tokens: int
    cached_tokens: int
    output_tokens: int


class _Second:
    """One second's counts."""

    __slots__ = ("at", "turns", "input", "cached", "output", "errors", "tenants", "faults")

    def __init__(self, at: int) -> None:
        self.at = at
        self.turns = self.input = self.cached = self.output = 0
        self.errors: Counter[str] = Counter()
        self.tenants: Counter[str] = Counter()  # turns per tenant
        self.faults: Counter[str] = Counter()


class Observatory:
    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._turns: deque[TurnRow] = deque(maxlen=RECENT_TURNS)
        self._seconds: deque[_Second] = deque(maxlen=WINDOW_S + 1)
        self._overheads: deque[tuple[float, float]] = deque(maxlen=OVERHEAD_SAMPLES)
        self.in_flight: Counter[str] = Counter()  # turns running, by transport

    # Recording (the turn path) ----------------------------------------------------------------

    def _now(self) -> _Second:
        at = int(self._clock())
        if not self._seconds or self._seconds[-1].at != at:
            self._seconds.append(_Second(at))
        return self._seconds[-1]

    def turn_finished(self, turn: TurnView, transport: str) -> None:
        now = self._clock()
        usage, times, response = turn.response.usage, turn.times, turn.response
        stages = {stage: round(getattr(times, stage), 3) for stage in ORDER}
        own = sum(stages[stage] for stage in OWN)
        error = response.error.code if response.error is not None else None
        cached = usage.input_tokens_details.cached_tokens
        row = TurnRow(
            id=turn.id,
            tenant=turn.tenant,
            transport=transport,
            model=turn.request.model,
            status=response.status,
            error=error,
            finished_at=now,
            stages=stages,
            own_ms=round(own, 3),
            engine_ms=round(stages["ttft"] + stages["decode"], 3),
            input_tokens=usage.input_tokens,
            cached_tokens=cached,
            output_tokens=usage.output_tokens,
        )
        self._turns.append(row)
        self._overheads.append((now, own))
        second = self._now()
        second.turns += 1
        second.input += usage.input_tokens
        second.cached += cached
        second.output += usage.output_tokens
        second.tenants[turn.tenant] += 1
        if error is not None:
            second.errors[error] += 1

    def error(self, code: str | None, kind: str) -> None:
        """An error answered to a client (HTTP status or a socket's ``error`` event)."""
        self._now().errors[code or kind] += 1

    def fault(self, kind: str) -> None:
        self._now().faults[kind] += 1

    # Snapshots --------------------------------------------------------------------------------

    def snapshot(
        self,
        viewer: str | None,
        connections: Iterable[ConnectionView],
        store: dict[str, Any],
        replicas: list[ReplicaStatus],
    ) -> dict[str, Any]:
        """What one viewer sees; ``viewer`` None sees every tenant in full (open mode)."""
        now = self._clock()
        mine = [c for c in connections if viewer is None or c.tenant == viewer]
        others = [c for c in connections if viewer is not None and c.tenant != viewer]
        shown = sorted(mine, key=lambda c: -c.opened_at)[:SHOWN_CONNECTIONS]
        turns = [t for t in reversed(self._turns) if viewer is None or t.tenant == viewer][:SHOWN_TURNS]
        return {
            "at": now,
            "viewer": viewer,
            "connections": {
                "open": len(mine),
                "shown": [msgspec.structs.asdict(c) | {"age_s": round(now - c.opened_at, 1)} for c in shown],
                "other_tenants": _counts(others, self._seconds, viewer, now),
            },
            "in_flight": dict(self.in_flight),
            "turns": [msgspec.to_builtins(t) for t in turns],
            "totals": self._totals(now),
            "store": store,
            "replicas": [msgspec.to_builtins(r) for r in replicas],
        }

    def _totals(self, now: float) -> dict[str, Any]:
        recent = [s for s in self._seconds if s.at > now - WINDOW_S]
        span = max(1.0, min(WINDOW_S, now - recent[0].at)) if recent else float(WINDOW_S)
        input_tokens = sum(s.input for s in recent)
        cached = sum(s.cached for s in recent)
        overheads = sorted(own for at, own in self._overheads if at > now - WINDOW_S)
        errors: Counter[str] = Counter()
        faults: Counter[str] = Counter()
        for second in recent:
            errors.update(second.errors)
            faults.update(second.faults)
        return {
            "window_s": round(span, 1),
            "turns": sum(s.turns for s in recent),
            "turns_per_s": round(sum(s.turns for s in recent) / span, 2),
            "input_tokens_per_s": round(input_tokens / span, 1),
            "output_tokens_per_s": round(sum(s.output for s in recent) / span, 1),
            "overhead_p50_ms": _percentile(overheads, 0.50),
            "overhead_p99_ms": _percentile(overheads, 0.99),
            "cache_hit_rate": round(cached / input_tokens, 4) if input_tokens else None,
            "errors": dict(errors.most_common()),
            "faults": dict(faults.most_common()),
        }


def _counts(others: list[ConnectionView], seconds: Iterable[_Second], viewer: str | None, now: float) -> dict | None:
    """Every other tenant's traffic together, as counts only (not even their names)."""
    if viewer is None:
        return None
    tenants = {c.tenant for c in others}
    turns = 0
    for second in seconds:
        if second.at > now - WINDOW_S:
            for tenant, count in second.tenants.items():
                if tenant != viewer:
                    tenants.add(tenant)
                    turns += count
    return {
        "tenants": len(tenants),
        "connections": len(others),
        "in_flight": sum(c.in_flight for c in others),
        "turns": turns,
    }


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)
