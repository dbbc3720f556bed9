"""``loopway bench soak``: how many streaming agent sessions one server carries, measured from outside.

The server runs in its own process, pinned to its own cores (``--workers`` of them); the load
generators (``loopway.bench.soakload``) run in other processes pinned to the remaining cores, so
neither's CPU counts against or slows the other. Each session loops back-to-back WebSocket turns of
about ``--max-output-tokens`` tokens (the sim decodes at 1,000 tokens/s), continuing by
``previous_response_id`` with ``store=false``. Per level, after a warm-up, for ``--duration-s``:

- p99 of every gap between consecutive delta events, and p99 of each turn's largest gap;
- p1 of the sessions' stream rates (tokens over the time from first to last delta): a session
  streaming at half rate fails the level, whatever the average;
- the server's whole-process CPU (``/proc``, workers included) per delta event, per turn and per
  token, tokens/s, and GC pauses (from ``/metrics``).

A level passes with p99 gap ≤ 50 ms, p99 turn max gap ≤ 100 ms, p1 rate ≥ 900 tokens/s and no
errors. The same load runs against the Python floor (``loopway.bench.floor``: a bare ``websockets``
server sending the same frames at the same pace) in the same run. Memory per session is measured
apart: sessions each holding a cached 100k-token conversation, resident memory growth ÷ sessions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table
from websockets.sync.client import connect

from loopway.bench.procs import cpu_s, pin, rss_mb, split_cores, stop
from loopway.bench.server import free_port, wait_healthy
from loopway.bench.soakload import Tally

GAP_P99_MS, TURN_GAP_P99_MS, RATE_P1 = 50.0, 100.0, 900.0


# Servers ------------------------------------------------------------------------------------------


def wait_listening(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port} after {timeout_s:g} s") from None
            time.sleep(0.05)


@contextlib.contextmanager
def server(kind: str, args: argparse.Namespace, cores: list[int]) -> Iterator[tuple[int, int]]:
    """A fresh server process (``loopway`` or ``floor``), pinned; yields (pid, port)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="loopway-soak-") as tmp:
        if kind == "floor":
            command = [sys.executable, "-m", "loopway.bench.floor", str(port)]
        else:
            command = [
                sys.executable, "-m", "loopway", "serve", "--port", str(port), "--data-dir", tmp,
                "--store", args.store or ("memory" if args.workers == 1 else f"sqlite:{tmp}/soak.db"),
                "--workers", str(args.workers), "--sim-decode-tps", "1000", "--sim-base-latency-ms", "20",
                "--sim-kv-cache-tokens", "0", "--sim-shared-prefill", "off", "--sim-decode-slowdown", "0",
                *args.server_arg,
            ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/server.log", "wb"))
        try:
            pin(process.pid, cores)
            if kind == "floor":
                wait_listening(port)
            else:
                wait_healthy(f"http://127.0.0.1:{port}")
            time.sleep(0.5)
            pin(process.pid, cores)  # workers started since
            yield process.pid, port
        finally:
            stop(process)
            if process.returncode not in (0, -15):
                print(Path(f"{tmp}/server.log").read_text()[-2000:], file=sys.stderr)


def gc_pauses(port: int) -> dict[str, float]:
    """The server's GC pause counts from /metrics: all of them, and those over 20 ms."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    out = {"count": 0.0, "over_20ms": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "loopway_gc_pause_seconds_count":
                out["count"] += sample.value
            elif sample.name == "loopway_gc_pause_seconds_bucket" and float(sample.labels["le"]) == 0.02:
                out["over_20ms"] -= sample.value
    out["over_20ms"] += out["count"]
    return out


# One level ----------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_level(kind: str, pid: int, port: int, sessions: int, args: argparse.Namespace, cores: list[int]) -> dict:
    processes = max(1, min(args.load_processes or len(cores), sessions))
    start_at = time.time() + 1.0
    with tempfile.TemporaryDirectory(prefix="loopway-soakload-") as tmp:
        loads = []
        for i in range(processes):
            share = sessions // processes + (1 if i < sessions % processes else 0)
            command = [
                sys.executable, "-m", "loopway.bench.soakload", "--url", f"ws://127.0.0.1:{port}/v1/responses",
                "--sessions", str(share), "--start-at", str(start_at), "--warmup-s", str(args.warmup_s),
                "--duration-s", str(args.duration_s), "--max-output-tokens", str(args.max_output_tokens),
                "--seed", str(i), "--out", f"{tmp}/{i}.json",
            ]  # fmt: skip
            loads.append(subprocess.Popen(command))
            os.sched_setaffinity(loads[-1].pid, [cores[i % len(cores)]])
        window_start = start_at + args.warmup_s
        time.sleep(max(0.0, window_start - time.time()))
        cpu0, gc0 = cpu_s(pid), gc_pauses(port) if kind == "loopway" else {}
        time.sleep(max(0.0, window_start + args.duration_s - time.time()))
        cpu = cpu_s(pid) - cpu0
        gc1 = gc_pauses(port) if kind == "loopway" else {}
        tallies = [load_result(p, f"{tmp}/{i}.json") for i, p in enumerate(loads)]
    return summarize(kind, sessions, cpu, tallies, {k: gc1[k] - gc0.get(k, 0) for k in gc1}, args.duration_s)


def load_result(process: subprocess.Popen[bytes], path: str) -> Tally:
    if process.wait() != 0:
        raise RuntimeError(f"a load generator failed (status {process.returncode}); its error is above")
    return msgspec.json.decode(Path(path).read_bytes(), type=Tally)


def summarize(kind: str, sessions: int, cpu: float, tallies: list[Tally], gc: dict[str, float], seconds: float) -> dict:
    gaps = [g for t in tallies for g in t.event_gaps_ms]
    turn_gaps = [g for t in tallies for g in t.turn_max_gaps_ms]
    rates = [s.tokens / s.answer_s for t in tallies for s in t.sessions if s.answer_s > 0]
    turns, deltas = sum(t.turns for t in tallies), sum(t.deltas for t in tallies)
    tokens = sum(t.output_tokens for t in tallies)
    errors = [e for t in tallies for e in t.errors]
    starved = sum(1 for t in tallies for s in t.sessions if s.answer_s == 0)
    row = {
        "server": kind,
        "sessions": sessions,
        "gap_p99_ms": percentile(gaps, 0.99),
        "turn_gap_p99_ms": percentile(turn_gaps, 0.99),
        "rate_p1": percentile(rates, 0.01) if not starved else 0.0,
        "tokens_per_s": tokens / seconds,
        "turns_per_s": turns / seconds,
        "tokens_per_delta": tokens / max(1, deltas + turns),
        "cpu_share": cpu / seconds,
        "cpu_us_per_delta": 1e6 * cpu / max(1, deltas + turns),  # every delta event, first ones included
        "cpu_us_per_token": 1e6 * cpu / max(1, tokens),
        "cpu_ms_per_turn": 1e3 * cpu / max(1, turns),
        "gc_pauses": gc.get("count"),
        "gc_pauses_over_20ms": gc.get("over_20ms"),
        "errors": len(errors) + starved,
        "error_sample": errors[:3],
    }
    row["passes"] = (
        row["gap_p99_ms"] <= GAP_P99_MS
        and row["turn_gap_p99_ms"] <= TURN_GAP_P99_MS
        and row["rate_p1"] >= RATE_P1
        and row["errors"] == 0
    )
    return row


# Memory per session with a cached 100k-token conversation -----------------------------------------


def memory_per_session(port: int, pid: int, sessions: int, tokens: int) -> dict[str, float]:
    """Resident memory growth per WebSocket session holding a cached ``tokens``-token conversation:
    right after the frame that brought it, and after one more (small) turn, as an agent loop's next
    turn would be. The difference is the last frame, which the ``websockets`` parser keeps until the
    next one arrives (its bytes, and the text uvicorn decoded)."""
    text = " ".join(f"w{i % 1000}" for i in range(tokens // 2))  # about two tokens a word

    def turn(ws: Any, body: str, previous: str | None = None) -> str:
        request = {"type": "response.create", "model": "loopway-sim", "store": False, "max_output_tokens": 16,
                   "input": body, **({"previous_response_id": previous} if previous else {})}  # fmt: skip
        ws.send(json.dumps(request))
        while True:
            event = json.loads(ws.recv())
            if event["type"] in ("response.completed", "response.incomplete"):
                return event["response"]["id"]

    with connect(f"ws://127.0.0.1:{port}/v1/responses", max_size=None) as warm:
        turn(warm, "next", turn(warm, text))  # tokenizer tables, buffers, first-use allocations
    time.sleep(0.5)
    before = rss_mb(pid)
    sockets = [connect(f"ws://127.0.0.1:{port}/v1/responses", max_size=None) for _ in range(sessions)]
    try:
        ids = [turn(ws, text) for ws in sockets]
        time.sleep(0.5)
        after_frame = (rss_mb(pid) - before) / sessions
        for ws, previous in zip(sockets, ids):
            turn(ws, "and the next step?", previous)
        time.sleep(0.5)
        return {"after_the_frame": after_frame, "after_the_next_turn": (rss_mb(pid) - before) / sessions}
    finally:
        for ws in sockets:
            ws.close()


# The command --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--levels", default="50,100,150,200,250", help="concurrent sessions per level")
    parser.add_argument("--workers", type=int, default=1, help="server workers, each pinned to a core of its own")
    parser.add_argument("--store", help="the server's store (default: memory with one worker, SQLite with more)")
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--max-output-tokens", type=int, default=90, help="each turn's answer length")
    parser.add_argument("--load-processes", type=int, default=0, help="load generators (default: one per free core)")
    parser.add_argument("--no-floor", action="store_true", help="skip the Python-floor server")
    parser.add_argument("--memory-sessions", type=int, default=8, help="sessions for the memory measurement (0: skip)")
    parser.add_argument("--memory-tokens", type=int, default=100_000)
    parser.add_argument(
        "--delta-sessions", type=int, default=32, help="sessions for the CPU-per-delta comparison with the floor (0: skip)"
    )
    parser.add_argument("--keep-going", action="store_true", help="run every level even after one fails")
    parser.add_argument("--server-arg", action="append", default=[], help="an extra 'loopway serve' argument (repeatable)")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--plot", dest="plot_path")


def run(args: argparse.Namespace) -> int:
    server_cores, load_cores = split_cores(args.workers)
    levels = [int(n) for n in args.levels.split(",") if n.strip()]
    rows: list[dict] = []
    console = Console() if Console().is_terminal else Console(width=160)
    console.print(f"server cores {server_cores}, load-generator cores {load_cores}")
    for kind in ("loopway",) if args.no_floor else ("loopway", "floor"):
        with server(kind, args, server_cores) as (pid, port):
            for sessions in levels:
                row = run_level(kind, pid, port, sessions, args, load_cores)
                rows.append(row)
                console.print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
                if not row["passes"] and not args.keep_going:
                    break
    per_delta = compare_per_delta(args, server_cores, load_cores, console) if args.delta_sessions else None
    memory = None
    if args.memory_sessions:
        with server("loopway", args, server_cores) as (pid, port):
            memory = memory_per_session(port, pid, args.memory_sessions, args.memory_tokens)
    print_table(console, args, rows, memory)
    if per_delta:
        ratio = per_delta["loopway"]["cpu_us_per_delta"] / per_delta["floor"]["cpu_us_per_delta"]
        console.print(
            f"CPU per delta event, {args.delta_sessions} sessions streaming {STREAM_TOKENS}-token answers, one token a "
            f"delta (--ws-flush-ms 0): loopway {per_delta['loopway']['cpu_us_per_delta']:.1f} µs, Python floor "
            f"{per_delta['floor']['cpu_us_per_delta']:.1f} µs: {ratio:.2f}x"
        )
    document = {"workers": args.workers, "server_cores": server_cores, "levels": rows, "memory_mb_per_session": memory}
    document["per_delta"] = per_delta
    document["max_sessions"] = max((r["sessions"] for r in rows if r["server"] == "loopway" and r["passes"]), default=0)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(document, indent=1))
    if args.plot_path:
        plot(args.plot_path, rows)
    return 0


STREAM_TOKENS = 1_000


def compare_per_delta(
    args: argparse.Namespace, server_cores: list[int], load_cores: list[int], console: Console
) -> dict[str, dict]:
    """CPU per delta event where turns are long (their own cost spread thin) and nothing merges:
    loopway against the Python floor, the same sessions, the same frames at the same pace."""
    stream = argparse.Namespace(**vars(args))
    stream.max_output_tokens = STREAM_TOKENS
    stream.server_arg = [*args.server_arg, "--ws-flush-ms", "0"]
    out = {}
    for kind in ("loopway", "floor"):
        with server(kind, stream, server_cores) as (pid, port):
            out[kind] = run_level(kind, pid, port, args.delta_sessions, stream, load_cores)
            console.print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out[kind].items()}))
    return out


def print_table(console: Console, args: argparse.Namespace, rows: list[dict], memory: dict | None) -> None:
    table = Table(
        title=f"Soak: {args.workers} worker(s), sim at 1,000 tokens/s, ~{args.max_output_tokens}-token turns, "
        f"{args.duration_s:g} s per level"
    )
    columns = ("server", "sessions", "gap p99 ms", "turn gap p99 ms", "rate p1 tok/s", "tokens/s", "turns/s",
               "tok/delta", "CPU", "µs/delta", "ms/turn", "GC>20ms", "errors", "pass")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r["server"], str(r["sessions"]), f"{r['gap_p99_ms']:.1f}", f"{r['turn_gap_p99_ms']:.1f}",
            f"{r['rate_p1']:.0f}", f"{r['tokens_per_s']:.0f}", f"{r['turns_per_s']:.0f}",
            f"{r['tokens_per_delta']:.2f}", f"{r['cpu_share']:.0%}", f"{r['cpu_us_per_delta']:.1f}",
            f"{r['cpu_ms_per_turn']:.2f}", "-" if r["gc_pauses_over_20ms"] is None else f"{r['gc_pauses_over_20ms']:.0f}",
            str(r["errors"]), "yes" if r["passes"] else "NO",
        )  # fmt: skip
    console.print(table)
    best = max((r["sessions"] for r in rows if r["server"] == "loopway" and r["passes"]), default=0)
    console.print(f"loopway sessions within every limit: {best}")
    if memory is not None:
        console.print(
            f"memory per session holding a cached {args.memory_tokens:,}-token conversation: "
            f"{memory['after_the_next_turn']:.2f} MB ({memory['after_the_frame']:.2f} MB while the frame that "
            "brought it is the socket's last)"
        )


def plot(path: str, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for kind, style in (("loopway", "o-"), ("floor", "s--")):
        mine = [r for r in rows if r["server"] == kind]
        if not mine:
            continue
        x = [r["sessions"] for r in mine]
        left.plot(x, [r["gap_p99_ms"] for r in mine], style, label=f"{kind} p99 event gap")
        left.plot(x, [r["turn_gap_p99_ms"] for r in mine], style, alpha=0.5, label=f"{kind} p99 turn max gap")
        right.plot(x, [r["cpu_us_per_delta"] for r in mine], style, label=f"{kind} CPU µs/delta")
    left.axhline(GAP_P99_MS, color="grey", lw=0.8)
    left.axhline(TURN_GAP_P99_MS, color="grey", lw=0.8, ls=":")
    left.set(xlabel="concurrent sessions", ylabel="ms", title="stream gaps")
    right.set(xlabel="concurrent sessions", ylabel="µs", title="server CPU per delta event")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
