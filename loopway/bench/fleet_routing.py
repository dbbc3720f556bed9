"""``loopway bench fleet``: what routing buys in front of engine replicas with finite prefix caches.

One loopway (``openai-chat``) in front of ``--replicas`` sim processes serving Chat Completions,
each with the sim's shared capacity (one prefill queue, decode slowing with the batch) and a
prefix cache of ``--kv-fraction`` × the context all the concurrent sessions reach by their last
turn: at the default 0.25 with 4 replicas, the fleet as a whole can hold every conversation, but
only if each conversation keeps to one replica. ``--sessions`` concurrent ``coding-20`` agent
sessions (each its own task, all with the workload's system prompt and tools) run through each
client mode (ws, http-chained, http-stateless) and each routing policy, and once through a single
replica holding the whole fleet's cache (the hit rate to keep: nothing fragments it).

Measured on the client: the fleet's prefix-cache hit rate (Σ cached ÷ Σ input tokens, as the
replicas reported them), time to first token p50/p99 per turn, and end-to-end time per session.
Every run starts fresh processes, so no run warms another's caches. Processes, not the clients,
are the fleet; the sessions run in this process (the replicas' time dominates, not the client's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loopway.bench import workload as workloads
from loopway.bench.procs import stop
from loopway.bench.runner import MODES, ReplayTools
from loopway.bench.server import free_port, wait_healthy
from loopway.client import AgentLoop, make_transport
from loopway.tokens.render import encode_long

ROUTES = ("affinity", "round-robin")
SINGLE = "single replica"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", default="coding-20", help="a shipped workload or a trace file")
    parser.add_argument("--sessions", default="16,32", help="concurrent agent sessions, comma-separated levels")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--kv-fraction", type=float, default=0.25, help="each replica's cache ÷ all sessions' context")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    parser.add_argument("--routes", default=",".join(ROUTES), help="comma-separated: affinity, round-robin, least-loaded")
    parser.add_argument("--stagger-s", type=float, default=2.0, help="sessions start at random within this window")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path", help="write the results as JSON here")
    parser.add_argument("--plot", dest="plot_path", help="write a PNG plot here")


def context_tokens(workload: dict[str, Any]) -> int:
    """The tokens one session's context reaches by its last turn (instructions, tools, outputs, results)."""
    parts = [workload["instructions"], json.dumps(workload["tools"]), workload["task"]]
    for turn in workload["turns"]:
        parts.append(json.dumps(turn["output"]))
        parts += [r["output"] for r in turn.get("tool_results", [])]
    return sum(len(encode_long(p)) for p in parts)


@contextlib.contextmanager
def process(command: list[str], log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield
        finally:
            stop(proc)


@contextlib.contextmanager
def fleet(tmp: Path, trace: str, model: str, replicas: int, kv_tokens: int, route: str) -> Iterator[str]:
    """``replicas`` sim processes and a loopway in front; yields the front's /v1 URL."""
    tmp.mkdir(parents=True, exist_ok=True)
    ports = [free_port() for _ in range(replicas + 1)]
    serve = [sys.executable, "-m", "loopway", "serve", "--store", "memory", "--log-level", "warning"]
    with contextlib.ExitStack() as stack:
        for i, port in enumerate(ports[:-1]):
            sim = [*serve, "--port", str(port), "--data-dir", str(tmp / f"r{i}"), "--sim-trace", trace,
                   "--sim-models", model, "--sim-kv-cache-tokens", str(kv_tokens)]  # fmt: skip
            stack.enter_context(process(sim, tmp / f"replica-{i}.log"))
        upstreams = ",".join(f"http://127.0.0.1:{p}/v1" for p in ports[:-1])
        front = [*serve, "--port", str(ports[-1]), "--data-dir", str(tmp / "front"), "--engine", "openai-chat",
                 "--upstream", upstreams, "--upstream-model", model, "--route", route,
                 "--upstream-context-window", "200000"]  # fmt: skip
        stack.enter_context(process(front, tmp / "front.log"))
        for port in ports:
            wait_healthy(f"http://127.0.0.1:{port}")
        yield f"http://127.0.0.1:{ports[-1]}/v1"


async def session(url: str, mode: str, workload: dict[str, Any], index: int, delay_s: float) -> dict[str, Any]:
    await asyncio.sleep(delay_s)
    transport = make_transport(mode, url, "sk-bench", store=mode == "http-chained")
    loop = AgentLoop(
        transport, ReplayTools(workload).registry, model=workload["model"], instructions=workload["instructions"]
    )
    try:
        result = await loop.run(f"[session {index}] {workload['task']}")
    finally:
        await transport.aclose()
    return {
        "elapsed_s": result.elapsed_s,
        "input": sum(t.input_tokens for t in result.turns),
        "cached": sum(t.cached_tokens for t in result.turns),
        "ttft": [t.to_first_token_s for t in result.turns if t.to_first_token_s is not None],
    }


async def run_sessions(url: str, mode: str, workload: dict[str, Any], sessions: int, stagger_s: float, seed: int) -> dict:
    rng = random.Random(seed)
    started = time.perf_counter()
    results = await asyncio.gather(*(session(url, mode, workload, i, rng.uniform(0, stagger_s)) for i in range(sessions)))
    ttft = sorted(x for r in results for x in r["ttft"])
    return {
        "hit_rate": sum(r["cached"] for r in results) / max(1, sum(r["input"] for r in results)),
        "ttft_p50_s": statistics.median(ttft),
        "ttft_p99_s": ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))],
        "session_p50_s": statistics.median(r["elapsed_s"] for r in results),
        "session_max_s": max(r["elapsed_s"] for r in results),
        "wall_s": time.perf_counter() - started,
    }


def run(args: argparse.Namespace) -> int:
    workload = workloads.load(args.workload)
    levels = [int(s) for s in args.sessions.split(",") if s.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    context = context_tokens(workload)
    console = Console(width=150)
    rows = []
    with tempfile.TemporaryDirectory(prefix="loopway-fleet-") as tmp_name:
        tmp = Path(tmp_name)
        trace = str(tmp / "trace.json")
        Path(trace).write_text(json.dumps(workload))
        for sessions in levels:
            kv = int(args.kv_fraction * sessions * context)
            setups = [(SINGLE, 1, kv * args.replicas, "affinity"), *((r, args.replicas, kv, r) for r in routes)]
            for mode in modes:
                for label, replicas, kv_tokens, route in setups:
                    run_dir = tmp / f"{sessions}-{mode}-{label.replace(' ', '-')}"
                    with fleet(run_dir, trace, workload["model"], replicas, kv_tokens, route) as url:
                        measured = asyncio.run(run_sessions(url, mode, workload, sessions, args.stagger_s, args.seed))
                    row = {"sessions": sessions, "mode": mode, "routing": label, "replicas": replicas,
                           "kv_tokens_per_replica": kv_tokens, **measured}  # fmt: skip
                    rows.append(row)
                    console.print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    for row in rows:
        single = next(r for r in rows if r["sessions"] == row["sessions"] and r["mode"] == row["mode"]
                      and r["routing"] == SINGLE)  # fmt: skip
        row["of_single_hit_rate"] = row["hit_rate"] / single["hit_rate"] if single["hit_rate"] else 0.0
    print_table(console, args, context, rows)
    if args.json_path:
        meta = {"workload": workload["name"], "context_tokens_per_session": context, "replicas": args.replicas,
                "kv_fraction": args.kv_fraction}  # fmt: skip
        Path(args.json_path).write_text(json.dumps({"setup": meta, "rows": rows}, indent=1) + "\n")
    if args.plot_path:
        plot(args.plot_path, rows)
    return 0


def print_table(console: Console, args: argparse.Namespace, context: int, rows: list[dict]) -> None:
    table = Table(
        title=f"Fleet: {args.replicas} sim replicas, each caching {args.kv_fraction:g} × the sessions' context "
        f"({context:,} tokens a session at its last turn)"
    )
    for column in ("sessions", "mode", "routing", "hit rate", "of single", "TTFT p50 s", "TTFT p99 s",
                   "session p50 s", "session max s"):  # fmt: skip
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            str(r["sessions"]), r["mode"], r["routing"], f"{r['hit_rate']:.1%}", f"{r['of_single_hit_rate']:.0%}",
            f"{r['ttft_p50_s']:.3f}", f"{r['ttft_p99_s']:.3f}", f"{r['session_p50_s']:.1f}", f"{r['session_max_s']:.1f}",
        )  # fmt: skip
    console.print(table)


def plot(path: str, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted({r["sessions"] for r in rows})
    routings = list(dict.fromkeys(r["routing"] for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, axes = plt.subplots(len(levels), 2, figsize=(11, 3.6 * len(levels)), squeeze=False)
    width = 0.8 / len(routings)
    for row_axes, sessions in zip(axes, levels):
        for k, routing in enumerate(routings):
            mine = {r["mode"]: r for r in rows if r["sessions"] == sessions and r["routing"] == routing}
            xs = [i + k * width for i in range(len(modes))]
            row_axes[0].bar(xs, [mine[m]["hit_rate"] * 100 for m in modes], width, label=routing)
            row_axes[1].bar(xs, [mine[m]["ttft_p99_s"] for m in modes], width, label=routing)
        for ax, title, unit in ((row_axes[0], "prefix-cache hit rate", "%"), (row_axes[1], "TTFT p99", "s")):
            ax.set_xticks([i + width * (len(routings) - 1) / 2 for i in range(len(modes))], modes)
            ax.set(title=f"{sessions} sessions: {title}", ylabel=unit)
            ax.margins(y=0.25)  # room above the bars for the legend
            ax.legend(fontsize=7, loc="upper left", ncols=len(routings))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
