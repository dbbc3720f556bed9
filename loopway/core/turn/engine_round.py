"""One engine round: an engine stream turned into events, and how it ended.

A turn without MCP servers has one round. With them, a round whose calls were all loopway's to
run ends ``TOOLS_RAN``: their answers join the context and the engine goes on in the next round of
the same response. Each round says how it ended, so the pipeline's loop over rounds is short and
every way a round can end is written here once.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncIterator

from loopway.core.turn import mcp_rounds
from loopway.core.turn.turn import Turn
from loopway.engines.base import Delta, EngineError, Finish
from loopway.protocol.events import Event
from loopway.protocol.items import McpCall

log = logging.getLogger("loopway.pipeline")

NO_STREAM = ("server_error", "No engine stream.")
UNFINISHED = ("server_error", "The engine ended the response without finishing it.")
ENGINE_BUG = ("server_error", "The model failed to generate a response.")


class Ending(enum.Enum):
    FINISHED = "finished"  # the engine finished: the response completes (or is cut short by its limits)
    TOOLS_RAN = "tools_ran"  # only MCP calls that loopway ran: the next round goes on
    STEERED = "steered"  # response.steer: the open item closed, the response ends incomplete
    FAILED = "failed"  # the engine refused mid-stream, failed, or broke off


class EngineRound:
    """Iterate ``events()``; then ``ending`` says how the round ended, with its ``finish`` (usage)
    or its ``failure`` (code, message)."""

    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.ending = Ending.FAILED
        self.finish: Finish | None = None
        self.failure: tuple[str, str] = NO_STREAM

    async def events(self) -> AsyncIterator[Event]:
        generation = self.turn.generation
        if generation is None:
            self.failure = self.turn.open_failure or NO_STREAM
            return
        try:
            async for event in self._stream(generation):
                yield event
        except asyncio.CancelledError:
            raise
        except EngineError as exc:
            self.ending, self.failure = Ending.FAILED, (exc.code, str(exc))
        except Exception:  # an engine bug must fail this response, not the server
            log.exception("engine failed on %s", self.turn.id)
            self.ending, self.failure = Ending.FAILED, ENGINE_BUG

    async def _stream(self, generation: AsyncIterator[Delta]) -> AsyncIterator[Event]:
        start = len(self.turn.response.output)
        calls: list[tuple[McpCall, int]] = []  # MCP calls started this round, with their output index
        async for event in self._deltas(generation, calls):
            yield event
        if self.ending is Ending.STEERED:
            return
        if self.finish is None:
            self.failure = UNFINISHED
            return
        async for event in self._close(generation, calls, start):
            yield event

    async def _deltas(self, generation: AsyncIterator[Delta], calls: list[tuple[McpCall, int]]) -> AsyncIterator[Event]:
        """The engine's deltas as events, up to its ``Finish`` (or a steer between two items)."""
        turn, a = self.turn, self.turn.assembler
        async for delta in generation:
            if turn.steered and not isinstance(delta, Finish) and not a.continues_open_item(delta):
                await generation.aclose()  # type: ignore[attr-defined]
                self.ending = Ending.STEERED
                for event in a.close_open_item():  # the item it waited for is complete
                    yield event
                return
            if turn.first_token_at is None:
                turn.first_token_at = time.perf_counter()
                turn.times.ttft = (turn.first_token_at - turn.opened_at) * 1000
            if isinstance(delta, Finish):
                self.finish = delta
                await generation.aclose()  # type: ignore[attr-defined]  # an upstream cut short stops now
                return
            events = a.feed(delta)
            for event in events:
                yield event
            if turn.mcp is not None:
                calls += mcp_rounds.start_closed_calls(turn.mcp, turn.response.output, events)

    async def _close(
        self, generation: AsyncIterator[Delta], calls: list[tuple[McpCall, int]], start: int
    ) -> AsyncIterator[Event]:
        """The last item closed; the round's MCP calls answered; whether the model goes on."""
        turn, a = self.turn, self.turn.assembler
        assert self.finish is not None
        truncated = self.finish.reason in ("length", "content_filter")
        events = a.close_open_item("incomplete" if truncated else "completed")
        for event in events:
            yield event
        self.ending = Ending.FINISHED
        if turn.mcp is None:
            return
        calls += mcp_rounds.start_closed_calls(turn.mcp, turn.response.output, events)
        for call, index in calls:
            for event in a.mcp_call_finished(call, index, *await turn.mcp.result(call)):
                yield event
        if calls and not truncated and not turn.steered and mcp_rounds.only_mcp_calls(turn.response.output[start:]):
            await generation.aclose()  # type: ignore[attr-defined]  # this round's stream, before the next opens
            self.ending = Ending.TOOLS_RAN
