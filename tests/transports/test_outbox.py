"""The outbox: per token when idle, merged deltas and gapless sequence numbers under load."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from loopway.protocol.events import OutputTextDelta, OutputTextDone, ResponseCreated, SteerFailed
from loopway.protocol.response import Response
from loopway.transports.outbox import FlushClock, Outbox


class FakeWire:
    def __init__(self) -> None:
        self.writes: list[list[dict]] = []
        self.open = True
        self.paused = False
        self._drained = asyncio.Event()

    async def drained(self) -> None:
        await self._drained.wait()

    def write_texts(self, payloads: list[bytes]) -> None:
        self.writes.append([msgspec.json.decode(p) for p in payloads])


def created(seq: int = 0, lane: str | None = None) -> ResponseCreated:
    response = Response(id="resp_1", created_at=0, model="m", status="in_progress", output=[])
    event = ResponseCreated(response=response, sequence_number=seq)
    if lane:
        event.stream_id = lane
    return event


def delta(text: str, seq: int, lane: str | None = None, item: str = "msg_1") -> OutputTextDelta:
    event = OutputTextDelta(item_id=item, output_index=0, content_index=0, delta=text, sequence_number=seq)
    if lane:
        event.stream_id = lane
    return event


def clock(busy: bool) -> FlushClock:
    c = FlushClock(0.005, load=lambda: 1.0 if busy else 0.0)
    c.busy = busy
    return c


async def test_idle_one_step_is_one_write_and_each_later_token_its_own():
    wire = FakeWire()
    outbox = Outbox(wire, clock(busy=False))
    outbox.put(created())
    outbox.put(delta("a", 1))
    await asyncio.sleep(0)
    outbox.put(delta("b", 2))
    await asyncio.sleep(0)
    assert [[e["sequence_number"] for e in w] for w in wire.writes] == [[0, 1], [2]]
    assert [e.get("delta") for w in wire.writes for e in w] == [None, "a", "b"]


async def test_busy_merges_adjacent_deltas_within_a_tick_and_renumbers_without_gaps():
    wire = FakeWire()
    outbox = Outbox(wire, clock(busy=True))
    for event in (created(), delta("a", 1), delta("b", 2), delta("c", 3)):
        outbox.put(event)
    await asyncio.sleep(0.02)
    outbox.put(delta("d", 4))
    outbox.put(OutputTextDone(item_id="msg_1", output_index=0, content_index=0, text="abcd", sequence_number=5))
    await asyncio.sleep(0.02)
    events = [e for w in wire.writes for e in w]
    assert [e["sequence_number"] for e in events] == [0, 1, 2, 3]
    assert [e.get("delta") for e in events] == [None, "abc", "d", None]
    assert len(wire.writes) == 2  # one write per tick


async def test_busy_never_merges_across_lanes_parts_or_other_events():
    wire = FakeWire()
    outbox = Outbox(wire, clock(busy=True))
    outbox.put(created(0, "a"))
    outbox.put(created(0, "b"))
    outbox.put(delta("x", 1, "a"))
    outbox.put(delta("y", 1, "b"))
    outbox.put(delta("z", 2, "b", item="msg_2"))
    await asyncio.sleep(0.02)
    events = [e for w in wire.writes for e in w]
    assert [(e.get("stream_id"), e.get("delta")) for e in events[2:]] == [("a", "x"), ("b", "y"), ("b", "z")]


async def test_a_new_response_starts_numbering_afresh():
    wire = FakeWire()
    outbox = Outbox(wire, clock(busy=True))
    for event in (created(), delta("a", 1), delta("b", 2), created(), delta("c", 1)):
        outbox.put(event)
    await asyncio.sleep(0.02)
    assert [e["sequence_number"] for w in wire.writes for e in w] == [0, 1, 0, 1]


async def test_a_refused_steer_stands_alone_and_is_never_renumbered():
    """``response.steer.failed`` is numbered 0 on its own; merges in the running response must not
    shift it (it arrived as -92 once)."""
    wire = FakeWire()
    outbox = Outbox(wire, clock(busy=True))
    for event in (created(), delta("a", 1), delta("b", 2), delta("c", 3)):
        outbox.put(event)
    refused = SteerFailed(sequence_number=0, steer={"previous_response_id": "resp_x", "input": "more"}, error={})
    outbox.put(refused)
    outbox.put(delta("d", 4))
    await asyncio.sleep(0.02)
    events = [e for w in wire.writes for e in w]
    assert [(e["type"], e["sequence_number"]) for e in events] == [
        ("response.created", 0),
        ("response.output_text.delta", 1),
        ("response.steer.failed", 0),
        ("response.output_text.delta", 2),
    ]


async def test_a_client_that_does_not_read_holds_the_sender():
    wire = FakeWire()
    wire.paused = True
    outbox = Outbox(wire, clock(busy=False))
    sending = asyncio.create_task(outbox.send(created()))
    await asyncio.sleep(0.01)
    assert not sending.done() and len(wire.writes) == 1  # written, then waiting for the client to read
    wire._drained.set()
    await asyncio.wait_for(sending, 1)


async def test_nothing_is_written_to_a_closed_wire():
    wire = FakeWire()
    wire.open = False
    outbox = Outbox(wire, clock(busy=False))
    outbox.put(created())
    await asyncio.sleep(0)
    assert wire.writes == []


@pytest.mark.parametrize(
    ("share", "was_busy", "busy"), [(0.6, False, True), (0.4, False, False), (0.4, True, True), (0.2, True, False)]
)
async def test_load_signal_has_hysteresis(share: float, was_busy: bool, busy: bool):
    c = FlushClock(0.01, load=lambda: share)
    c.busy = was_busy
    c._sample(asyncio.get_running_loop())
    c.stop()
    assert c.busy is busy
