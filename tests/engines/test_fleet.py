"""Routing, health and replica choice of an engine fleet, without any network."""

from __future__ import annotations

import gc
import time
from collections import Counter

import pytest

from loopway.core.context.conversation import Conversation
from loopway.engines.base import EngineError, EngineRequest
from loopway.engines.upstream import routing
from loopway.engines.upstream.fleet import Fleet, prefix_key
from loopway.engines.upstream.health import Health
from loopway.protocol.items import Message
from loopway.protocol.tools import EMPTY_TOOLS, ToolChoice
from loopway.tokens.render import Renderer

NAMES = [f"http://10.0.0.{i}:8000/v1" for i in range(1, 5)]


def test_rendezvous_ranks_the_same_everywhere_and_a_lost_replica_moves_only_its_keys():
    keys = [f"conversation-{i}".encode() for i in range(400)]
    before = {key: routing.rendezvous(key, NAMES)[0] for key in keys}
    assert before == {key: routing.rendezvous(key, list(reversed(NAMES)))[0] for key in keys}
    assert min(Counter(before.values()).values()) > 60  # spread over all four
    after = {key: routing.rendezvous(key, NAMES[:3])[0] for key in keys}
    moved = [key for key in keys if before[key] != after[key]]
    assert moved and all(before[key] == NAMES[3] for key in moved)


def test_bounded_load_spills_a_hot_key_to_its_next_choice():
    ranked = routing.rendezvous(b"hot", NAMES)
    loads = dict.fromkeys(NAMES, 0)
    assert routing.bounded(ranked, loads) == ranked[0]
    loads[ranked[0]] = 3  # cap = ceil(1.25 × 4 / 4) = 2
    assert routing.bounded(ranked, loads) == ranked[1]
    loads[ranked[1]] = 3  # cap = ceil(1.25 × 7 / 4) = 3
    assert routing.bounded(ranked, loads) == ranked[2]


def test_least_loaded_breaks_ties_by_the_longest_unpicked():
    loads = dict.fromkeys(NAMES, 0)
    assert routing.least_loaded(NAMES, loads, {NAMES[0]: 3, NAMES[1]: 1, NAMES[2]: 2, NAMES[3]: 4}) == NAMES[1]
    loads[NAMES[1]] = 1
    assert routing.least_loaded(NAMES, loads, {NAMES[0]: 3, NAMES[1]: 1, NAMES[2]: 2, NAMES[3]: 4}) == NAMES[2]


def test_health_backs_off_and_allows_one_trial_at_a_time():
    health = Health(base_s=1.0, max_s=4.0)
    assert health.failed(now=10.0) and not health.available(10.5)
    assert health.available(11.0)
    health.trying(11.0)  # the one trial after the backoff
    assert not health.available(11.1)
    assert not health.failed(now=11.2)  # still down: 2 s now
    assert not health.available(13.1) and health.available(13.2)
    health.failed(13.3), health.failed(13.4)
    assert health.retry_at == pytest.approx(17.4)  # capped at 4 s
    assert health.succeeded() and health.available(13.5) and not health.succeeded()


class _NoUpstream:
    async def aclose(self) -> None:
        return None

    async def alive(self, timeout_s: float) -> bool:
        return True


def fleet(route: str = "affinity") -> Fleet:
    return Fleet(NAMES, lambda url: _NoUpstream(), route=route, probe_s=0)


def request(first: str, *later: str, session: str | None = None, replica: str | None = None) -> EngineRequest:
    items = [Message(role="user", content=first), *(Message(role="user", content=text) for text in later)]
    conversation = Conversation.start(Renderer(), "You are a coding agent. " * 30, EMPTY_TOOLS, items)
    return EngineRequest(
        model="m",
        tokens=conversation.tokens,
        known_prefix=0,
        items=conversation.items,
        instructions=None,
        tools=EMPTY_TOOLS,
        tool_choice=ToolChoice("auto"),
        parallel_tool_calls=True,
        max_output_tokens=None,
        json_schema=None,
        temperature=1,
        top_p=1,
        session=session,
        replica=replica,
        route_prefix=conversation.header_length + conversation.item_tokens(0),
    )


def test_a_session_keeps_its_first_replica_and_new_sessions_spread():
    f = fleet()
    picks = [f.choose(request("task", session=f"s{i}"), set()) for i in range(4)]
    assert sorted(r.name for r, _ in picks) == sorted(NAMES) and {d for _, d in picks} == {"new"}
    for turn in range(5):
        replica, decision = f.choose(request("task", f"turn {turn}", session="s2"), set())
        assert (replica.name, decision) == (picks[2][0].name, "kept")


def test_a_continuation_goes_to_its_parents_replica_and_moves_when_it_is_down():
    f = fleet()
    replica, decision = f.choose(request("task", replica=NAMES[2]), set())
    assert (replica.name, decision) == (NAMES[2], "kept")
    f.by_name[NAMES[2]].health.failed(now=1e18)
    replica, decision = f.choose(request("task", replica=NAMES[2]), set())
    assert replica.name != NAMES[2] and decision == "moved"
    replica, decision = f.choose(request("task", replica="http://gone:1/v1"), set())
    assert decision == "moved"  # a replica no longer configured


def test_a_moved_session_stays_where_it_moved():
    f = fleet()
    first, _ = f.choose(request("task", session="s"), set())
    first.health.failed(now=1e18)
    moved, decision = f.choose(request("task", "next", session="s"), set())
    assert decision == "moved" and moved is not first
    again, decision = f.choose(request("task", "next", "and next", session="s"), set())
    assert (again, decision) == (moved, "kept")


def test_stateless_requests_hash_by_their_first_item_not_by_their_growing_history():
    f = fleet()
    first, decision = f.choose(request("fix the parser"), set())
    assert decision == "hashed"
    for turns in range(1, 6):
        later, _ = f.choose(request("fix the parser", *[f"tool output {i} " * 40 for i in range(turns)]), set())
        assert later is first
    names = {f.choose(request(f"task number {i}"), set())[0].name for i in range(40)}
    assert names == set(NAMES)  # a shared system prompt does not send everything to one replica


def test_the_prefix_key_of_a_short_conversation_is_its_tokens():
    short = request("hi")
    short.tokens = short.tokens.of(short.tokens.ids()[:10])
    short.route_prefix = 10
    assert prefix_key(short) == f"0:{short.tokens.ids()}".encode()


def test_a_hot_prefix_spills_under_load():
    f = fleet()
    hot = request("the same task everyone sends")
    home, _ = f.choose(hot, set())
    home.in_flight = 5
    assert f.choose(hot, set()) == (home, "hashed")  # one conversation's turn: its cache is home
    f._prefix_flight[prefix_key(hot)] = 6  # six requests with this prefix at once: a hot prefix
    other, decision = f.choose(hot, set())
    assert other is not home and decision == "spilled"


def test_round_robin_and_least_loaded_ignore_affinity():
    f = fleet("round-robin")
    assert [f.choose(request("t", session="s"), set())[0].name for _ in range(8)] == NAMES * 2
    f = fleet("least-loaded")
    f.by_name[NAMES[0]].in_flight = 2
    f.by_name[NAMES[1]].in_flight = 1
    f.by_name[NAMES[3]].in_flight = 1
    assert f.choose(request("t", replica=NAMES[0]), set())[0].name == NAMES[2]


def test_retries_skip_replicas_already_tried_and_down_ones():
    f = fleet()
    f.by_name[NAMES[0]].health.failed(now=1e18)
    tried = {NAMES[1]}
    replica, _ = f.choose(request("t", replica=NAMES[1]), tried)
    assert replica.name in (NAMES[2], NAMES[3])
    for name in NAMES[1:]:
        f.by_name[name].health.failed(now=1e18 + 1)
    replica, _ = f.choose(request("t"), set())
    assert replica.name == NAMES[0]  # all down: the one whose backoff ends first, rather than nothing


def test_an_unknown_route_is_refused():
    with pytest.raises(ValueError, match="round-robin"):
        fleet("random")


def test_new_sessions_balance_by_active_sessions_not_by_the_moments_in_flight():
    f = fleet()
    first = [f.choose(request("t", session=f"s{i}"), set())[0] for i in range(4)]
    first[0].in_flight = 1  # one replica is busy with a turn at this moment, the others between turns
    more = [f.choose(request("t", session=f"t{i}"), set())[0].name for i in range(4)]
    assert sorted(more) == sorted(NAMES)  # each already holds one session: one more each, busy or not


def test_new_stateless_conversations_balance_and_each_keeps_its_home():
    f = fleet()
    homes = {i: f.choose(request(f"balanced task {i}"), set())[0].name for i in range(40)}
    counts = Counter(homes.values())
    assert sorted(counts.values()) == [10, 10, 10, 10]  # each its share
    for i in range(40):  # later turns of each, their history grown, land where each began
        replica, decision = f.choose(request(f"balanced task {i}", "tool output " * 50), set())
        assert (replica.name, decision) == (homes[i], "hashed")


def test_a_stateless_conversation_whose_home_is_down_moves_and_stays_moved():
    f = fleet()
    home, _ = f.choose(request("a task"), set())
    home.health.failed(now=1e18)
    moved, decision = f.choose(request("a task", "more"), set())
    assert moved is not home and decision == "moved"
    assert f.choose(request("a task", "more", "and more"), set()) == (moved, "hashed")


def test_placements_count_only_recent_conversations():
    placements = routing.Placements(max_entries=3, active_s=10)
    placements.place("a", NAMES[0], now=0)
    placements.place("b", NAMES[0], now=5)
    placements.place("c", NAMES[1], now=12)
    assert placements.active(NAMES, now=14) == {NAMES[0]: 1, NAMES[1]: 1, NAMES[2]: 0, NAMES[3]: 0}
    placements.place("d", NAMES[2], now=13)  # over the bound: the oldest is forgotten
    assert placements.get("a") is None and placements.get("d") == NAMES[2]


def test_a_continuation_keeps_its_conversation_counted_where_it_runs():
    f = fleet()
    home, _ = f.choose(request("long task"), set())
    later = request("long task", "turn two", replica=home.name)
    assert f.choose(later, set()) == (home, "kept")
    assert f._prefixes.active(NAMES, now=time.monotonic())[home.name] == 1


class _Upstream:
    """One replica's connection, as the fleet uses it: a stream of events, or a failure."""

    def __init__(self, url: str, fail: bool = False) -> None:
        self.url, self.fail = url, fail

    async def open(self, path: str, body: dict) -> str:
        if self.fail:
            raise EngineError(f"{self.url} is down")
        return self.url

    async def events(self, response: str):
        for n in range(3):
            yield {"n": n}

    async def alive(self, timeout_s: float) -> bool:
        return not self.fail

    async def aclose(self) -> None:
        return None


async def test_concurrent_requests_with_one_prefix_spill_and_a_conversations_turns_stay_home():
    f = Fleet(NAMES, _Upstream, probe_s=0)
    hot = request("the template everyone sends")
    streams = [await f.open("/chat/completions", {}, hot) for _ in range(8)]
    assert len({s.replica.name for s in streams}) > 1  # its home took its share, the rest spilled
    for stream in streams:
        [event async for event in stream.events()]
    assert all(r.in_flight == 0 for r in f.replicas) and not f._prefix_flight
    home = streams[0].replica
    home.in_flight = 10  # busy with other conversations: one conversation's next turn still goes home
    assert (await f.open("/chat/completions", {}, hot)).replica is home


async def test_a_stream_dropped_unread_gives_its_place_back():
    f = Fleet(NAMES, _Upstream, probe_s=0)
    stream = await f.open("/chat/completions", {}, request("a task"))
    assert stream.replica.in_flight == 1 and f._prefix_flight
    del stream
    gc.collect()
    assert all(r.in_flight == 0 for r in f.replicas) and not f._prefix_flight


async def test_a_failed_replica_is_retried_elsewhere_and_counts_nothing_in_flight():
    f = Fleet(NAMES, lambda url: _Upstream(url, fail=url == NAMES[1]), probe_s=0)
    stream = await f.open("/chat/completions", {}, request("t", replica=NAMES[1]))
    assert stream.replica.name != NAMES[1] and not f.by_name[NAMES[1]].health.up
    assert f.by_name[NAMES[1]].in_flight == 0


async def test_probes_take_a_failing_replica_out_and_bring_it_back():
    f = Fleet(NAMES[:2], lambda url: _Upstream(url, fail=url == NAMES[0]), probe_s=0)
    assert not await f.probe(f.replicas[0]) and not f.replicas[0].health.up
    f.replicas[0].upstream.fail = False
    assert await f.probe(f.replicas[0]) and f.replicas[0].health.up
