"""The faults benchmark runs end to end, compares what it should, and notices a difference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loopway.bench import workload
from loopway.bench.fault_recovery import KeyedTools, summarize, transcript_digest


def test_the_bench_runs_end_to_end(tmp_path: Path):
    trace = tmp_path / "tiny.json"
    trace.write_text(json.dumps(workload.generate(4, seed=3)))
    out = tmp_path / "faults.json"
    done = subprocess.run(
        [sys.executable, "-m", "loopway", "bench", "faults", "--workload", str(trace), "--sessions", "4",
         "--faults", "seed=2; any=40% ms=50 retry-after=0.05", "--tool-time-scale", "0", "--json", str(out)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(out.read_text())["summary"]
    assert summary["matched"] == 4 and summary["errors"] == []
    assert summary["requests_faulted"] >= 3 and sum(summary["recovered"].values()) >= 1
    assert sorted(summary["by_client"]) == ["http-chained store", "http-stateless", "ws", "ws store"]


async def test_a_call_is_answered_by_what_it_asks_not_by_when():
    trace = workload.generate(4, seed=5)
    tools = KeyedTools(trace, time_scale=0)
    first = next(i for i in trace["turns"][0]["output"] if i.get("type") == "function_call")
    once = await tools.registry.call(first["name"], json.dumps(first["arguments"]))
    again = await tools.registry.call(first["name"], json.dumps(first["arguments"]))
    assert once == again == trace["turns"][0]["tool_results"][0]["output"]


def test_transcripts_compare_without_their_ids():
    items = [{"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{}"}]
    renamed = [{**items[0], "id": "fc_2", "call_id": "call_2"}]
    changed = [{**items[0], "arguments": '{"x": 1}'}]
    assert transcript_digest(items) == transcript_digest(renamed) != transcript_digest(changed)


def test_a_session_that_differs_is_not_counted_as_matched():
    def run(answer: str, digest: str) -> dict:
        return {"index": 0, "client": "ws", "turns": 3, "elapsed_s": 1.0, "recoveries": {}, "answer": answer,
                "digest": digest, "error": None}  # fmt: skip

    results = {
        "clean": {"wall_s": 1, "sessions": [run("done", "a")], "injected": {}},
        "faults": {"wall_s": 1, "sessions": [run("done", "b")], "injected": {"drop": 1}},
    }
    assert summarize(results)["matched"] == 0
    results["faults"]["sessions"] = [run("done", "a")]
    assert summarize(results)["matched"] == 1
