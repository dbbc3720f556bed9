"""``loopway bench soak``: how many concurrent WebSocket agent sessions one box carries.

N sessions, each a loop of turns on its own socket (``store=false``, only new input each turn),
against 1 or 2 server processes (sessions are spread over the replicas; a WebSocket session stays on
its replica anyway). The sim engine decodes at 1,000 tokens/s. Per turn the client measures:

- the server's per-turn overhead, engine excluded (validate + resolve + render + queue + persist, from
  the servers' JSON log line for each response): this is the limit's "overhead";
- the client-side view: time from sending ``response.create`` to ``response.completed`` minus the
  engine time the cost model prescribes for that turn's usage (base latency + uncached tokens ÷
  prefill rate + output tokens ÷ decode rate), which adds the socket, the client and timer jitter;
- the largest gap between consecutive events while the answer streams.

N doubles until the p99 overhead passes 5 ms or the p99 gap passes 50 ms.

Deltas coalesce adaptively at the source: the engine emits every token that is due when it wakes,
so an idle server sends one token per delta and a loaded one (late timers) sends several, without
ever holding text back. ``tokens/delta`` shows how much that happens at each load. Memory per session is
the servers' resident memory growth over idle, divided by N, while the sessions are connected.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table
from websockets.asyncio.client import connect

from loopway.bench.server import free_port, wait_healthy

BASE_S, PREFILL_TPS, DECODE_TPS = 0.02, 20_000.0, 1_000.0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@contextlib.contextmanager
def replicas(count: int) -> Iterator[list[tuple[str, int, Path]]]:
    processes, urls, logs = [], [], []
    with tempfile.TemporaryDirectory(prefix="loopway-soak-") as tmp:
        for i in range(count):
            port = free_port()
            logs.append(Path(tmp) / f"{i}.log")
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "loopway",
                        "serve",
                        "--port",
                        str(port),
                        "--store",
                        "memory",
                        "--data-dir",
                        f"{tmp}/{i}",
                        "--log-level",
                        "info",
                        "--log-format",
                        "json",
                        "--sim-base-latency-ms",
                        str(BASE_S * 1000),
                        "--sim-prefill-tps",
                        str(PREFILL_TPS),
                        "--sim-decode-tps",
                        str(DECODE_TPS),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=logs[-1].open("wb"),
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
        try:
            for url in urls:
                wait_healthy(url)
            yield [(url, p.pid, log) for url, p, log in zip(urls, processes, logs)]
        finally:
            for p in processes:
                p.terminate()
                p.wait(timeout=15)


async def session(
    url: str, turns: int, ready: asyncio.Barrier, out: list[tuple[float, float]], deltas: list[tuple[int, int]]
) -> None:
    async with connect(url.replace("http", "ws", 1) + "/v1/responses", max_size=None) as ws:
        await ready.wait()
        previous = None
        for turn in range(turns):
            body = {
                "type": "response.create",
                "model": "loopway-sim",
                "store": False,
                "max_output_tokens": 200,
                "input": f"Turn {turn}: tell me what changed in the module and why it matters.",
            }
            if previous:
                body["previous_response_id"] = previous
            sent = time.perf_counter()
            await ws.send(json.dumps(body))
            last, gap, count = None, 0.0, 0
            while True:
                event = json.loads(await ws.recv())
                now = time.perf_counter()
                if event["type"] == "response.output_text.delta":
                    gap = max(gap, now - last) if last is not None else gap
                    last = now
                    count += 1
                if event["type"] in ("response.completed", "response.incomplete"):
                    usage = event["response"]["usage"]
                    uncached = usage["input_tokens"] - usage["input_tokens_details"]["cached_tokens"]
                    engine = BASE_S + uncached / PREFILL_TPS + usage["output_tokens"] / DECODE_TPS
                    out.append((now - sent - engine, gap))
                    deltas.append((count, usage["output_tokens"]))
                    previous = event["response"]["id"]
                    break
                if event["type"] in ("error", "response.failed"):
                    raise RuntimeError(json.dumps(event)[:300])


def server_overheads(servers: list[tuple[str, int, Path]], seen: set[str]) -> list[float]:
    """Per-turn server overhead (ms) of responses not counted before, from the JSON logs."""
    out = []
    for _, _, log in servers:
        for line in log.read_text().splitlines():
            if not line.startswith("{") or '"loopway.responses"' not in line:
                continue
            entry = json.loads(line)
            if entry["response_id"] in seen:
                continue
            seen.add(entry["response_id"])
            stages = entry["stages_ms"]
            out.append(sum(stages[s] for s in ("validate", "resolve", "render", "queue", "persist")))
    return out


async def level(servers: list[tuple[str, int, Path]], sessions: int, turns: int, seen: set[str]) -> dict[str, float]:
    samples: list[tuple[float, float]] = []
    deltas: list[tuple[int, int]] = []
    ready = asyncio.Barrier(sessions + 1)
    server_overheads(servers, seen)  # forget earlier levels
    idle = sum(rss_mb(pid) for _, pid, _ in servers)
    tasks = [
        asyncio.create_task(session(servers[i % len(servers)][0], turns, ready, samples, deltas)) for i in range(sessions)
    ]
    await ready.wait()
    loaded = sum(rss_mb(pid) for _, pid, _ in servers)
    await asyncio.gather(*tasks)
    await asyncio.sleep(0.2)  # let the last log lines land
    client = sorted(o * 1000 for o, _ in samples[sessions:])  # the first turn of each session warms up
    gaps = sorted(g * 1000 for _, g in samples[sessions:])
    server = sorted(server_overheads(servers, seen))
    p99 = lambda xs: xs[min(len(xs) - 1, int(0.99 * len(xs)))]  # noqa: E731
    return {
        "sessions": sessions,
        "overhead_p50_ms": statistics.median(server),
        "overhead_p99_ms": p99(server),
        "client_overhead_p50_ms": statistics.median(client),
        "client_overhead_p99_ms": p99(client),
        "gap_p99_ms": p99(gaps),
        "mb_per_session": max(0.0, loaded - idle) / sessions,
        "tokens_per_delta": sum(t for _, t in deltas) / max(1, sum(c for c, _ in deltas)),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--start", type=int, default=4, help="first number of sessions (then doubled)")
    parser.add_argument("--max-sessions", type=int, default=512)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--json", dest="json_path")


def run(args: argparse.Namespace) -> int:
    rows: list[dict[str, float]] = []
    seen: set[str] = set()
    with replicas(args.replicas) as servers:
        n = args.start
        while n <= args.max_sessions:
            row = asyncio.run(level(servers, n, args.turns, seen))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
            if row["overhead_p99_ms"] > 5 or row["gap_p99_ms"] > 50:
                break
            n *= 2
    passing = [r for r in rows if r["overhead_p99_ms"] <= 5 and r["gap_p99_ms"] <= 50]
    table = Table(title=f"Soak: {args.replicas} replica(s), sim at {DECODE_TPS:.0f} tokens/s, store=false")
    for column in (
        "sessions",
        "server overhead p50 ms",
        "p99 ms",
        "client-seen p50 ms",
        "p99 ms",
        "event gap p99 ms",
        "MB/session",
        "tokens/delta",
    ):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            f"{r['sessions']:.0f}",
            f"{r['overhead_p50_ms']:.2f}",
            f"{r['overhead_p99_ms']:.2f}",
            f"{r['client_overhead_p50_ms']:.2f}",
            f"{r['client_overhead_p99_ms']:.2f}",
            f"{r['gap_p99_ms']:.1f}",
            f"{r['mb_per_session']:.2f}",
            f"{r['tokens_per_delta']:.2f}",
        )
    console = Console() if Console().is_terminal else Console(width=120)
    console.print(table)
    best = passing[-1]["sessions"] if passing else 0
    console.print(f"sessions within both limits: {best:.0f}")
    if args.json_path:
        Path(args.json_path).write_text(
            json.dumps({"replicas": args.replicas, "max_sessions": best, "levels": rows}, indent=1)
        )
    return 0
