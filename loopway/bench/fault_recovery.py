"""``loopway bench faults``: agent sessions under injected faults end where they would have without.

One server process replays the workload's trace (the sim); this process runs ``--sessions`` agent
sessions at once on ``loopway.client``, spread over the four ways a client can hold a conversation
(WebSocket with ``store=false`` and ``store=true``, HTTP stateless and chained). The same sessions
run twice against a fresh server each time: without faults, then with ``--faults`` (5% of requests,
every class that applies). Each session's final answer and whole transcript (every item but its
ids) must be the same in both runs. Reported: sessions that matched, the faults the server injected
(``/metrics``), what the clients recovered from, the turns sent again, and what the faults cost in
session time.

Tools answer from the workload by their call (a name and its arguments, the first recorded result),
so a turn run again gets the same results, after the recorded time × ``--tool-time-scale``. The
sim runs as one unbounded engine (no cache limit, no shared prefill, no batch slowdown): this
measures what faults cost the clients, not a GPU's queue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from loopway.bench import workload as workloads
from loopway.bench.procs import stop
from loopway.bench.server import free_port, wait_healthy
from loopway.client import AgentLoop, RetryPolicy, ToolRegistry, make_transport

CLIENTS = (("ws", False), ("ws", True), ("http-stateless", False), ("http-chained", True))
DEFAULT_FAULTS = "seed=7; any=5% ms=1000 retry-after=0.5"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", default="coding-20", help="a shipped workload or a trace file")
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--faults", default=DEFAULT_FAULTS, help="the server's --faults SPEC (docs/faults.md)")
    parser.add_argument("--tool-time-scale", type=float, default=0.1, help="recorded tool times × this")
    parser.add_argument("--json", dest="json_path", help="write the results as JSON here")


class KeyedTools:
    """The workload's tools, each call answered by its name and arguments: a turn sent again gets the
    results it got the first time, whatever else ran in between."""

    def __init__(self, workload: dict[str, Any], time_scale: float) -> None:
        self.results: dict[tuple[str, str], dict[str, Any]] = {}
        for turn in workload["turns"]:
            calls = [item for item in turn["output"] if item.get("type") == "function_call"]
            for call, result in zip(calls, turn.get("tool_results", [])):
                self.results.setdefault(_call_key(call["name"], call["arguments"]), result)
        self.time_scale = time_scale
        self.registry = ToolRegistry()
        for tool in workload["tools"]:
            self.registry.register(
                self._answerer(tool["name"]), name=tool["name"], description=tool.get("description", ""),
                parameters=tool["parameters"],
            )  # fmt: skip

    def _answerer(self, name: str) -> Any:
        async def answer(**arguments: Any) -> str:
            result = self.results.get(_call_key(name, arguments))
            if result is None:
                return f"error: no recorded result for {name}({json.dumps(arguments)})"
            await asyncio.sleep(result["tool_time_s"] * self.time_scale)
            return result["output"]

        return answer


def _call_key(name: str, arguments: Any) -> tuple[str, str]:
    if isinstance(arguments, str):
        arguments = json.loads(arguments or "{}")
    return name, json.dumps(arguments, sort_keys=True)


def transcript_digest(items: list[dict[str, Any]]) -> str:
    """Every item of a conversation, ids aside (they are new on every run)."""
    drop = {"id", "call_id", "status"}
    stripped = [{k: v for k, v in item.items() if k not in drop} for item in items]
    return hashlib.sha256(json.dumps(stripped, sort_keys=True).encode()).hexdigest()[:16]


async def session(url: str, client: tuple[str, bool], workload: dict[str, Any], index: int, scale: float) -> dict:
    kind, store = client
    transport = make_transport(kind, url, "sk-bench", store=store, retry=RetryPolicy(max_attempts=8))
    tools = KeyedTools(workload, scale)
    loop = AgentLoop(transport, tools.registry, model=workload["model"], instructions=workload["instructions"])
    started = time.perf_counter()
    try:
        result = await loop.run(f"[session {index}] {workload['task']}")
        outcome = {"answer": result.output_text, "digest": transcript_digest(result.items), "error": None}
        turns = len(result.turns)
    except Exception as exc:  # a session that gives up is a result here, not a crash of the bench
        outcome, turns = {"answer": None, "digest": None, "error": f"{type(exc).__name__}: {exc}"}, 0
    finally:
        await transport.aclose()
    recoveries = dict(getattr(transport, "recoveries", Counter()))
    return {"index": index, "client": f"{kind}{' store' if store else ''}", "turns": turns,
            "elapsed_s": time.perf_counter() - started, "recoveries": recoveries, **outcome}  # fmt: skip


@contextlib.contextmanager
def server(tmp: Path, trace: str, model: str, faults: str | None) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "loopway", "serve", "--port", str(port), "--store", "memory",
               "--data-dir", str(tmp), "--log-level", "warning", "--sim-trace", trace, "--sim-models", model,
               "--sim-kv-cache-tokens", "0", "--sim-shared-prefill", "off", "--sim-decode-slowdown", "0",
               *(["--faults", faults] if faults else [])]  # fmt: skip
    with (tmp / "server.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(f"http://127.0.0.1:{port}")
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            stop(process)


def injected(url: str) -> dict[str, int]:
    text = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=10).text
    counts = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "loopway_faults_injected_total":
                counts[sample.labels["kind"]] = int(sample.value)
    return counts


async def run_all(url: str, workload: dict[str, Any], sessions: int, scale: float) -> list[dict]:
    return list(
        await asyncio.gather(*(session(url, CLIENTS[i % len(CLIENTS)], workload, i, scale) for i in range(sessions)))
    )


def run(args: argparse.Namespace) -> int:
    workload = workloads.load(args.workload)
    console = Console(width=140)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="loopway-faults-") as tmp_name:
        tmp = Path(tmp_name)
        trace = str(tmp / "trace.json")
        Path(trace).write_text(json.dumps(workload))
        for label, faults in (("clean", None), ("faults", args.faults)):
            run_dir = tmp / label
            run_dir.mkdir()
            with server(run_dir, trace, workload["model"], faults) as url:
                started = time.perf_counter()
                sessions = asyncio.run(run_all(url, workload, args.sessions, args.tool_time_scale))
                results[label] = {"wall_s": time.perf_counter() - started, "sessions": sessions,
                                  "injected": injected(url)}  # fmt: skip
            console.print(f"{label}: {args.sessions} sessions in {results[label]['wall_s']:.1f} s")
    summary = summarize(results)
    print_table(console, args, summary)
    if args.json_path:
        setup = {
            "workload": workload["name"],
            "sessions": args.sessions,
            "faults": args.faults,
            "tool_time_scale": args.tool_time_scale,
            "clients": [f"{k}{' store' if s else ''}" for k, s in CLIENTS],
        }
        Path(args.json_path).write_text(json.dumps({"setup": setup, "summary": summary, "runs": results}, indent=1) + "\n")
    return 0 if summary["matched"] == args.sessions else 1


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    clean, faulty = results["clean"]["sessions"], results["faults"]["sessions"]
    matched = [
        c["index"]
        for c, f in zip(clean, faulty)
        if c["error"] is None and (c["answer"], c["digest"]) == (f["answer"], f["digest"])
    ]
    recovered: Counter[str] = Counter()
    for s in faulty:
        recovered.update(s["recoveries"])
    by_client: dict[str, dict[str, Any]] = {}
    for c, f in zip(clean, faulty):
        row = by_client.setdefault(
            f["client"], {"sessions": 0, "matched": 0, "recoveries": 0, "clean_s": [], "faults_s": []}
        )
        row["sessions"] += 1
        row["matched"] += c["index"] in matched
        row["recoveries"] += sum(f["recoveries"].values())
        row["clean_s"].append(c["elapsed_s"])
        row["faults_s"].append(f["elapsed_s"])
    for row in by_client.values():
        row["clean_p50_s"] = statistics.median(row.pop("clean_s"))
        faults_s = sorted(row.pop("faults_s"))
        row["faults_p50_s"] = statistics.median(faults_s)
        row["faults_max_s"] = faults_s[-1]
    return {
        "matched": len(matched),
        "errors": [s["error"] for s in faulty if s["error"]],
        "injected": results["faults"]["injected"],
        "requests_faulted": sum(results["faults"]["injected"].values()),
        "recovered": dict(recovered.most_common()),
        "turns": sum(s["turns"] for s in faulty),
        "requests": sum(s["turns"] for s in faulty) + sum(recovered.values()),  # each recovery sends once more
        "by_client": by_client,
        "wall_s": {"clean": results["clean"]["wall_s"], "faults": results["faults"]["wall_s"]},
    }


def print_table(console: Console, args: argparse.Namespace, summary: dict[str, Any]) -> None:
    table = Table(title=f"{args.sessions} agent sessions, {args.workload}, faults: {args.faults}")
    for column in (
        "client",
        "sessions",
        "same answer and transcript",
        "recoveries",
        "p50 s clean",
        "p50 s faults",
        "max s faults",
    ):
        table.add_column(column, justify="right")
    for client, row in summary["by_client"].items():
        table.add_row(client, str(row["sessions"]), str(row["matched"]), str(row["recoveries"]),
                      f"{row['clean_p50_s']:.1f}", f"{row['faults_p50_s']:.1f}", f"{row['faults_max_s']:.1f}")  # fmt: skip
    console.print(table)
    share = summary["requests_faulted"] / max(1, summary["requests"])
    console.print(
        f"injected: {summary['injected']} ({summary['requests_faulted']} of {summary['requests']} requests, {share:.1%})"
    )
    console.print(f"recovered from: {summary['recovered']}")
    console.print(f"matched {summary['matched']}/{args.sessions}; errors: {summary['errors'] or 'none'}")
