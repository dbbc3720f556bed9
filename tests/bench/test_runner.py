"""Benchmark accounting on synthetic cases, the workloads' shape, and the output document."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loopway.bench import workload
from loopway.bench.link import LinkProfile
from loopway.bench.runner import TurnRecord, floor_of, tool_floor
from loopway.core.context.conversation import Conversation
from loopway.protocol.items import FunctionCallOutput, Message
from loopway.protocol.tools import parse_tools
from loopway.tokens.render import Renderer


def record(turn: int, engine: float | None, new_in: int, out: int, model: float = 9.9) -> TurnRecord:
    return TurnRecord(
        turn=turn,
        context_tokens=0,
        cached_tokens=0,
        calls=1,
        total_s=0,
        to_first_event_s=0,
        model_s=model,
        tool_s=0,
        client_s=0,
        output_tokens=0,
        engine_s=None if engine is None else engine + 0.5,  # measured: late timers and all
        cost_model_s=engine,
        server_pre_ms=None,
        server_post_ms=None,
        bytes_up=0,
        bytes_down=0,
        new_input_bytes=new_in,
        output_bytes=out,
    )


SYNTHETIC = {
    "instructions": "",
    "tools": [],
    "turns": [
        {"tool_results": [{"tool_time_s": 0.5}, {"tool_time_s": 0.25}]},
        {"tool_results": [{"tool_time_s": 1.0}]},
        {"tool_results": []},
    ],
}


def test_parallel_tools_count_once_on_the_critical_path():
    assert tool_floor(SYNTHETIC) == [0.5, 1.0, 0.0]


def test_floor_adds_engine_tools_round_trips_and_the_least_bytes():
    link = LinkProfile("t", one_way_delay_s=0.05, up_bits_per_s=8_000, down_bits_per_s=80_000)  # 1 kB/s, 10 kB/s
    records = [record(0, 1.0, 1_000, 10_000), record(1, 2.0, 2_000, 0), record(2, 0.5, 0, 0)]
    setup = len(json.dumps(["", []]).replace(" ", ""))  # instructions and tools, sent once
    floor = floor_of(records, SYNTHETIC, link)
    assert floor["engine_s"] == pytest.approx(3.5)
    assert floor["tool_s"] == pytest.approx(1.5)
    assert floor["round_trips_s"] == pytest.approx(0.3)
    assert floor["transfer_s"] == pytest.approx((3_000 + setup) / 1_000 + 1.0)
    assert floor["floor_s"] == pytest.approx(3.5 + 1.5 + 0.3 + floor["transfer_s"])


def test_the_floor_takes_the_cost_models_engine_time_not_the_measured_one():
    floor = floor_of([record(0, 1.0, 0, 0)], {"instructions": "", "tools": [], "turns": [{}]}, LinkProfile("loopback"))
    assert floor["engine_s"] == pytest.approx(1.0)


def test_external_server_floor_uses_client_model_time():
    floor = floor_of(
        [record(0, None, 0, 0, model=0.7)], {"instructions": "", "tools": [], "turns": [{}]}, LinkProfile("loopback")
    )
    assert floor["engine_s"] == pytest.approx(0.7)


def test_generator_is_deterministic_and_matches_the_shipped_files():
    for name, (calls, seed) in workload.SHIPPED.items():
        assert workload.generate(calls, seed, name) == workload.load(name)


def test_coding_40_has_the_reference_shape():
    w = workload.load("coding-40")
    renderer = Renderer()
    tools = parse_tools(w["tools"])
    assert 2_300 <= len(renderer.header(w["instructions"], parse_tools([]))) <= 2_800
    assert 1_300 <= len(renderer.header(None, tools)) <= 1_700
    outputs = sorted(len(renderer.text(r["output"])) for t in w["turns"] for r in t["tool_results"])
    assert len(outputs) == 40 and 1_200 <= outputs[len(outputs) // 2] <= 1_800 and outputs[-1] > 3 * outputs[20]
    items = [Message(role="user", content=w["task"])] + [
        FunctionCallOutput(call_id="c", output=r["output"]) for t in w["turns"] for r in t["tool_results"]
    ]
    context = len(Conversation.start(renderer, w["instructions"], tools, items).tokens)
    assert 80_000 <= context <= 110_000
    assert any(len(t["tool_results"]) > 1 for t in w["turns"])  # some parallel calls


def test_bench_writes_the_documented_json_and_a_plot(tmp_path: Path):
    trace = tmp_path / "tiny.json"
    trace.write_text(json.dumps(workload.generate(3, seed=1, name="tiny")))
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loopway",
            "bench",
            "--workload",
            str(trace),
            "--link",
            "loopback",
            "--json",
            str(out),
            "--plot",
            str(png),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert doc["workload"] == "tiny" and doc["link"] == "loopback"
    assert set(doc["modes"]) == {"http-stateless", "http-chained", "ws"}
    for mode in doc["modes"].values():
        for key, kind in [
            ("e2e_s", float),
            ("floor_s", float),
            ("overhead_s", float),
            ("turns", int),
            ("bytes_up", int),
            ("bytes_down", int),
            ("server_pre_ms_median", float),
            ("server_post_ms_median", float),
            ("per_turn", list),
        ]:
            assert isinstance(mode[key], kind), key
        assert mode["overhead_s"] == pytest.approx(mode["e2e_s"] - mode["floor_s"])
        assert mode["turns"] == len(mode["per_turn"]) and mode["bytes_up"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ws speedup" in done.stdout
