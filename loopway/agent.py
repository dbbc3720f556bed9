"""``loopway agent``: a small coding agent on ``loopway.client``, for any Responses server."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from loopway.client import AgentError, AgentLoop, TurnTrace, make_transport
from loopway.client.coding import Workspace

INSTRUCTIONS = (
    "You are a careful coding agent. Work only inside the work directory. Read before you edit, "
    "run the tests to check your change, and finish with a short account of what you changed."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="what the agent should do")
    parser.add_argument(
        "--base-url",
        default=os.environ.get("LOOPWAY_BASE_URL", "http://127.0.0.1:8080/v1"),
        help="the Responses server [env LOOPWAY_BASE_URL]",
    )
    parser.add_argument("--model", default=os.environ.get("LOOPWAY_MODEL", "loopway-sim"), help="[env LOOPWAY_MODEL]")
    parser.add_argument(
        "--api-key", default=os.environ.get("OPENAI_API_KEY"), help="bearer key (default: env OPENAI_API_KEY)"
    )
    parser.add_argument("--transport", choices=["ws", "http"], default="ws")
    parser.add_argument("--store", action="store_true", help="store responses (chain by id over HTTP)")
    parser.add_argument("--workdir", default=".", help="the directory the agent may read, write and run in")
    parser.add_argument("--max-turns", type=int, default=50)
    parser.add_argument("--command-timeout-s", type=float, default=60.0)
    parser.add_argument("--json", action="store_true", help="print the run's turns and answer as JSON")


def run(args: argparse.Namespace) -> int:
    workspace = Workspace(args.workdir, command_timeout_s=args.command_timeout_s)
    if not workspace.root.is_dir():
        print(f"loopway agent: {args.workdir} is not a directory", file=sys.stderr)
        return 2
    return asyncio.run(_run(args, workspace))


async def _run(args: argparse.Namespace, workspace: Workspace) -> int:
    transport = make_transport(args.transport, args.base_url, args.api_key, store=args.store)

    def show(trace: TurnTrace) -> None:
        if not args.json:
            print(
                f"turn {trace.turn}: {trace.calls} tool call(s), {trace.input_tokens} tokens in, "
                f"{trace.total_s * 1000:.0f} ms",
                file=sys.stderr,
            )

    loop = AgentLoop(
        transport, workspace.registry(), model=args.model, instructions=INSTRUCTIONS, max_turns=args.max_turns, on_turn=show
    )
    try:
        result = await loop.run(args.task)
    except AgentError as exc:
        print(f"loopway agent: {exc}", file=sys.stderr)
        return 1
    finally:
        await transport.aclose()
    if args.json:
        print(
            json.dumps(
                {
                    "answer": result.output_text,
                    "turns": len(result.turns),
                    "elapsed_s": result.elapsed_s,
                    "items": result.items,
                }
            )
        )
    else:
        for item in result.items:
            if item.get("type") == "function_call":
                print(f"> {item['name']}({item['arguments'][:120]})")
        print(result.output_text)
    return 0
