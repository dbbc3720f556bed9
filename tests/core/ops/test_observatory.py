"""What the dashboard is told: turns, errors and faults, and what each viewer may see of them."""

from __future__ import annotations

from loopway.core.connection.state import ConnectionState
from loopway.core.ops.observatory import ConnectionView, Observatory
from loopway.core.records.driver import Persist
from loopway.core.records.persistence import ResponseLog
from loopway.core.service import ResponsesService
from loopway.store.memory import MemoryStore
from tests.core.turns import pipeline, request


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def view(tenant: str, in_flight: int = 0) -> ConnectionView:
    return ConnectionView(
        id=tenant[:3], transport="ws", tenant=tenant, opened_at=999_990.0, lanes=1, in_flight=in_flight,
        queued=0, cache_items=1, cache_tokens=100, turns=2,
    )  # fmt: skip


async def finished_turns(service: ResponsesService, tenant: str, n: int) -> list[str]:
    ids = []
    state = ConnectionState()
    for _ in range(n):
        turn = await service.prepare(request(), tenant=tenant, cache=state)
        async for _ in service.run(turn, "ws", Persist.BEHIND):
            pass
        ids.append(turn.id)
    return ids


async def test_turns_and_totals_over_the_last_minute():
    clock = Clock()
    pipe = pipeline()
    service = ResponsesService(pipe.engine, pipe, ResponseLog(MemoryStore()))
    service.observatory._clock = clock
    ids = await finished_turns(service, "", 3)
    clock.now += 1
    snap = service.observatory.snapshot(None, [], {"state": "ok"}, [])
    assert [t["id"] for t in snap["turns"]] == ids[::-1]  # newest first
    turn = snap["turns"][0]
    assert list(turn["stages"]) == ["validate", "queue", "resolve", "render", "ttft", "decode", "persist"]
    assert turn["own_ms"] == round(sum(turn["stages"][s] for s in ("validate", "resolve", "render", "persist")), 3)
    totals = snap["totals"]
    assert totals["turns"] == 3 and totals["overhead_p50_ms"] is not None and totals["errors"] == {}
    clock.now += 61
    later = service.observatory.snapshot(None, [], {"state": "ok"}, [])["totals"]
    assert later["turns"] == 0 and later["overhead_p99_ms"] is None  # the window moved on


def test_errors_and_faults_are_counted_by_code():
    clock = Clock()
    observatory = Observatory(clock)
    observatory.error("rate_limit_exceeded", "requests")
    observatory.error(None, "server_error")
    observatory.error(None, "server_error")
    observatory.fault("drop")
    totals = observatory.snapshot(None, [], {}, [])["totals"]
    assert totals["errors"] == {"server_error": 2, "rate_limit_exceeded": 1} and totals["faults"] == {"drop": 1}


async def test_a_tenant_viewer_sees_the_others_only_as_counts():
    clock = Clock()
    pipe = pipeline()
    service = ResponsesService(pipe.engine, pipe, ResponseLog(MemoryStore()))
    service.observatory._clock = clock
    alice = await finished_turns(service, "alice", 1)
    bob = await finished_turns(service, "bob", 2)
    carol = await finished_turns(service, "carol", 1)
    snap = service.observatory.snapshot("alice", [view("alice"), view("bob", 1), view("carol")], {}, [])
    assert [t["id"] for t in snap["turns"]] == alice
    assert [c["tenant"] for c in snap["connections"]["shown"]] == ["alice"]
    assert snap["connections"]["other_tenants"] == {"tenants": 2, "connections": 2, "in_flight": 1, "turns": 3}
    assert not any(i in str(snap) for i in [*bob, *carol, "bob", "carol"])
    everyone = service.observatory.snapshot(None, [view("alice"), view("bob")], {}, [])
    assert len(everyone["turns"]) == 4 and everyone["connections"]["other_tenants"] is None
