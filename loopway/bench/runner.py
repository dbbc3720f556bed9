"""``loopway bench``: one agent rollout, several transports, side by side in one run.

Each mode gets a fresh server (so no mode warms another's prefix cache) behind the same emulated
link, and the same client (``loopway.client.AgentLoop``) replaying the workload's tool results and
tool times. For each mode: end-to-end time; the floor (Σ engine time + Σ tool time on the critical
path + turns × round trip + the least bytes over the link: each turn's new items up, its output
down); overhead = end-to-end − floor; bytes actually carried; and the server's own pre- and
post-inference time per turn.

The floor's engine time is what the sim's cost model prescribes for each turn's usage (base
latency + uncached input ÷ prefill rate + output ÷ decode rate), not the engine time each mode
measured: a late timer on a loaded loop is the server's cost, not the floor's. Against an external
server (``--url``) the cost model is unknown, and the floor takes the measured model time.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
from collections.abc import Callable
from typing import Any

import msgspec

from loopway.bench.link import LinkProfile, LinkProxy
from loopway.bench.server import InProcessServer
from loopway.client import AgentLoop, ToolRegistry, TurnTrace, make_transport
from loopway.core.ops.timing import StageLog
from loopway.engines.sim import SimSettings
from loopway.engines.sim.cost import CostModel
from loopway.settings import Settings

MODES = ("http-stateless", "http-chained", "ws")


class ReplayTools:
    """The workload's tools, answering each call with the recorded result after the recorded time."""

    def __init__(self, workload: dict[str, Any]) -> None:
        self.results = [r for turn in workload["turns"] for r in turn.get("tool_results", [])]
        self.calls = 0
        self.registry = ToolRegistry()
        for tool in workload["tools"]:
            self.registry.register(
                self._replay, name=tool["name"], description=tool.get("description", ""), parameters=tool["parameters"]
            )

    async def _replay(self, **_: Any) -> str:
        result = self.results[self.calls % len(self.results)]
        self.calls += 1
        await asyncio.sleep(result["tool_time_s"])
        return result["output"]


class TurnRecord(msgspec.Struct, kw_only=True):
    turn: int
    context_tokens: int
    cached_tokens: int
    calls: int
    total_s: float
    to_first_event_s: float
    model_s: float
    tool_s: float
    client_s: float
    output_tokens: int
    engine_s: float | None  # the server's measured TTFT + decode (None for an external server)
    cost_model_s: float | None  # the engine time the cost model prescribes for this usage (None: unknown)
    server_pre_ms: float | None
    server_post_ms: float | None
    bytes_up: int
    bytes_down: int
    new_input_bytes: int
    output_bytes: int


class ModeResult(msgspec.Struct, kw_only=True):
    e2e_s: float
    floor_s: float
    overhead_s: float
    turns: int
    bytes_up: int
    bytes_down: int
    server_pre_ms_median: float | None
    server_post_ms_median: float | None
    engine_s: float
    tool_s: float
    round_trips_s: float
    transfer_s: float
    per_turn: list[TurnRecord]


def tool_floor(workload: dict[str, Any]) -> list[float]:
    """Per turn, the tool time on the critical path: parallel calls overlap, so their maximum."""
    return [max((r["tool_time_s"] for r in turn.get("tool_results", [])), default=0.0) for turn in workload["turns"]]


def floor_of(records: list[TurnRecord], workload: dict[str, Any], profile: LinkProfile) -> dict[str, float]:
    engine = sum(r.cost_model_s if r.cost_model_s is not None else r.model_s for r in records)
    tools = sum(tool_floor(workload)[: len(records)])
    round_trips = len(records) * profile.round_trip_s
    setup = len(msgspec.json.encode([workload["instructions"], workload["tools"]]))  # sent once at least
    transfer = profile.transfer_s(setup + sum(r.new_input_bytes for r in records), sum(r.output_bytes for r in records))
    return {
        "engine_s": engine,
        "tool_s": tools,
        "round_trips_s": round_trips,
        "transfer_s": transfer,
        "floor_s": engine + tools + round_trips + transfer,
    }


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


async def run_mode(
    mode: str,
    workload: dict[str, Any],
    trace_path: str,
    profile: LinkProfile,
    *,
    url: str | None = None,
    sim: SimSettings | None = None,
    on_turn: Callable[[], None] | None = None,
) -> ModeResult:
    with tempfile.TemporaryDirectory(prefix="loopway-bench-") as data_dir:
        server = None
        if url is None:
            sim = msgspec.structs.replace(sim or SimSettings(), trace=trace_path, models=[workload["model"]])
            settings = Settings(port=0, data_dir=data_dir, sim=sim)
            server = await asyncio.to_thread(InProcessServer(settings).__enter__)
            host, port = "127.0.0.1", settings.port
        else:
            parsed = url.split("://", 1)[1].split("/", 1)[0]
            host, _, port_text = parsed.partition(":")
            port = int(port_text or 80)
        try:
            cost = CostModel.of(sim) if server is not None and sim is not None else None
            return await _run_through_link(mode, workload, profile, host, port, server, on_turn, cost)
        finally:
            if server is not None:
                await asyncio.to_thread(server.__exit__, None, None, None)


async def _run_through_link(
    mode: str,
    workload: dict[str, Any],
    profile: LinkProfile,
    host: str,
    port: int,
    server: InProcessServer | None,
    on_turn: Callable[[], None] | None,
    cost: CostModel | None = None,
) -> ModeResult:
    proxy = await LinkProxy(profile, host, port).start()
    transport = make_transport(mode, f"http://127.0.0.1:{proxy.port}/v1", "sk-bench", store=mode == "http-chained")
    counters: list[tuple[int, int]] = [(0, 0)]

    def turn_done(_: TurnTrace) -> None:
        counters.append((proxy.up.bytes, proxy.down.bytes))
        if on_turn is not None:
            on_turn()

    loop = AgentLoop(
        transport,
        ReplayTools(workload).registry,
        model=workload["model"],
        instructions=workload["instructions"],
        on_turn=turn_done,
    )
    try:
        result = await loop.run(workload["task"])
        await asyncio.sleep(0.05)  # let write-behind persistence land before reading its timings
    finally:
        await transport.aclose()
        await proxy.aclose()
    log = server.service.pipeline.stage_log if server is not None else StageLog()
    records = [_record(trace, log, counters[i], counters[i + 1], cost) for i, trace in enumerate(result.turns)]
    floor = floor_of(records, workload, profile)
    return ModeResult(
        e2e_s=result.elapsed_s,
        floor_s=floor["floor_s"],
        overhead_s=result.elapsed_s - floor["floor_s"],
        turns=len(records),
        bytes_up=proxy.up.bytes,
        bytes_down=proxy.down.bytes,
        server_pre_ms_median=_median([r.server_pre_ms for r in records]),
        server_post_ms_median=_median([r.server_post_ms for r in records]),
        engine_s=floor["engine_s"],
        tool_s=floor["tool_s"],
        round_trips_s=floor["round_trips_s"],
        transfer_s=floor["transfer_s"],
        per_turn=records,
    )


def _record(
    trace: TurnTrace, log: StageLog, before: tuple[int, int], after: tuple[int, int], cost: CostModel | None
) -> TurnRecord:
    times = log.get(trace.response_id)
    uncached = trace.input_tokens - trace.cached_tokens
    return TurnRecord(
        turn=trace.turn,
        context_tokens=trace.input_tokens,
        cached_tokens=trace.cached_tokens,
        calls=trace.calls,
        total_s=trace.total_s,
        to_first_event_s=trace.to_first_event_s,
        model_s=trace.model_s,
        tool_s=trace.tool_s,
        client_s=trace.client_s,
        output_tokens=trace.output_tokens,
        engine_s=(times.ttft + times.decode) / 1000 if times else None,
        cost_model_s=cost.time_to_first_token(uncached) + cost.decode_time(trace.output_tokens) if cost else None,
        server_pre_ms=times.pre if times else None,
        server_post_ms=times.persist if times else None,
        bytes_up=after[0] - before[0],
        bytes_down=after[1] - before[1],
        new_input_bytes=trace.new_input_bytes,
        output_bytes=trace.output_bytes,
    )
