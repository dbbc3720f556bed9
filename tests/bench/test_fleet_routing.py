"""The fleet benchmark runs end to end, and its cache budget follows the workload."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loopway.bench import workload
from loopway.bench.fleet_routing import context_tokens


def test_a_sessions_context_counts_everything_it_accumulates():
    small = workload.generate(3, seed=1)
    grown = json.loads(json.dumps(small))
    grown["turns"][0]["tool_results"][0]["output"] += " more output" * 100
    assert context_tokens(grown) > context_tokens(small) > 1_000


def test_the_bench_runs_end_to_end(tmp_path: Path):
    trace = tmp_path / "tiny.json"
    trace.write_text(json.dumps(workload.generate(2, seed=3)))
    out = tmp_path / "fleet.json"
    done = subprocess.run(
        [sys.executable, "-m", "loopway", "bench", "fleet", "--workload", str(trace), "--sessions", "2",
         "--replicas", "2", "--modes", "ws,http-chained", "--routes", "affinity", "--stagger-s", "0",
         "--json", str(out)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(out.read_text())
    rows = [(r["mode"], r["routing"], r["replicas"]) for r in document["rows"]]
    assert rows == [("ws", "single replica", 1), ("ws", "affinity", 2),
                    ("http-chained", "single replica", 1), ("http-chained", "affinity", 2)]  # fmt: skip
    assert all(0 < r["hit_rate"] < 1 and r["ttft_p99_s"] >= r["ttft_p50_s"] > 0 for r in document["rows"])
    assert document["rows"][0]["kv_tokens_per_replica"] == 2 * document["rows"][1]["kv_tokens_per_replica"]
