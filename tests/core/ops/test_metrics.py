"""Prometheus metrics in process: a finished turn is counted once, by status and transport, with its stages."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from loopway.core.ops.metrics import Metrics
from tests.core.turns import finished, pipeline, request

PIPE = pipeline()


def samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_a_finished_turn_counts_once_with_its_stages():
    metrics = Metrics()
    turn = await finished(PIPE, request())
    metrics.turn_finished(turn, "ws")
    metrics.turn_finished(turn, "ws")
    metrics.persisted(0.002)
    found = samples(metrics)
    assert found[("loopway_responses_total", (("status", "completed"), ("transport", "ws")))] == 2
    assert found[("loopway_stage_seconds_count", (("stage", "ttft"),))] == 2
    assert found[("loopway_stage_seconds_count", (("stage", "persist"),))] == 1


async def test_cache_lookups_and_watched_connections_are_read_when_rendered():
    metrics = Metrics()
    metrics.cache_lookup(True)
    metrics.cache_lookup(False)
    metrics.cache_lookup(True)
    open_now = [3]
    metrics.watch_connections(lambda: open_now[0], lambda: 5)
    found = samples(metrics)
    assert found[("loopway_connection_cache_total", (("result", "hit"),))] == 2
    assert found[("loopway_connection_cache_total", (("result", "miss"),))] == 1
    open_now[0] = 7
    assert 7 in {v for (name, _), v in samples(metrics).items() if "connections" in name}
