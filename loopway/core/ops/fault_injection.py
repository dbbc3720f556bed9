"""Failing on purpose: ``--faults SPEC`` makes a test server fail the way OpenAI's API fails.

Client developers point an agent harness at a loopway serving ``--faults`` to watch its reconnects,
retries and fallbacks work before production needs them. Sans-I/O: this module parses a SPEC,
draws each request's fault from one seeded RNG (one client's run is the same run every time), and
says what a fault does; each is applied where it belongs (docs/faults.md has the grammar and
recipes):

| fault | what the client sees | applied by |
|---|---|---|
| ``drop`` | the connection cut mid-stream, no close frame (WebSocket, SSE) | ``cuts`` → the transport |
| ``close`` | a close frame 1011 mid-stream (WebSocket) | ``cuts`` → ``transports.ws`` |
| ``failed`` | ``response.failed`` with a ``server_error``, mid-stream | ``wrap`` (the engine's stream) |
| ``http-500``, ``http-503`` | that status before the first byte (a socket: an ``error`` event) | ``refusal`` |
| ``rate-limit`` | 429 with ``retry-after`` (a socket: the ``error`` event with its headers) | ``refusal`` |
| ``slow`` | the first token ``ms`` late | ``wrap`` |
| ``stall`` | ``times`` pauses of ``ms`` between deltas | ``wrap`` |
| ``connection-limit`` | ``websocket_connection_limit_reached``, then close 1001 | ``transports.ws`` |
| ``cache-miss`` | ``previous_response_not_found`` for a continuation | ``refusal`` |

At most one fault per request. ``metadata["loopway_fault"]`` names one for its request (a clause of
the same grammar, 100% unless it gives a rate) when the server allows it (``--fault-metadata on``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from loopway.engines.base import Delta, EngineError, Finish
from loopway.protocol.errors import (
    ApiError,
    invalid_request,
    previous_response_not_found,
    server_error,
    too_many_requests,
    unavailable,
)
from loopway.protocol.events import Event, is_terminal
from loopway.protocol.request import CreateRequest

TRANSPORTS = ("ws", "sse", "http")
APPLIES: dict[str, frozenset[str]] = {
    "drop": frozenset({"ws", "sse"}),
    "close": frozenset({"ws"}),
    "failed": frozenset(TRANSPORTS),
    "http-500": frozenset(TRANSPORTS),
    "http-503": frozenset(TRANSPORTS),
    "rate-limit": frozenset(TRANSPORTS),
    "slow": frozenset(TRANSPORTS),
    "stall": frozenset(TRANSPORTS),
    "connection-limit": frozenset({"ws"}),
    "cache-miss": frozenset(TRANSPORTS),  # continuations only
}
PARAMS: dict[str, frozenset[str]] = {
    "drop": frozenset({"after"}),
    "close": frozenset({"after"}),
    "failed": frozenset({"after"}),
    "rate-limit": frozenset({"retry-after"}),
    "slow": frozenset({"ms"}),
    "stall": frozenset({"ms", "times", "after"}),
}
ANY = "any"  # a rate spread evenly over the faults that apply to a request
METADATA_KEY = "loopway_fault"
RANDOM_AFTER = (1, 24)  # where a fault with no ``after`` fires: a uniform draw of events or deltas

# What api.openai.com answers in these situations (its error-codes guide, and what clients have logged).
SERVER_ERROR = (
    "The server had an error processing your request. Sorry about that! You can retry your request, "
    "or contact us through our help center at help.openai.com if you keep seeing this error."
)
OVERLOADED = "The engine is currently overloaded, please try again later."
FAILED = (
    "An error occurred while processing your request. You can retry your request, or contact us "
    "through our help center at help.openai.com if the error persists."
)


class FaultSpecError(ValueError):
    """A SPEC that does not parse; the message names the clause."""


class StreamCut(Exception):
    """Raised by a turn's events where an injected ``drop`` or ``close`` ends the connection."""

    def __init__(self, fault: Fault, sent: int) -> None:
        super().__init__(f"{fault.kind} after {sent} events")
        self.fault, self.sent = fault, sent


class Fault(msgspec.Struct, frozen=True, kw_only=True):
    """One request's fault, with its parameters drawn."""

    kind: str
    after: int = 1  # drop, close: events sent before the cut; failed, stall: deltas before it
    ms: float = 0.0  # slow, stall
    times: int = 1  # stall: how many pauses, one before each delta from ``after`` on
    retry_after_s: float = 1.0  # rate-limit

    def refusal(self, request: CreateRequest) -> ApiError | None:
        """The error a request is refused with before its first byte, if this fault is one."""
        if self.kind == "http-500":
            return server_error(SERVER_ERROR)
        if self.kind == "http-503":
            return unavailable(OVERLOADED, code=None)
        if self.kind == "rate-limit":
            return rate_limited(request.model, self.retry_after_s)
        if self.kind == "cache-miss" and request.previous_response_id is not None:
            return previous_response_not_found(request.previous_response_id)
        return None

    async def cut(self, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        """A turn's events with this fault's cut in them: ``StreamCut`` where the connection must
        end (each transport ends it its own way); the turn's stream is closed then, as on a client
        that went away."""
        sent = 0
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for event in events:
                if self.cuts(sent, is_terminal(event)):
                    raise StreamCut(self, sent)
                sent += 1
                yield event

    def cuts(self, sent: int, terminal: bool) -> bool:
        """Whether the stream is cut before its next event (``sent`` went out already): at ``after``,
        or before the terminal event of a shorter stream, so the fault always lands mid-stream."""
        return self.kind in ("drop", "close") and (sent >= self.after or terminal)

    def wrap(self, generation: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
        """The engine's stream with this fault in it (failed, slow, stall); others leave it be."""
        if self.kind in ("failed", "slow", "stall"):
            return _faulty(generation, self)
        return generation


async def _faulty(generation: AsyncIterator[Delta], fault: Fault) -> AsyncIterator[Delta]:
    """Deltas as the engine sends them, late (slow), paused (stall) or broken off (failed)."""
    index = 0
    try:
        async for delta in generation:
            index += 1
            if fault.kind == "slow" and index == 1:
                await asyncio.sleep(fault.ms / 1000)
            elif fault.kind == "stall" and fault.after <= index < fault.after + fault.times:
                await asyncio.sleep(fault.ms / 1000)
            elif fault.kind == "failed" and (index > fault.after or isinstance(delta, Finish)):
                raise EngineError(FAILED)
            yield delta
    finally:
        await generation.aclose()  # type: ignore[attr-defined]


def rate_limited(model: str, retry_after_s: float) -> ApiError:
    """OpenAI's 429, with the headers its SDKs read to know how long to wait."""
    milliseconds = max(1, round(retry_after_s * 1000))
    wait = f"{milliseconds}ms" if milliseconds < 1000 else f"{retry_after_s:g}s"
    return too_many_requests(
        f"Rate limit reached for {model} on requests per min (RPM): Limit 60, Used 60, Requested 1. "
        f"Please try again in {wait}.",
        code="rate_limit_exceeded",
        retry_after=str(max(1, math.ceil(retry_after_s))),
        headers={
            "retry-after-ms": str(milliseconds),
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": wait,
        },
    )


# Parsing --------------------------------------------------------------------------------------


class Rule(msgspec.Struct, frozen=True):
    """``KIND[=RATE] PARAM...``: a kind (or ``any``), its share of requests and its fixed parameters."""

    kind: str
    rate: float
    params: dict[str, float]


class FaultPlan(msgspec.Struct, frozen=True):
    seed: int | None
    rules: tuple[Rule, ...]


_CLAUSE_SPLIT = re.compile(r"[;,]")


def parse_spec(spec: str) -> FaultPlan:
    """``seed=N; KIND[=RATE] [NAME=VALUE ...]; ...`` (commas separate clauses too)."""
    seed: int | None = None
    rules: list[Rule] = []
    for clause in (c.strip() for c in _CLAUSE_SPLIT.split(spec)):
        if not clause:
            continue
        if clause.startswith("seed="):
            seed = _number(clause, clause[5:], int)
            continue
        rules.append(parse_rule(clause, default_rate=None))
    total = sum(rule.rate for rule in rules)
    if total > 1 + 1e-9:
        raise FaultSpecError(f"the rates add up to {total:.0%}: at most 100% of requests can fail")
    return FaultPlan(seed=seed, rules=tuple(rules))


def parse_rule(clause: str, default_rate: float | None) -> Rule:
    """One clause; ``default_rate`` applies when it names no rate (a SPEC clause must name one)."""
    head, *words = clause.split()
    kind, _, rate_text = head.partition("=")
    if kind != ANY and kind not in APPLIES:
        raise FaultSpecError(f"{clause!r}: unknown fault {kind!r} (known: {', '.join([*APPLIES, ANY])})")
    if rate_text:
        rate = _rate(clause, rate_text)
    elif default_rate is not None:
        rate = default_rate
    else:
        raise FaultSpecError(f"{clause!r}: give a rate, as in {kind}=5% (of requests)")
    allowed = frozenset().union(*PARAMS.values()) if kind == ANY else PARAMS.get(kind, frozenset())
    params: dict[str, float] = {}
    for word in words:
        name, equals, value = word.partition("=")
        if not equals or name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise FaultSpecError(f"{clause!r}: {word!r} is not a parameter of {kind} (its parameters: {known})")
        params[name] = _number(clause, value, float)
        if params[name] < 0 or (name in ("after", "times") and params[name] != int(params[name])):
            raise FaultSpecError(f"{clause!r}: {name} must be a non-negative {'integer' if name != 'ms' else 'number'}")
    return Rule(kind=kind, rate=rate, params=params)


def _rate(clause: str, text: str) -> float:
    rate = _number(clause, text[:-1], float) / 100 if text.endswith("%") else _number(clause, text, float)
    if not 0 <= rate <= 1:
        raise FaultSpecError(f"{clause!r}: a rate is between 0 and 100% (or 0 and 1)")
    return rate


def _number(clause: str, text: str, kind: Callable[[str], Any]) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise FaultSpecError(f"{clause!r}: {text!r} is not a number") from None


# Drawing --------------------------------------------------------------------------------------


class FaultInjector:
    """Each request's fault: from the plan's seeded RNG, or from the request's own metadata.

    The RNG is drawn the same number of times for every request (one choice, one placement), so
    the n-th request of a run meets the same fault whatever the earlier ones met."""

    def __init__(
        self,
        plan: FaultPlan,
        *,
        from_metadata: bool = False,
        on_fault: Callable[[str], None] | None = None,
        stream: str = "",
    ) -> None:
        """``stream``: a worker's name under ``--workers N``, so each worker draws its own sequence
        (the same seed would otherwise fault the n-th request of every worker alike)."""
        self.plan = plan
        self.from_metadata = from_metadata
        self.on_fault = on_fault
        self._rng = random.Random(f"{plan.seed}:{stream}" if stream else plan.seed)

    @classmethod
    def of(cls, spec: str, from_metadata: bool, stream: str = "") -> FaultInjector | None:
        """None when nothing can fail (no SPEC, no metadata override): the turn path pays nothing."""
        if not spec.strip() and not from_metadata:
            return None
        return cls(parse_spec(spec), from_metadata=from_metadata, stream=stream)

    def draw(self, request: CreateRequest, transport: str) -> Fault | None:
        """``transport``: ws, sse (HTTP streaming) or http (JSON)."""
        chosen = self._requested(request, transport) if self.from_metadata else None
        if chosen is None:
            choice, placement = self._rng.random(), self._rng.random()
            chosen = _pick(self.plan.rules, choice, placement, request, transport)
        if chosen is not None and self.on_fault is not None:
            self.on_fault(chosen.kind)
        return chosen

    def _requested(self, request: CreateRequest, transport: str) -> Fault | None:
        clause = (request.metadata or {}).get(METADATA_KEY)
        if not clause:
            return None
        try:
            rule = parse_rule(clause, default_rate=1.0)
        except FaultSpecError as exc:
            raise invalid_request(f"Invalid 'metadata.{METADATA_KEY}': {exc}", param=f"metadata.{METADATA_KEY}") from None
        return _pick((rule,), self._rng.random(), self._rng.random(), request, transport)


def _eligible(kind: str, request: CreateRequest, transport: str) -> bool:
    if transport not in APPLIES[kind]:
        return False
    return kind != "cache-miss" or request.previous_response_id is not None


def _pick(rules: tuple[Rule, ...], choice: float, placement: float, request: CreateRequest, transport: str) -> Fault | None:
    """The fault whose share of [0, 1) holds ``choice``; ``any`` spreads its rate over the kinds
    that apply to this request."""
    edge = 0.0
    for rule in rules:
        kinds = [k for k in APPLIES if _eligible(k, request, transport)] if rule.kind == ANY else [rule.kind]
        for kind in kinds:
            share = rule.rate / len(kinds) if rule.kind == ANY else rule.rate
            edge += share
            if choice < edge:
                return _fault(kind, rule.params, placement) if _eligible(kind, request, transport) else None
    return None


def _fault(kind: str, params: dict[str, float], placement: float) -> Fault:
    low, high = RANDOM_AFTER
    drawn_after = low + int(placement * (high - low + 1))
    return Fault(
        kind=kind,
        after=int(params.get("after", drawn_after)),
        ms=params.get("ms", 2000.0 if kind == "slow" else 1000.0),
        times=int(params.get("times", 1)),
        retry_after_s=params.get("retry-after", 1.0),
    )
