"""One load-generator process of ``loopway bench soak``: N agent sessions, each on its own WebSocket.

Run by the soak orchestrator as ``python -m loopway.bench.soakload``, pinned to cores the server
does not use, so the clients' own CPU never counts against the server and never slows it. Every
session loops back-to-back turns (``store=false``, each continuing the last by
``previous_response_id``), starting at staggered moments in the warm-up. Only events that arrive in
the measurement window count; the numbers are written as one JSON document to ``--out`` (a file: an
event loop may leave stdout non-blocking, and a pipe then takes 64 KB of the document and drops the
rest without a word).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time

import msgspec
import uvloop
from websockets.asyncio.client import connect

DELTAS = frozenset({"response.output_text.delta", "response.function_call_arguments.delta"})
TERMINAL = frozenset({"response.completed", "response.incomplete"})


class Usage(msgspec.Struct):
    output_tokens: int = 0


class Response(msgspec.Struct):
    id: str = ""
    usage: Usage | None = None


class Event(msgspec.Struct):
    """Only what the load generator reads of an event; msgspec skips the rest without building it."""

    type: str
    response: Response | None = None


class Window(msgspec.Struct):
    start: float
    end: float

    def __contains__(self, moment: float) -> bool:
        return self.start <= moment <= self.end


class SessionTally(msgspec.Struct):
    tokens: int = 0
    answer_s: float = 0.0


class Tally(msgspec.Struct):
    """What one process saw in the window (gaps in milliseconds)."""

    event_gaps_ms: list[float] = msgspec.field(default_factory=list)
    turn_max_gaps_ms: list[float] = msgspec.field(default_factory=list)
    sessions: list[SessionTally] = msgspec.field(default_factory=list)
    turns: int = 0
    deltas: int = 0
    output_tokens: int = 0
    errors: list[str] = msgspec.field(default_factory=list)


async def session(url: str, window: Window, delay_s: float, max_output_tokens: int, tally: Tally) -> None:
    mine = SessionTally()
    tally.sessions.append(mine)
    decoder = msgspec.json.Decoder(Event)
    await asyncio.sleep(delay_s)
    async with connect(url, max_size=None) as ws:
        previous = None
        turn = 0
        while time.time() < window.end:
            body: dict[str, object] = {
                "type": "response.create",
                "model": "loopway-sim",
                "store": False,
                "max_output_tokens": max_output_tokens,
                "input": f"Turn {turn}: tell me what changed in the module and why it matters.",
            }
            if previous:
                body["previous_response_id"] = previous
            await ws.send(msgspec.json.encode(body).decode())
            turn += 1
            first = last = None
            max_gap = 0.0
            while True:
                event = decoder.decode(await ws.recv())
                now = time.time()
                if event.type in DELTAS:
                    if last is not None:
                        gap = (now - last) * 1000
                        max_gap = max(max_gap, gap)
                        if now in window:
                            tally.event_gaps_ms.append(gap)
                            tally.deltas += 1
                    first = now if first is None else first
                    last = now
                elif event.type in TERMINAL and event.response is not None:
                    previous = event.response.id
                    tokens = event.response.usage.output_tokens if event.response.usage else 0
                    if first is not None and first in window and now in window:
                        tally.turns += 1
                        tally.output_tokens += tokens
                        tally.turn_max_gaps_ms.append(max_gap)
                        mine.tokens += tokens
                        mine.answer_s += (last - first) + 1 / 1000  # the first token's own interval
                    break
                elif event.type in ("error", "response.failed"):
                    tally.errors.append(event.type)
                    return


async def main(args: argparse.Namespace) -> Tally:
    tally = Tally()
    window = Window(args.start_at + args.warmup_s, args.start_at + args.warmup_s + args.duration_s)
    await asyncio.sleep(max(0.0, args.start_at - time.time()))
    spread = random.Random(args.seed)
    tasks = [
        asyncio.create_task(session(args.url, window, spread.uniform(0, args.warmup_s / 2), args.max_output_tokens, tally))
        for _ in range(args.sessions)
    ]
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(outcome, BaseException):
            tally.errors.append(f"{type(outcome).__name__}: {outcome}"[:200])
    return tally


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loopway.bench.soakload")
    parser.add_argument("--url", required=True, help="ws://host:port/v1/responses")
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--start-at", type=float, required=True, help="wall-clock time the sessions start")
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--max-output-tokens", type=int, default=90)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="where to write the tally (JSON)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse(sys.argv[1:])
    tally = uvloop.run(main(args))
    with open(args.out, "wb") as out:
        out.write(msgspec.json.encode(tally))
