"""``loopway bench upstream``: what a Responses proxy adds per turn in front of a chat upstream.

The same growing conversation (user messages only, so every proxy can translate it) goes to the
upstream directly (Chat Completions, streamed) and through each proxy (Responses over HTTP SSE and
over WebSocket, the full input each turn). For every turn all modes run back to back, a few times,
and a mode's overhead is its median latency minus the direct call's, both to the terminal event.
Proxies: loopway (``openai-chat`` engine, started as its own process) and, when given, LiteLLM's proxy
(started separately: ``litellm --config ... --host 127.0.0.1``).
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
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from websockets.asyncio.client import connect

from loopway.bench.server import free_port, wait_healthy

_SENTENCE = "The handler validates the request, renders the new items and streams the answer back. "


def conversation(turn: int, tokens_per_message: int) -> list[dict[str, Any]]:
    body = _SENTENCE * max(1, tokens_per_message // 16)
    return [{"role": "user", "content": f"Message {i}. {body}"} for i in range(turn + 1)]


async def direct(http: httpx.AsyncClient, url: str, model: str, messages: list[dict[str, Any]], max_tokens: int) -> float:
    start = time.perf_counter()
    body = {"model": model, "messages": messages, "stream": True, "max_tokens": max_tokens, "temperature": 0}
    async with http.stream("POST", f"{url}/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.strip() == "data: [DONE]":
                break
    return time.perf_counter() - start


async def over_http(
    http: httpx.AsyncClient, url: str, key: str | None, model: str, items: list[dict[str, Any]], max_tokens: int
) -> float:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {
        "model": model,
        "input": items,
        "stream": True,
        "store": False,
        "max_output_tokens": max_tokens,
        "temperature": 0,
    }
    start = time.perf_counter()
    async with http.stream("POST", f"{url}/responses", json=body, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data:") and ('"response.completed"' in line or '"response.incomplete"' in line):
                break
            if line.startswith("data:") and '"response.failed"' in line:
                raise RuntimeError(line[:300])
    return time.perf_counter() - start


async def over_ws(ws: Any, model: str, items: list[dict[str, Any]], max_tokens: int) -> float:
    body = {
        "type": "response.create",
        "model": model,
        "input": items,
        "store": False,
        "max_output_tokens": max_tokens,
        "temperature": 0,
    }
    start = time.perf_counter()
    await ws.send(json.dumps(body))
    while True:
        event = json.loads(await ws.recv())
        if event["type"] in ("response.completed", "response.incomplete"):
            return time.perf_counter() - start
        if event["type"] in ("response.failed", "error"):
            raise RuntimeError(json.dumps(event)[:300])


async def measure(
    upstream: str,
    model: str,
    litellm: str | None,
    litellm_key: str | None,
    turns: int,
    reps: int,
    tokens_per_message: int,
    max_tokens: int,
    loopway_url: str,
) -> dict[str, list[float]]:
    samples: dict[str, list[list[float]]] = {m: [] for m in _modes(litellm)}
    async with httpx.AsyncClient(timeout=120) as http:
        sockets = {"loopway-ws": await connect(loopway_url.replace("http", "ws", 1) + "/responses", max_size=None)}
        if litellm:
            sockets["litellm-ws"] = await connect(
                litellm.replace("http", "ws", 1) + "/responses",
                max_size=None,
                additional_headers={"Authorization": f"Bearer {litellm_key}"},
            )
        try:
            for turn in range(turns):
                messages = conversation(turn, tokens_per_message)
                per_mode: dict[str, list[float]] = {m: [] for m in samples}
                calls = {
                    "direct": lambda: direct(http, upstream, model, messages, max_tokens),
                    "loopway-http": lambda: over_http(http, loopway_url, None, model, messages, max_tokens),
                    "loopway-ws": lambda: over_ws(sockets["loopway-ws"], model, messages, max_tokens),
                    "litellm-http": lambda: over_http(http, litellm, litellm_key, model, messages, max_tokens),
                    "litellm-ws": lambda: over_ws(sockets["litellm-ws"], model, messages, max_tokens),
                }
                await calls["direct"]()  # warm the upstream's prompt cache: every mode then finds it warm
                order = list(samples)
                for rep in range(reps):
                    for mode in order[rep % len(order) :] + order[: rep % len(order)]:  # rotate: no mode always first
                        per_mode[mode].append(await calls[mode]())
                for mode, values in per_mode.items():
                    samples[mode].append(values)
        finally:
            for ws in sockets.values():
                await ws.close()
    direct_turns = [statistics.median(v) for v in samples["direct"]]
    return {
        mode: [statistics.median(v) - d for v, d in zip(turns_, direct_turns)]
        for mode, turns_ in samples.items()
        if mode != "direct"
    } | {"direct": direct_turns}


def _modes(litellm: str | None) -> list[str]:
    return ["direct", "loopway-http", "loopway-ws"] + (["litellm-http", "litellm-ws"] if litellm else [])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--upstream", required=True, help="the chat upstream's /v1 URL")
    parser.add_argument("--model", required=True, help="the upstream model name (served under the same name)")
    parser.add_argument("--litellm-url", help="a running LiteLLM proxy's /v1 URL in front of the same upstream")
    parser.add_argument("--litellm-key", help="the LiteLLM proxy's master key")
    parser.add_argument("--turns", type=int, default=12)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens-per-message", type=int, default=150)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--json", dest="json_path")


@contextlib.contextmanager
def loopway_process(upstream: str, model: str) -> Iterator[str]:
    """loopway as its own process, like the proxy it is compared with (no shared GIL with the client)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="loopway-bench-") as data_dir:
        process = subprocess.Popen(
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
                data_dir,
                "--engine",
                "openai-chat",
                "--upstream",
                upstream,
                "--upstream-model",
                model,
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}/v1"
        try:
            wait_healthy(url.removesuffix("/v1"))
            yield url
        finally:
            process.terminate()
            process.wait(timeout=10)


def run(args: argparse.Namespace) -> int:
    with loopway_process(args.upstream, args.model) as url:
        results = asyncio.run(
            measure(
                args.upstream,
                args.model,
                args.litellm_url,
                args.litellm_key,
                args.turns,
                args.reps,
                args.tokens_per_message,
                args.max_tokens,
                url,
            )
        )
    table = Table(
        title=f"Overhead per turn over calling {args.model} directly (median ms; the direct call itself "
        f"{statistics.median(results['direct']) * 1000:.1f} ms)"
    )
    for column in ("mode", "median ms", "p90 ms", "first turn ms", "last turn ms"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    summary: dict[str, Any] = {"upstream_model": args.model, "turns": args.turns, "modes": {}}
    for mode, overheads in results.items():
        ms = [o * 1000 for o in overheads]
        summary["modes"][mode] = {
            "per_turn_ms": ms,
            "median_ms": statistics.median(ms),
            "p90_ms": sorted(ms)[int(0.9 * (len(ms) - 1))],
        }
        if mode != "direct":
            table.add_row(
                mode,
                f"{statistics.median(ms):.2f}",
                f"{summary['modes'][mode]['p90_ms']:.2f}",
                f"{ms[0]:.2f}",
                f"{ms[-1]:.2f}",
            )
    console = Console() if Console().is_terminal else Console(width=140)
    console.print(table)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(summary, indent=1))
    return 0
