"""``loopway bench overhead``: the API layer's own time per turn against history length.

Server-side time per request with the engine excluded (validate incl. JSON parsing, resolve,
render, persist), measured inside the server, for three ways of continuing a conversation:

- ``http-stateless``: the whole history in every request, ``store=false``;
- ``http-chained``: ``previous_response_id`` over HTTP, state rebuilt from the SQLite store;
- ``ws``: ``previous_response_id`` on one WebSocket, state from the connection cache.

The sim engine runs with zero latency and tiny answers, so nothing but the API layer is timed.

Two columns per mode: the **staged** time (what the server's stage timers saw: validate incl. JSON
parsing, resolve, render, persist), and the **CPU** the whole server spent per turn, read from
the kernel's CPU clocks (``/proc``'s accounting) for every thread of the process but the benchmark's
own client thread. The staged time
leaves out what happens between and around the stages: the socket reads and HTTP or WebSocket
parsing before ``validate``, Starlette and the middleware, the event loop and task switches, the
engine's (tiny) generation, assembling and encoding every event, framing and writing them, metrics
and the log line, and the cyclic GC.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

from loopway.bench.server import InProcessServer
from loopway.engines.sim import SimSettings
from loopway.protocol.items import FunctionCall, FunctionCallOutput, Message
from loopway.settings import Settings
from loopway.tokens.render import Renderer

MODEL = "loopway-sim"
LENGTHS = (1_000, 10_000, 50_000, 100_000, 200_000)
MODES = ("http-stateless", "http-chained", "ws")
_TEXT = (
    "def handler(request):\n    value = compute(request.payload, retries=3)\n"
    "    return Response(value, status=200)  # keep the fast path fast\n"
)


def history(tokens: int) -> list[dict[str, Any]]:
    """A coding-agent history of about ``tokens`` tokens: file reads and their contents."""
    renderer = Renderer()
    items: list[dict[str, Any]] = [{"type": "message", "role": "user", "content": "Fix the failing test in src/app.py"}]
    total = len(renderer.item(Message(role="user", content=items[0]["content"])))
    step = 0
    while total < tokens:
        call_id = f"call_{step:05d}"
        arguments = json.dumps({"path": f"src/module_{step}.py"})
        body = _TEXT * max(1, min(40, (tokens - total) // 30))
        call = {"type": "function_call", "call_id": call_id, "name": "read_file", "arguments": arguments}
        output = {"type": "function_call_output", "call_id": call_id, "output": body}
        total += len(renderer.item(FunctionCall(call_id=call_id, name="read_file", arguments=arguments)))
        total += len(renderer.item(FunctionCallOutput(call_id=call_id, output=body)))
        items += [call, output]
        step += 1
    return items


TOOLS = [
    {
        "type": "function",
        "name": "read_file",
        "description": "Read a file",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
            "additionalProperties": False,
        },
        "strict": True,
    }
]


class ServerCpu:
    """CPU seconds of every thread of this process but the client's: the thread that made this and the
    receiving threads of the ``websockets`` sync client.

    The kernel's per-thread CPU clocks: the accounting ``/proc`` reports, at nanosecond resolution
    rather than its 10 ms ticks. A thread that ended is no longer counted, so the server's threads
    (its loop and its worker pool) must outlive the measurement, which they do."""

    def __init__(self) -> None:
        self.client = threading.get_ident()

    def read(self) -> float:
        total = 0.0
        for thread in threading.enumerate():
            if thread.ident is None or thread.ident == self.client or "recv_events" in thread.name:
                continue
            try:
                total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
            except OSError:  # it ended between the listing and the reading
                continue
        return total


class Measured:
    """Staged milliseconds per turn, and the server's CPU over the same turns."""

    def __init__(self, cpu: ServerCpu) -> None:
        self.cpu = cpu
        self.staged: list[float] = []
        self.cpu_ms_per_turn = 0.0
        self._start = 0.0

    def __enter__(self) -> Measured:
        self._start = self.cpu.read()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu_ms_per_turn = (self.cpu.read() - self._start) * 1000 / max(1, len(self.staged))


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "tools": TOOLS, "tool_choice": "none", "max_output_tokens": 16, **fields}


def _server_ms(server_timing: str) -> float:
    parts = dict(p.strip().split(";dur=") for p in server_timing.split(","))
    return sum(float(parts[s]) for s in ("validate", "resolve", "render", "persist"))


def bench_http_stateless(http: httpx.Client, items: list[dict[str, Any]], reps: int, cpu: ServerCpu) -> Measured:
    with Measured(cpu) as measured:
        for i in range(reps):
            r = http.post("/responses", json=_body(input=[*items, _user(i)], store=False))
            r.raise_for_status()
            measured.staged.append(_server_ms(r.headers["server-timing"]))
    return measured


def bench_http_chained(http: httpx.Client, items: list[dict[str, Any]], reps: int, cpu: ServerCpu) -> Measured:
    r = http.post("/responses", json=_body(input=items, store=True))
    r.raise_for_status()
    parent = r.json()["id"]
    with Measured(cpu) as measured:
        for i in range(reps):
            r = http.post("/responses", json=_body(input=[_user(i)], previous_response_id=parent, store=True))
            r.raise_for_status()
            measured.staged.append(_server_ms(r.headers["server-timing"]))
    return measured


def bench_ws(server: InProcessServer, items: list[dict[str, Any]], reps: int, cpu: ServerCpu) -> Measured:
    url = server.url.replace("http", "ws", 1) + "/responses"
    log = server.service.pipeline.stage_log
    with connect(url, max_size=None) as ws:
        previous = _ws_turn(ws, _body(type="response.create", input=items, store=False))
        with Measured(cpu) as measured:
            for i in range(reps):
                previous = _ws_turn(
                    ws, _body(type="response.create", input=[_user(i)], previous_response_id=previous, store=False)
                )
                times = log.get(previous)
                assert times is not None
                measured.staged.append(times.pre + times.persist)
        return measured


def _ws_turn(ws: Any, body: dict[str, Any]) -> str:
    ws.send(json.dumps(body))
    while True:
        event = json.loads(ws.recv())
        if event["type"] == "error":
            raise RuntimeError(event["error"]["message"])
        if event["type"] in ("response.completed", "response.incomplete"):
            return event["response"]["id"]


def _user(i: int) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": f"Now check step {i}."}


def measure(lengths: tuple[int, ...], reps: int, data_dir: str) -> dict[str, dict[int, Measured]]:
    sim = SimSettings(
        context_window=1_000_000,
        base_latency_ms=0,
        prefill_tokens_per_s=1e12,
        decode_tokens_per_s=1e9,
        kv_cache_tokens=0,
        shared_prefill=False,
        decode_slowdown=0,
    )
    settings = Settings(port=0, data_dir=data_dir, sim=sim, max_body_bytes=256 << 20, max_frame_bytes=256 << 20)
    results: dict[str, dict[int, Measured]] = {mode: {} for mode in MODES}
    cpu = ServerCpu()
    with InProcessServer(settings) as server, httpx.Client(base_url=server.url, timeout=120) as http:
        for length in lengths:
            items = history(length)
            results["http-stateless"][length] = bench_http_stateless(http, items, reps, cpu)
            results["http-chained"][length] = bench_http_chained(http, items, reps, cpu)
            results["ws"][length] = bench_ws(server, items, reps, cpu)
    return results


def report(results: dict[str, dict[int, Measured]]) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    lengths = sorted(next(iter(results.values())))
    table = Table(title="Server time per turn, engine excluded: staged median ms | whole-server CPU ms per turn")
    table.add_column("history (tokens)", justify="right")
    for mode in MODES:
        table.add_column(f"{mode} staged", justify="right")
        table.add_column("CPU", justify="right")
    summary: dict[str, Any] = {"unit": "ms", "modes": {}}
    for mode in MODES:
        summary["modes"][mode] = {
            str(n): {
                "median": statistics.median(results[mode][n].staged),
                "p90": sorted(results[mode][n].staged)[int(0.9 * (len(results[mode][n].staged) - 1))],
                "cpu_ms_per_turn": results[mode][n].cpu_ms_per_turn,
                "samples": results[mode][n].staged,
            }
            for n in lengths
        }
    for n in lengths:
        cells = []
        for m in MODES:
            row = summary["modes"][m][str(n)]
            cells += [f"{row['median']:.3f}", f"{row['cpu_ms_per_turn']:.2f}"]
        table.add_row(f"{n:,}", *cells)
    first, last = str(lengths[0]), str(lengths[-1])
    ratios = {m: summary["modes"][m][last]["median"] / summary["modes"][m][first]["median"] for m in MODES}
    table.add_row(f"t({int(last):,})/t({int(first):,})", *(c for m in MODES for c in (f"{ratios[m]:.2f}", "")))
    summary["ratio_last_first"] = ratios
    Console().print(table)
    Console().print(
        "CPU: every server thread's CPU clock, over the same turns (the staged time leaves out the socket, HTTP and "
        "WebSocket parsing, Starlette, the loop, event assembly, encoding and framing, metrics, logging and the GC)."
    )
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="history lengths in tokens")
    parser.add_argument("--reps", type=int, default=15, help="requests per mode and length")
    parser.add_argument("--json", dest="json_path", help="write the results as JSON here")


def run(args: argparse.Namespace) -> int:
    lengths = tuple(int(x) for x in args.lengths.split(","))
    with tempfile.TemporaryDirectory(prefix="loopway-bench-") as data_dir:
        summary = report(measure(lengths, args.reps, data_dir))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json_path}")
    return 0
