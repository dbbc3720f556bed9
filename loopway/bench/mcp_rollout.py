"""``loopway bench mcp``: what tools run by the server save an agent loop, over a real link.

One coding rollout (``coding-20`` by default) whose tools live on an MCP server that sits beside
loopway (loopback to it), run three ways, each on a fresh server, through the same emulated link
between the client and the server side (``--link``, ``wan`` by default):

- ``client-tools``: function tools over WebSocket mode; the client runs each call by calling the
  MCP server itself, across the link (its tools live with the server, not with it);
- ``client-tools-local``: the same, with the MCP server beside the client instead (no link to it):
  the ordinary client-side agent loop, for reference;
- ``server-mcp``: the tools are an ``mcp`` tool; loopway lists them and runs every call itself, so
  the whole rollout is one response, with no round trip to the client between tool rounds.

The MCP server answers each call with the workload's recorded result after its recorded tool time
(``ReplayMcp``, a small JSON-response MCP server), so all three do the same work. Reported per mode
(median of ``--repeat`` runs): end-to-end time, responses, round trips the client waited on across
the link (responses, plus its own MCP requests), MCP requests, bytes over the link, and the time and
round trips saved against ``client-tools``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import threading
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import httpx
import msgspec
import uvicorn
from rich.console import Console
from rich.table import Table
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from loopway.bench import workload as workloads
from loopway.bench.link import PROFILES, LinkProfile, LinkProxy
from loopway.bench.server import InProcessServer, free_port, wait_started
from loopway.client import AgentLoop, ToolRegistry, make_transport
from loopway.engines.sim import SimSettings
from loopway.mcp.client import McpLimits, McpSession
from loopway.settings import Settings

MODES = ("client-tools", "client-tools-local", "server-mcp")
LABEL = "work"


class ReplayMcp:
    """An MCP server (streamable HTTP, JSON responses) offering a workload's tools, answering each
    call with the recorded result for its arguments after the recorded tool time."""

    def __init__(self, workload: dict[str, Any]) -> None:
        self.tools = [
            {"name": t["name"], "description": t.get("description", ""), "inputSchema": t["parameters"]}
            for t in workload["tools"]
        ]
        self.results: dict[str, deque[dict[str, Any]]] = defaultdict(deque)
        for turn in workload["turns"]:
            calls = [i for i in turn["output"] if i["type"] == "function_call"]
            for call, result in zip(calls, turn.get("tool_results", []), strict=True):
                self.results[_key(call["name"], call["arguments"])].append(result)
        self.requests = 0
        self.calls = 0
        self.app = Starlette(routes=[Route("/mcp", self._endpoint, methods=["POST", "DELETE"])])

    async def _endpoint(self, request: Request) -> Response:
        self.requests += 1
        if request.method == "DELETE":
            return Response(status_code=200)
        message = msgspec.json.decode(await request.body())
        method, params = message.get("method"), message.get("params") or {}
        if "id" not in message:  # a notification
            return Response(status_code=202)
        headers = {}
        if method == "initialize":
            result: dict[str, Any] = {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "replay", "version": "1"},
            }
            headers["mcp-session-id"] = secrets.token_hex(16)
        elif method == "tools/list":
            result = {"tools": self.tools}
        elif method == "tools/call":
            result = await self._call(params.get("name", ""), params.get("arguments") or {})
        else:
            error = {"code": -32601, "message": f"no method {method}"}
            return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "error": error})
        return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "result": result}, headers=headers)

    async def _call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        queue = self.results.get(_key(name, arguments))
        if not queue:
            return {"content": [{"type": "text", "text": f"no recorded result for {name}"}], "isError": True}
        result = queue.popleft()
        await asyncio.sleep(result["tool_time_s"])
        return {"content": [{"type": "text", "text": result["output"]}], "isError": False}


def _key(name: str, arguments: Any) -> str:
    if isinstance(arguments, str):
        arguments = json.loads(arguments)
    return name + json.dumps(arguments, sort_keys=True)


class AppThread:
    """An ASGI app under uvicorn on a thread of its own (the MCP server's side of the bench)."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()), daemon=True)

    def __enter__(self) -> AppThread:
        self._thread.start()
        wait_started(self._server, self._thread, "the MCP server")
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def client_tools(workload: dict[str, Any], session: McpSession) -> ToolRegistry:
    """The workload's tools as client-side function tools, each call made on the MCP server."""
    registry = ToolRegistry()
    for tool in workload["tools"]:

        async def call(_name: str = tool["name"], **arguments: Any) -> str:
            result = await session.call_tool(_name, arguments)
            return result.output if result.failure is None else json.dumps(result.failure.wire())

        registry.register(call, name=tool["name"], description=tool.get("description", ""), parameters=tool["parameters"])
    return registry


async def run_mode(mode: str, workload: dict[str, Any], trace_path: str, profile: LinkProfile) -> dict[str, Any]:
    replay = ReplayMcp(workload)
    with tempfile.TemporaryDirectory(prefix="loopway-bench-mcp-") as data_dir, AppThread(replay.app) as mcp_server:
        sim = SimSettings(trace=trace_path, models=[workload["model"]])
        settings = Settings(port=0, data_dir=data_dir, store="memory", mcp_allow="127.0.0.1", sim=sim)
        server = await asyncio.to_thread(InProcessServer(settings).__enter__)
        proxies = [await LinkProxy(profile, "127.0.0.1", settings.port).start()]
        mcp_url = f"http://127.0.0.1:{mcp_server.port}/mcp"
        if mode == "client-tools":
            proxies.append(await LinkProxy(profile, "127.0.0.1", mcp_server.port).start())
            mcp_url = f"http://127.0.0.1:{proxies[1].port}/mcp"
        transport = make_transport("ws", f"http://127.0.0.1:{proxies[0].port}/v1", "sk-bench")
        http = httpx.AsyncClient(timeout=60)
        session = McpSession(http, mcp_url, {}, McpLimits(call_timeout_s=60))
        try:
            if mode == "server-mcp":
                tool = {"type": "mcp", "server_label": LABEL, "server_url": mcp_url, "require_approval": "never"}
                loop = AgentLoop(
                    transport,
                    ToolRegistry(),
                    model=workload["model"],
                    instructions=workload["instructions"],
                    extra={"tools": [tool]},
                )
            else:
                registry = client_tools(workload, session)
                loop = AgentLoop(transport, registry, model=workload["model"], instructions=workload["instructions"])
            result = await loop.run(workload["task"])
        finally:
            await session.aclose()
            await http.aclose()
            await transport.aclose()
            for proxy in proxies:
                await proxy.aclose()
            await asyncio.to_thread(server.__exit__, None, None, None)
    client_mcp = replay.requests if mode != "server-mcp" else 0
    return {
        "mode": mode,
        "e2e_s": result.elapsed_s,
        "responses": len(result.turns),
        "mcp_requests": replay.requests,
        "tool_calls": replay.calls,
        "link_round_trips": len(result.turns) + (client_mcp if mode == "client-tools" else 0),
        "bytes_over_link": sum(p.up.bytes + p.down.bytes for p in proxies),
        "answer": _last_message(result.items),  # one response holds every round's commentary: compare the last
    }


def _last_message(items: list[dict[str, Any]]) -> str:
    for item in reversed(items):
        if item.get("type", "message") == "message" and item.get("role") == "assistant":
            content = item.get("content")
            return content if isinstance(content, str) else "".join(p.get("text", "") for p in content or [])
    return ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", default="coding-20", help="a shipped workload or a trace file")
    parser.add_argument("--link", default="wan", choices=sorted(PROFILES))
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode (medians reported)")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--plot", dest="plot_path")


def run(args: argparse.Namespace) -> int:
    workload = workloads.load(args.workload)
    profile = PROFILES[args.link]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as trace:
        json.dump(workload, trace)
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for _ in range(args.repeat):
        for mode in MODES:  # interleaved, so drift over the run touches every mode alike
            runs[mode].append(asyncio.run(run_mode(mode, workload, trace.name, profile)))
    Path(trace.name).unlink()
    rows = [_median_row(mode, runs[mode]) for mode in MODES]
    answers = {r["answer"] for mode in MODES for r in runs[mode]}
    base = rows[0]
    for row in rows:
        row["saved_s"] = base["e2e_s"] - row["e2e_s"]
        row["round_trips_saved"] = base["link_round_trips"] - row["link_round_trips"]
        row["saved_ms_per_round_trip"] = (
            1000 * row["saved_s"] / row["round_trips_saved"] if row["round_trips_saved"] else None
        )
    document = {
        "workload": workload["name"],
        "link": msgspec.to_builtins(profile),
        "repeat": args.repeat,
        "same_answer_everywhere": len(answers) == 1,
        "modes": rows,
        "runs": {mode: [{k: v for k, v in r.items() if k != "answer"} for r in runs[mode]] for mode in MODES},
    }
    _print(document, profile)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(document, indent=1) + "\n")
    if args.plot_path:
        _plot(args.plot_path, document)
    return 0 if document["same_answer_everywhere"] else 1


def _median_row(mode: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    row = {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], (int, float))}
    return {"mode": mode, **row, "e2e_s_all": [round(r["e2e_s"], 3) for r in runs]}


def _print(document: dict[str, Any], profile: LinkProfile) -> None:
    table = Table(
        title=f"{document['workload']} over {profile.name} ({profile.round_trip_s * 1000:.0f} ms round trip), "
        f"median of {document['repeat']}; same final answer everywhere: {document['same_answer_everywhere']}"
    )
    columns = (
        "mode",
        "e2e s",
        "responses",
        "round trips",
        "MCP requests",
        "tool calls",
        "MB over link",
        "saved s",
        "ms/trip saved",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "mode" else "right")
    for row in document["modes"]:
        table.add_row(
            row["mode"],
            f"{row['e2e_s']:.2f}",
            f"{row['responses']:.0f}",
            f"{row['link_round_trips']:.0f}",
            f"{row['mcp_requests']:.0f}",
            f"{row['tool_calls']:.0f}",
            f"{row['bytes_over_link'] / 1e6:.2f}",
            f"{row['saved_s']:+.2f}",
            f"{row['saved_ms_per_round_trip']:.0f}" if row["saved_ms_per_round_trip"] is not None else "",
        )
    Console(width=140).print(table)


def _plot(path: str, document: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = document["modes"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh([r["mode"] for r in rows], [r["e2e_s"] for r in rows], color=["#b0b0b0", "#d0d0d0", "#3070b0"])
    for i, row in enumerate(rows):
        trips = row["link_round_trips"]
        ax.text(row["e2e_s"], i, f" {row['e2e_s']:.2f} s, {trips:.0f} round trip{'' if trips == 1 else 's'}", va="center")
    ax.set_xlabel("end-to-end seconds (median)")
    ax.set_title(f"{document['workload']}: tools on an MCP server, run by the client or by loopway")
    ax.set_xlim(0, max(r["e2e_s"] for r in rows) * 1.45)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
