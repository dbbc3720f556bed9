"""``loopway bench dashboard``: what watching costs the turn path.

The soak's load (``bench soak``: WebSocket sessions streaming back-to-back turns, load generators in
their own processes, pinned) runs against one server process four times, each after a warm-up:
nobody watching; ``--viewers`` dashboards reading the feed; the same number connected and never
reading (their sockets' buffers fill, so the feed must drop for them); nobody again, to show how
far the same process drifts between runs. The viewers run in a process
of their own (``python -m loopway.bench.dashboard_cost viewer``). Reported side by side: the server's
whole-process CPU per turn (``/proc``), p99 gaps between deltas, tokens/s, and the ratios to the run
nobody watched.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from loopway.bench.procs import pin, split_cores, stop
from loopway.bench.soak import run_level, server

WATCHERS = ("none", "reading", "stalled", "none")  # nobody again last: how far the same server drifts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sessions", type=int, default=100, help="concurrent streaming sessions")
    parser.add_argument("--viewers", type=int, default=4, help="dashboards watching (at most 8 per server)")
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--max-output-tokens", type=int, default=90)
    parser.add_argument("--json", dest="json_path")


def run(args: argparse.Namespace) -> int:
    server_cores, load_cores = split_cores(1)
    soak = argparse.Namespace(
        workers=1, store="memory", server_arg=[], load_processes=0, warmup_s=args.warmup_s,
        duration_s=args.duration_s, max_output_tokens=args.max_output_tokens,
    )  # fmt: skip
    console = Console(width=140)
    rows = []
    with server("loopway", soak, server_cores) as (pid, port):
        for watchers in WATCHERS:
            viewers = None
            if watchers != "none":
                command = [
                    sys.executable,
                    "-m",
                    "loopway.bench.dashboard_cost",
                    "viewer",
                    str(port),
                    watchers,
                    str(args.viewers),
                ]
                viewers = subprocess.Popen(command)
                pin(viewers.pid, load_cores)
                time.sleep(1.0)
            try:
                row = run_level("loopway", pid, port, args.sessions, soak, load_cores)
            finally:
                if viewers is not None:
                    stop(viewers)
            row["watchers"] = watchers
            rows.append(row)
            console.print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    base = rows[0]
    for row in rows:
        row["cpu_per_turn_ratio"] = row["cpu_ms_per_turn"] / base["cpu_ms_per_turn"]
    table = Table(title=f"{args.sessions} streaming sessions; {args.viewers} dashboards reading or stalled")
    for column in (
        "watching",
        "CPU ms/turn",
        "× nobody",
        "CPU share",
        "p99 gap ms",
        "p99 turn gap ms",
        "tokens/s",
        "errors",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row["watchers"], f"{row['cpu_ms_per_turn']:.3f}", f"{row['cpu_per_turn_ratio']:.3f}",
                      f"{row['cpu_share']:.2f}", f"{row['gap_p99_ms']:.1f}", f"{row['turn_gap_p99_ms']:.1f}",
                      f"{row['tokens_per_s']:,.0f}", str(row["errors"]))  # fmt: skip
    console.print(table)
    if args.json_path:
        document = {"sessions": args.sessions, "viewers": args.viewers, "rows": rows}
        Path(args.json_path).write_text(json.dumps(document, indent=1) + "\n")
    return 0


# The viewers' process ---------------------------------------------------------------------------------


async def reading(port: int) -> None:
    async with httpx.AsyncClient(timeout=None) as client:
        async with client.stream("GET", f"http://127.0.0.1:{port}/dashboard/feed") as feed:
            async for _ in feed.aiter_bytes():
                pass


async def stalled(port: int) -> None:
    """Ask for the feed, then never read: the socket's buffers fill and the server must skip."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /dashboard/feed HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    try:
        await asyncio.sleep(3600)
    finally:
        sock.close()


async def viewers(port: int, mode: str, count: int) -> None:
    watch = reading if mode == "reading" else stalled
    await asyncio.gather(*(watch(port) for _ in range(count)))


if __name__ == "__main__" and sys.argv[1:2] == ["viewer"]:
    asyncio.run(viewers(int(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
