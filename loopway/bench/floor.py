"""The Python floor: the least a Python WebSocket server can spend streaming the soak's answers.

A bare ``websockets`` server on uvloop that answers each ``response.create`` with the frames loopway
would send for a text answer (``response.created``, one ``response.output_text.delta`` per token at
the sim's pace, ``response.completed`` with usage) and does nothing else: no validation, no state,
no tokenizer. ``loopway bench soak`` drives it with the same load generator in the same run, so
loopway's CPU per delta reads as a multiple of this floor.

Run as ``python -m loopway.bench.floor PORT``.
"""

from __future__ import annotations

import asyncio
import itertools
import sys

import msgspec
import uvloop
from websockets.asyncio.server import ServerConnection, serve

BASE_LATENCY_S, DECODE_TPS = 0.02, 1_000.0
WORDS = [" the", " module", " change", " test", " because", " value", " and", " it"]


class Create(msgspec.Struct):
    max_output_tokens: int = 90


async def answer(ws: ServerConnection, ids: itertools.count[int], tokens: int) -> None:
    response_id = f"resp_{next(ids):024x}"
    await ws.send(msgspec.json.encode({"type": "response.created", "response": {"id": response_id}}).decode())
    await asyncio.sleep(BASE_LATENCY_S)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n in range(tokens):
        wait = n / DECODE_TPS - (loop.time() - start)
        if wait > 0:
            await asyncio.sleep(max(wait, 0.001))
        delta = {
            "type": "response.output_text.delta",
            "item_id": f"msg_{response_id[5:]}",
            "output_index": 0,
            "content_index": 0,
            "delta": WORDS[n % len(WORDS)],
            "logprobs": [],
            "sequence_number": n + 4,
        }
        await ws.send(msgspec.json.encode(delta).decode())
    done = {"id": response_id, "status": "completed", "usage": {"output_tokens": tokens}}
    await ws.send(msgspec.json.encode({"type": "response.completed", "response": done}).decode())


async def handler(ws: ServerConnection) -> None:
    ids = itertools.count()
    decoder = msgspec.json.Decoder(Create)
    async for frame in ws:
        await answer(ws, ids, decoder.decode(frame).max_output_tokens)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, max_size=None):
        await asyncio.Future()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
