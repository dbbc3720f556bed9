"""Faults on purpose, sans-I/O: the SPEC grammar, the seeded draw, and what each fault does."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from loopway.core.ops.fault_injection import (
    APPLIES,
    Fault,
    FaultInjector,
    FaultSpecError,
    parse_spec,
)
from loopway.core.records.driver import Persist
from loopway.core.records.persistence import ResponseLog
from loopway.core.service import ResponsesService
from loopway.engines.base import Delta, EngineError, Finish, TextDelta
from loopway.protocol.errors import ApiError
from loopway.store.memory import MemoryStore
from tests.core.turns import pipeline, request

CONTINUATION = request(previous_response_id="resp_parent")


def test_a_spec_names_a_seed_and_rules_with_rates_and_parameters():
    plan = parse_spec("seed=7; drop=2% after=5, rate-limit=0.01 retry-after=2.5;slow=1% ms=300")
    assert plan.seed == 7
    assert [(r.kind, r.rate, r.params) for r in plan.rules] == [
        ("drop", 0.02, {"after": 5.0}),
        ("rate-limit", 0.01, {"retry-after": 2.5}),
        ("slow", 0.01, {"ms": 300.0}),
    ]
    assert parse_spec("").rules == ()


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("explode=5%", "unknown fault 'explode'"),
        ("drop", "give a rate"),
        ("drop=5% ms=3", "'ms=3' is not a parameter of drop"),
        ("http-500=5% after=1", "its parameters: none"),
        ("drop=150%", "between 0 and 100%"),
        ("drop=x%", "'x' is not a number"),
        ("stall=5% times=1.5", "times must be a non-negative integer"),
        ("drop=60%; failed=50%", "add up to 110%"),
        ("seed=abc", "'abc' is not a number"),
    ],
)
def test_a_bad_spec_names_what_is_wrong(spec: str, says: str):
    with pytest.raises(FaultSpecError, match=says):
        parse_spec(spec)


def kinds(injector: FaultInjector, transport: str = "ws", n: int = 2000, req=CONTINUATION) -> Counter[str | None]:
    return Counter(fault.kind if (fault := injector.draw(req, transport)) else None for _ in range(n))


def test_the_same_seed_draws_the_same_faults_in_the_same_order():
    spec = "seed=11; any=30%"
    one, two = FaultInjector(parse_spec(spec)), FaultInjector(parse_spec(spec))
    drawn = [one.draw(CONTINUATION, "ws") for _ in range(300)]
    assert drawn == [two.draw(CONTINUATION, "ws") for _ in range(300)]
    assert drawn != [FaultInjector(parse_spec("seed=12; any=30%")).draw(CONTINUATION, "ws") for _ in range(300)]


def test_rates_are_shares_of_every_request():
    drawn = kinds(FaultInjector(parse_spec("seed=1; failed=10%; slow=20%")), n=5000)
    assert 0.08 < drawn["failed"] / 5000 < 0.12 and 0.17 < drawn["slow"] / 5000 < 0.23
    assert set(drawn) == {"failed", "slow", None}


def test_any_spreads_its_rate_over_the_faults_that_apply_to_the_request():
    injector = FaultInjector(parse_spec("seed=2; any=50%"))
    over_ws = kinds(injector, "ws", 6000)
    assert set(over_ws) - {None} == set(APPLIES)  # every kind happens on a socket continuation
    assert 0.46 < 1 - over_ws[None] / 6000 < 0.54  # and half the requests meet one
    over_http = kinds(injector, "http", 3000, req=request())
    assert set(over_http) - {None} == {"failed", "http-500", "http-503", "rate-limit", "slow", "stall"}
    assert 0.45 < 1 - over_http[None] / 3000 < 0.55


def test_a_fault_that_does_not_apply_lets_its_request_through():
    injector = FaultInjector(parse_spec("seed=3; close=100%; cache-miss=0%"))
    assert kinds(injector, "sse", 50) == Counter({None: 50})  # close is a socket's
    assert kinds(FaultInjector(parse_spec("cache-miss=100%")), "ws", 20, req=request()) == Counter({None: 20})


def test_an_unplaced_fault_fires_somewhere_in_its_first_events_and_a_placed_one_where_told():
    afters = {FaultInjector(parse_spec(f"seed={s}; drop=100%")).draw(CONTINUATION, "ws").after for s in range(200)}
    assert min(afters) >= 1 and max(afters) <= 24 and len(afters) > 15
    assert FaultInjector(parse_spec("drop=100% after=4")).draw(CONTINUATION, "ws").after == 4


def test_a_cut_comes_at_its_event_or_before_the_terminal_one():
    drop = Fault(kind="drop", after=3)
    assert [drop.cuts(sent, False) for sent in range(5)] == [False, False, False, True, True]
    assert drop.cuts(1, terminal=True)  # a shorter stream never reaches its end
    assert not Fault(kind="failed", after=0).cuts(9, True)


def test_refusals_are_openai_shaped():
    refusal = Fault(kind="rate-limit", retry_after_s=2.5).refusal(request())
    assert refusal is not None and (refusal.status, refusal.type, refusal.code) == (429, "requests", "rate_limit_exceeded")
    assert refusal.headers["retry-after"] == "3" and refusal.headers["retry-after-ms"] == "2500"
    assert "Please try again in 2.5s" in refusal.message
    server = Fault(kind="http-500").refusal(request())
    overloaded = Fault(kind="http-503").refusal(request())
    assert server is not None and (server.status, server.type) == (500, "server_error")
    assert overloaded is not None and (overloaded.status, overloaded.type, overloaded.code) == (503, "server_error", None)
    miss = Fault(kind="cache-miss").refusal(CONTINUATION)
    assert miss is not None and (miss.status, miss.code, miss.param) == (
        400,
        "previous_response_not_found",
        "previous_response_id",
    )
    assert Fault(kind="cache-miss").refusal(request()) is None
    assert Fault(kind="drop").refusal(request()) is None


async def stream(n: int) -> AsyncIterator[Delta]:
    for _ in range(n):
        yield TextDelta("tok ")
    yield Finish(reason="stop", input_tokens=1, cached_tokens=0, output_tokens=n)


async def collect(generation: AsyncIterator[Delta]) -> list[Delta]:
    return [delta async for delta in generation]


async def test_failed_breaks_the_engine_stream_after_its_deltas():
    seen: list[Delta] = []
    with pytest.raises(EngineError, match="An error occurred while processing your request"):
        async for delta in Fault(kind="failed", after=2).wrap(stream(5)):
            seen.append(delta)
    assert len(seen) == 2
    with pytest.raises(EngineError):  # a response shorter than ``after`` fails instead of finishing
        await collect(Fault(kind="failed", after=50).wrap(stream(3)))


async def test_slow_delays_the_first_token_and_stall_pauses_between_deltas():
    started = time.perf_counter()
    slow = Fault(kind="slow", ms=150).wrap(stream(3))
    await slow.__anext__()
    assert time.perf_counter() - started >= 0.14
    started = time.perf_counter()
    assert len(await collect(Fault(kind="stall", after=2, times=2, ms=80).wrap(stream(4)))) == 5
    assert time.perf_counter() - started >= 0.15


def test_a_request_may_name_its_own_fault_when_the_server_allows_it():
    named = request(metadata={"loopway_fault": "failed after=2"})
    assert FaultInjector.of("", from_metadata=False) is None
    allowed = FaultInjector.of("", from_metadata=True)
    assert allowed is not None and allowed.draw(named, "ws") == Fault(kind="failed", after=2, ms=1000.0)
    assert allowed.draw(request(), "ws") is None
    closed = FaultInjector(parse_spec(""), from_metadata=False)
    assert closed.draw(named, "ws") is None  # without the flag, metadata is only metadata
    with pytest.raises(ApiError, match="unknown fault 'boom'") as bad:
        allowed.draw(request(metadata={"loopway_fault": "boom"}), "ws")
    assert (bad.value.status, bad.value.param) == (400, "metadata.loopway_fault")


def test_each_injected_fault_is_reported():
    seen: list[str] = []
    injector = FaultInjector.of("seed=5; failed=100%", False)
    assert injector is not None
    injector.on_fault = seen.append
    injector.draw(request(), "http")
    assert seen == ["failed"]


async def test_the_service_refuses_or_breaks_a_turn_as_its_fault_says():
    pipe = pipeline()
    service = ResponsesService(pipe.engine, pipe, ResponseLog(MemoryStore()))
    with pytest.raises(ApiError) as refused:
        await service.prepare(request(), fault=Fault(kind="http-503"))
    assert refused.value.status == 503
    turn = await service.prepare(request(), fault=Fault(kind="failed", after=1))
    events = [event async for event in service.run(turn, "test", Persist.FIRST)]
    assert events[-1].type == "response.failed"
    assert turn.response.error is not None and turn.response.error.code == "server_error"


def test_workers_draw_their_own_sequences_from_one_seed():
    def drawn(stream: str) -> list:
        injector = FaultInjector(parse_spec("seed=4; any=50%"), stream=stream)
        return [injector.draw(CONTINUATION, "ws") for _ in range(100)]

    assert drawn("") == drawn("") and drawn("loopway-worker-1") == drawn("loopway-worker-1")
    assert drawn("loopway-worker-0") != drawn("loopway-worker-1") != drawn("")
