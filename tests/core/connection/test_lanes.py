"""The lane scheduler, without a socket: FIFO per lane, lanes concurrent, caps."""

from __future__ import annotations

import pytest

from loopway.core.connection.lanes import LaneLimitReached, LaneScheduler


def test_same_lane_is_fifo_and_never_overlaps():
    s: LaneScheduler[str] = LaneScheduler()
    assert s.submit(None, "a") == [(None, "a")]
    assert s.submit(None, "b") == []
    assert s.finish(None) == [(None, "b")]
    assert s.finish(None) == []


def test_lanes_run_concurrently():
    s: LaneScheduler[str] = LaneScheduler()
    assert s.submit("x", "1") == [("x", "1")]
    assert s.submit("y", "2") == [("y", "2")]
    assert s.submit(None, "3") == [(None, "3")]
    assert s.in_flight == 3


def test_in_flight_cap_queues_instead_of_refusing():
    s: LaneScheduler[int] = LaneScheduler(max_in_flight=2)
    started = [job for i in range(4) for _, job in s.submit(f"l{i}", i)]
    assert started == [0, 1] and s.queued() == 2
    assert s.finish("l0") == [("l2", 2)]  # the oldest waiting head goes first
    assert s.finish("l1") == [("l3", 3)]


def test_named_lane_limit_counts_distinct_ids_and_not_the_default_lane():
    s: LaneScheduler[int] = LaneScheduler(max_named_lanes=2)
    s.submit("a", 1)
    s.submit("b", 2)
    s.submit("a", 3)  # reuse is fine
    s.submit(None, 4)  # the default lane does not count
    with pytest.raises(LaneLimitReached):
        s.submit("c", 5)


def test_front_submission_jumps_the_lane_queue():
    s: LaneScheduler[str] = LaneScheduler()
    s.submit(None, "running")
    s.submit(None, "queued")
    s.submit(None, "successor", front=True)
    assert s.finish(None) == [(None, "successor")]
