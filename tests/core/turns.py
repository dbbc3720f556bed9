"""Real turns without a socket: a sim pipeline with no latency, requests built from wire bodies."""

from __future__ import annotations

from typing import Any

from loopway.core.context.parent import Parent
from loopway.core.context.sealing import Sealer
from loopway.core.turn.pipeline import TurnPipeline
from loopway.core.turn.turn import Turn, TurnOrigin
from loopway.engines.sim import SimEngine, SimSettings
from loopway.protocol.events import Event
from loopway.protocol.request import CreateRequest, create_from

MODEL = "loopway-sim"
READ_FILE = {
    "type": "function",
    "name": "read_file",
    "description": "Read a file",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
}
INSTANT = SimSettings(base_latency_ms=0, prefill_tokens_per_s=1e12, decode_tokens_per_s=1e9, context_window=2_000)


def pipeline(settings: SimSettings = INSTANT) -> TurnPipeline:
    return TurnPipeline(SimEngine(settings), Sealer(b"k" * 32))


def request(websocket: bool = True, **fields: Any) -> CreateRequest:
    """A validated request; ``store`` defaults to false, as WebSocket agent loops send it."""
    return create_from({"model": MODEL, "input": "Say hello", "store": False, **fields}, websocket=websocket)


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": text}


async def events_of(pipe: TurnPipeline, turn: Turn) -> list[Event]:
    """A prepared turn started and run to its end."""
    await pipe.start(turn)
    return [event async for event in pipe.run(turn)]


async def finished(
    pipe: TurnPipeline, req: CreateRequest, parent: Parent | None = None, origin: TurnOrigin = TurnOrigin()
) -> Turn:
    """A turn prepared and run to its terminal event."""
    turn = pipe.prepare(req, parent, origin=origin)
    await events_of(pipe, turn)
    return turn
