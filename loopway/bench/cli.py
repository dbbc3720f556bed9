"""``loopway bench`` (end to end), ``loopway bench overhead`` and ``loopway bench generate``."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
from pathlib import Path

from rich.progress import Progress

from loopway.bench import (
    dashboard_cost,
    fault_recovery,
    fleet_routing,
    mcp_rollout,
    overhead,
    report,
    soak,
    upstream,
    workload,
)
from loopway.bench.link import PROFILES
from loopway.bench.runner import MODES, ModeResult, run_mode

# Each module has add_arguments(parser) and run(args).
SUBCOMMANDS = {
    "overhead": (overhead, "server time per turn, engine excluded, vs history length"),
    "soak": (soak, "concurrent WebSocket agent sessions until latency limits"),
    "fleet": (fleet_routing, "routing in front of sim replicas with finite prefix caches"),
    "faults": (fault_recovery, "agent sessions under injected faults reach the same answers"),
    "dashboard": (dashboard_cost, "what dashboards watching cost the turn path"),
    "upstream": (upstream, "what loopway (and LiteLLM) add in front of a chat upstream"),
    "mcp": (mcp_rollout, "a rollout's tools on an MCP server: run by the client, or by loopway"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workload", default="coding-40", help=f"a shipped workload ({', '.join(workload.SHIPPED)}) or a trace file"
    )
    parser.add_argument("--link", default="wan", choices=sorted(PROFILES), help="emulated link between client and server")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    parser.add_argument(
        "--url",
        help="an external server's /v1 URL (it must replay the workload's trace); "
        "default: a fresh in-process server per mode",
    )
    parser.add_argument("--json", dest="json_path", help="write the results as JSON here")
    parser.add_argument("--plot", dest="plot_path", help="write a PNG plot here")
    sub = parser.add_subparsers(dest="bench")
    for name, (module, help) in SUBCOMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=help))
    generate = sub.add_parser("generate", help="write a workload trace generated from a seed")
    generate.add_argument("--calls", type=int, required=True, help="tool calls in the rollout")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--out", required=True, help="where to write the trace")


def run(args: argparse.Namespace) -> int:
    # SIGTERM unwinds like Ctrl-C, so the servers a benchmark started are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if args.bench in SUBCOMMANDS:
        return SUBCOMMANDS[args.bench][0].run(args)
    if args.bench == "generate":
        Path(args.out).write_text(json.dumps(workload.generate(args.calls, args.seed), indent=1) + "\n")
        print(f"wrote {args.out}")
        return 0
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        print(f"loopway bench: unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
        return 2
    results = asyncio.run(_run_all(args.workload, args.link, modes, args.url))
    name = Path(args.workload).stem
    report.print_table(name, args.link, results)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report.document(name, args.link, results), indent=1))
        print(f"wrote {args.json_path}")
    if args.plot_path:
        report.plot(args.plot_path, name, args.link, results)
        print(f"wrote {args.plot_path}")
    return 0


async def _run_all(name: str, link: str, modes: list[str], url: str | None) -> dict[str, ModeResult]:
    trace = workload.load(name)
    results: dict[str, ModeResult] = {}
    with tempfile.TemporaryDirectory(prefix="loopway-workload-") as tmp:
        trace_path = Path(tmp) / "trace.json"
        trace_path.write_text(json.dumps(trace))
        with Progress() as progress:
            for mode in modes:
                task = progress.add_task(f"{mode:>15}", total=len(trace["turns"]))
                results[mode] = await run_mode(
                    mode, trace, str(trace_path), PROFILES[link], url=url, on_turn=lambda task=task: progress.advance(task)
                )
    return results
