"""loopway in front of a fleet of real upstream processes: three sim engines serving Chat Completions.

Which replica served what is read from the front's ``/metrics`` (``loopway_upstream_*``), and the
prefix-cache hits from the usage the replicas report back through it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.conftest import MODEL, RedisServer, Server, free_port, metric_samples

TERMINAL = ("response.completed", "response.incomplete", "response.failed", "error")
SIM = ("--store", "memory", "--sim-decode-tps", "20000", "--sim-base-latency-ms", "1")


def replica(tmp: Path, port: int | None = None) -> Server:
    tmp.mkdir(parents=True, exist_ok=True)
    return Server(tmp, *SIM, port=port)


def front(tmp: Path, urls: list[str], *extra: str) -> Server:
    tmp.mkdir(parents=True, exist_ok=True)
    upstreams = [arg for url in urls for arg in ("--upstream", url)]
    models = f"{MODEL},unknown=not-served-upstream"  # each replica refuses the second (model_not_found)
    return Server(tmp, "--engine", "openai-chat", *upstreams, "--upstream-model", models, *extra)


class Fleet:
    def __init__(self, tmp: Path, *extra: str) -> None:
        self.replicas = [replica(tmp / f"r{i}") for i in range(3)]
        self.front = front(tmp / "front", [r.url for r in self.replicas], "--upstream-probe-s", "0.2", *extra)
        self.client = OpenAI(base_url=self.front.url, api_key="sk-test", max_retries=0)

    def served(self) -> dict[str, float]:
        """Requests each replica answered (its first event arrived), by its URL."""
        samples = metric_samples(self.front)
        return {
            r.url: samples.get(("loopway_upstream_requests_total", (("outcome", "ok"), ("replica", r.url))), 0.0)
            for r in self.replicas
        }

    def routed(self) -> dict[str, float]:
        return {
            dict(labels)["decision"]: value
            for (name, labels), value in metric_samples(self.front).items()
            if name == "loopway_upstream_routing_total"
        }

    def dashboard_replicas(self) -> dict[str, bool]:
        snapshot = httpx.get(self.front.url.removesuffix("/v1") + "/dashboard/snapshot", timeout=10).json()
        return {r["name"]: r["healthy"] for r in snapshot["replicas"]}

    def healthy(self, url: str) -> float:
        return metric_samples(self.front)[("loopway_upstream_healthy", (("replica", url),))]

    def stop(self) -> None:
        self.front.stop()
        for r in self.replicas:
            r.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    yield f
    f.stop()


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after if after.get(k, 0.0) != before.get(k, 0.0)}


def turn(conn: object, previous: str | None, text: str) -> object:
    conn.response.create(  # type: ignore[attr-defined]
        model=MODEL, input=text, previous_response_id=previous, store=False, max_output_tokens=16
    )
    event = next(e for e in conn if e.type in TERMINAL)  # type: ignore[attr-defined]
    assert event.type == "response.incomplete", event
    return event.response


def test_a_websocket_session_keeps_its_replica_for_twenty_turns(fleet: Fleet):
    before = fleet.served()
    cached = []
    with fleet.client.responses.connect() as conn:
        previous = None
        for i in range(20):
            response = turn(conn, previous, f"turn {i}: explain module {i} of the parser")
            previous = response.id
            cached.append(response.usage.input_tokens_details.cached_tokens)
    moved = delta(fleet.served(), before)
    assert list(moved.values()) == [20.0]  # one replica took every turn
    assert all(c > 0 for c in cached[2:])  # its prefix cache held the conversation


def test_new_sessions_spread_over_the_replicas(fleet: Fleet):
    before = fleet.served()
    for i in range(3):
        with fleet.client.responses.connect() as conn:
            turn(conn, None, f"session {i}: hello")
    assert sorted(delta(fleet.served(), before).values()) == [1.0, 1.0, 1.0]


def test_an_http_chain_stays_on_its_replica_across_connections(fleet: Fleet):
    before, routed = fleet.served(), fleet.routed()
    previous = None
    for i in range(8):
        client = OpenAI(base_url=fleet.front.url, api_key="sk-test", max_retries=0)  # a new connection each turn
        response = client.responses.create(
            model=MODEL, input=f"chain step {i}", previous_response_id=previous, max_output_tokens=16
        )
        previous = response.id
        client.close()
    assert list(delta(fleet.served(), before).values()) == [8.0]
    assert delta(fleet.routed(), routed) == {"hashed": 1.0, "kept": 7.0}
    assert response.usage.input_tokens_details.cached_tokens > 0


def test_a_stateless_client_resending_its_history_lands_on_one_replica(fleet: Fleet):
    before = fleet.served()
    history: list[dict] = []
    for i in range(6):
        history.append({"role": "user", "content": f"stateless step {i} of the refactor"})
        response = fleet.client.responses.create(model=MODEL, input=history, store=False, max_output_tokens=16)
        history += [o.model_dump(exclude_none=True) for o in response.output]
    assert list(delta(fleet.served(), before).values()) == [6.0]


def wait_for(check, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_killed_replica_moves_its_session_without_an_error_and_rejoins(tmp_path: Path):
    f = Fleet(tmp_path)
    try:
        with f.client.responses.connect() as conn:
            previous = None
            for i in range(3):
                previous = turn(conn, previous, f"turn {i}: read the config loader").id
            pinned = next(url for url, n in f.served().items() if n == 3)
            victim = next(r for r in f.replicas if r.url == pinned)
            victim.stop()
            before, routed = f.served(), f.routed()
            for i in range(3, 6):  # the next turn, and those after it, complete as if nothing happened
                previous = turn(conn, previous, f"turn {i}: read the config loader").id
            moved = delta(f.served(), before)
            assert len(moved) == 1 and pinned not in moved and list(moved.values()) == [3.0]
            assert delta(f.routed(), routed) == {"moved": 1.0, "kept": 2.0}
        wait_for(lambda: f.healthy(pinned) == 0)
        assert f.dashboard_replicas()[pinned] is False  # the dashboard shows it down, the others up
        assert sum(f.dashboard_replicas().values()) == 2

        f.replicas[f.replicas.index(victim)] = replica(tmp_path / "again", port=victim.port)
        wait_for(lambda: f.healthy(pinned) == 1)
        assert f.dashboard_replicas()[pinned] is True
        before = f.served()
        for i in range(2):  # new sessions go to the replicas picked longest ago: the untouched one, then it
            with f.client.responses.connect() as conn:
                turn(conn, None, f"new session {i} after the replica came back")
        assert delta(f.served(), before).get(pinned) == 1.0
    finally:
        f.stop()


def test_a_dead_replica_never_takes_two_requests_in_a_row(tmp_path: Path):
    live = [replica(tmp_path / f"r{i}") for i in range(2)]
    dead = f"http://127.0.0.1:{free_port()}/v1"
    server = front(tmp_path / "front", [live[0].url, dead, live[1].url], "--upstream-probe-s", "0")
    client = OpenAI(base_url=server.url, api_key="sk-test", max_retries=0)

    def failures() -> float:
        return metric_samples(server).get(
            ("loopway_upstream_requests_total", (("outcome", "failed"), ("replica", dead))), 0.0
        )

    try:
        tried: list[float] = []  # per request: did it try the dead replica (before succeeding elsewhere)?
        for burst in range(2):
            for i in range(24):  # distinct conversations: their hashes rank all three replicas first
                before = failures()
                response = client.responses.create(model=MODEL, input=f"burst {burst} task {i}", max_output_tokens=16)
                assert response.status == "incomplete"  # the client never sees the dead replica
                tried.append(failures() - before)
            time.sleep(1.1)  # past its first backoff (1 s): one request may try it again
        assert set(tried) <= {0.0, 1.0} and sum(tried) >= 2
        assert not any(a and b for a, b in zip(tried, tried[1:]))  # never two requests in a row
        samples = metric_samples(server)
        assert samples[("loopway_upstream_healthy", (("replica", dead),))] == 0
        assert sum(v for (n, labels), v in samples.items() if n == "loopway_upstream_requests_total" and
                   ("outcome", "ok") in labels) == 48  # fmt: skip
    finally:
        server.stop()
        for r in live:
            r.stop()


def test_an_upstream_4xx_is_the_clients_error_and_is_not_retried(fleet: Fleet):
    before = metric_samples(fleet.front)
    response = httpx.post(f"{fleet.front.url}/responses", json={"model": "unknown", "input": "hi"}, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["code"] == "model_not_found"
    after = metric_samples(fleet.front)
    refused = [
        after[key] - before.get(key, 0.0)
        for key in after
        if key[0] == "loopway_upstream_requests_total" and ("outcome", "refused") in key[1]
    ]
    assert sum(refused) == 1.0
    assert all(fleet.healthy(r.url) == 1 for r in fleet.replicas)


def test_an_http_chain_stays_on_its_replica_across_loopway_replicas_on_redis(fleet: Fleet, tmp_path: Path):
    """Two loopways sharing a Redis store: each turn goes to the other one, and still to the parent's replica."""
    redis = RedisServer(tmp_path / "redis")
    urls = [r.url for r in fleet.replicas]
    fronts = [front(tmp_path / f"front{i}", urls, "--store", redis.url) for i in range(2)]
    try:
        previous = None
        for i in range(6):
            server = fronts[i % 2]
            client = OpenAI(base_url=server.url, api_key="sk-test", max_retries=0)
            response = client.responses.create(
                model=MODEL, input=f"replicated step {i}", previous_response_id=previous, max_output_tokens=16
            )
            previous = response.id
        served: dict[str, float] = {}
        for server in fronts:
            for (name, labels), value in metric_samples(server).items():
                if name == "loopway_upstream_requests_total" and ("outcome", "ok") in labels:
                    served[dict(labels)["replica"]] = served.get(dict(labels)["replica"], 0.0) + value
        assert list(served.values()) == [6.0]
        assert response.usage.input_tokens_details.cached_tokens > 0
    finally:
        for server in fronts:
            server.stop()
        redis.stop()


def test_a_responses_fleet_chains_upstream_ids_on_its_replica_and_resends_when_it_moves(tmp_path: Path):
    """``openai-responses`` in front of two Responses servers, turns chained upstream by id."""
    replicas = [replica(tmp_path / f"r{i}") for i in range(2)]
    tmp = tmp_path / "front"
    tmp.mkdir()
    server = Server(tmp, "--engine", "openai-responses", "--upstream", ",".join(r.url for r in replicas),
                    "--upstream-model", MODEL, "--upstream-chain", "on", "--upstream-probe-s", "0.2")  # fmt: skip
    client = OpenAI(base_url=server.url, api_key="sk-test", max_retries=0)

    def served() -> dict[str, float]:
        samples = metric_samples(server)
        return {
            r.url: samples.get(("loopway_upstream_requests_total", (("outcome", "ok"), ("replica", r.url))), 0.0)
            for r in replicas
        }

    try:
        with client.responses.connect() as conn:
            previous = None
            for i in range(4):
                previous = turn(conn, previous, f"chained turn {i}").id
            pinned = next(url for url, n in served().items() if n == 4)
            next(r for r in replicas if r.url == pinned).stop()
            for i in range(4, 6):  # its upstream ids died with it: the whole input goes to the other one
                previous = turn(conn, previous, f"chained turn {i}").id
        assert sorted(served().values()) == [2.0, 4.0]
    finally:
        server.stop()
        for r in replicas:
            r.stop()
