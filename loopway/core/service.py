"""The Responses service: every operation of the API, for any transport.

HTTP routes and the WebSocket session call these methods and only frame what comes back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from loopway.core import compaction, history
from loopway.core.background import BackgroundRuns
from loopway.core.history import Parent
from loopway.core.limits import ConnectionLimiter, RateLimiter
from loopway.core.metrics import Metrics
from loopway.core.persistence import ResponseLog
from loopway.core.pipeline import Turn, TurnPipeline
from loopway.core.replay import rebuild_events
from loopway.core.timing import StageTimes
from loopway.engines.base import Engine, describe, find_model
from loopway.protocol import ids
from loopway.protocol import response as wire
from loopway.protocol.errors import ApiError, invalid_request, missing_parameter, model_not_found, response_not_found
from loopway.protocol.events import Event
from loopway.protocol.items import Message, item_id, normalized, parse_input, to_builtins
from loopway.protocol.request import CreateRequest, shape_check
from loopway.protocol.response import Response, Usage
from loopway.protocol.tools import EMPTY_TOOLS
from loopway.store.base import StoredResponse


class CompactBody(msgspec.Struct, kw_only=True):
    model: str | None = None
    input: str | list[Any] | None = None
    previous_response_id: str | None = None
    instructions: str | None = None


class ResponsesService:
    def __init__(self, engine: Engine, pipeline: TurnPipeline, log: ResponseLog, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.pipeline = pipeline
        self.log = log
        self.metrics = metrics or Metrics()
        log.on_persisted = self.metrics.persisted
        self.background = BackgroundRuns(
            pipeline, log, on_finish=lambda turn: self.metrics.turn_finished(turn, "background")
        )
        self.sessions: set[Any] = set()  # open WebSocket sessions, for tests, benchmarks and shutdown
        self.draining = False  # set on SIGTERM: finish what is in flight, start nothing new
        self.limiter = RateLimiter(0)
        self.connections = ConnectionLimiter(0)

    # Creating --------------------------------------------------------------------------------

    async def resolve(self, request: CreateRequest, times: StageTimes, tenant: str) -> Parent | None:
        """The previous response from the store (the HTTP path; WebSocket tries its cache first)."""
        if request.previous_response_id is None:
            return None
        with times.measure("resolve"):
            return await history.load_parent(self.log, request.previous_response_id, tenant)

    async def prepare(self, request: CreateRequest, times: StageTimes | None = None, tenant: str = "") -> Turn:
        """Everything before the first event: resolve, validate, render, and the engine's acceptance."""
        times = times or StageTimes()
        if request.store:
            await self.log.check()  # store=true needs the store: say so now, not after generating
        parent = await self.resolve(request, times, tenant)
        turn = self.pipeline.prepare(request, parent, times, tenant)
        await self.pipeline.start(turn)
        return turn

    def run(self, turn: Turn) -> AsyncIterator[Event]:
        return self.pipeline.run(turn)

    async def persist(self, turn: Turn, transport: str = "http") -> None:
        """Persist now (HTTP: before the terminal event reaches the client), then count the turn."""
        if turn.request.store:
            with turn.times.measure("persist"):
                await self.log.put(self.pipeline.record(turn))
        self.metrics.turn_finished(turn, transport)

    def persist_behind(self, turn: Turn, transport: str = "ws") -> None:
        """Persist after the terminal event went out (WebSocket overlap); readable at once."""
        if turn.request.store:
            with turn.times.measure("persist"):
                self.log.put_behind(self.pipeline.record(turn))
        self.metrics.turn_finished(turn, transport)

    async def start_background(self, turn: Turn) -> Response:
        return await self.background.start(turn)

    # Reading ---------------------------------------------------------------------------------

    async def record(self, response_id: str, tenant: str) -> StoredResponse:
        record = await self.log.get(response_id, tenant)
        if record is None:
            raise response_not_found(response_id)
        return record

    async def retrieve(self, response_id: str, tenant: str = "") -> Response:
        running = self.background.running(response_id, tenant)
        if running is not None:
            return running.response
        return wire.decode((await self.record(response_id, tenant)).response)

    async def events(self, response_id: str, starting_after: int, tenant: str = "") -> AsyncIterator[Event]:
        live = await self.background.follow(response_id, starting_after, tenant)
        if live is not None:
            return live
        record = await self.record(response_id, tenant)
        if record.events is not None:
            events = msgspec.json.decode(record.events)
            return _raw_after(events, starting_after)
        return _after(rebuild_events(wire.decode(record.response)), starting_after)

    async def delete(self, response_id: str, tenant: str = "") -> dict[str, Any]:
        if self.background.running(response_id, tenant) is not None:
            await self.background.cancel(response_id, tenant)
        if not await self.log.delete(response_id, tenant):
            raise response_not_found(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    async def cancel(self, response_id: str, tenant: str = "") -> Response:
        cancelled = await self.background.cancel(response_id, tenant)
        if cancelled is not None:
            return cancelled
        response = wire.decode((await self.record(response_id, tenant)).response)
        if not response.background:
            raise invalid_request(
                "Only responses created with background=true can be cancelled.", param="response_id", code="not_cancellable"
            )
        return response

    async def input_items(
        self, response_id: str, *, limit: int, order: str, after: str | None, tenant: str = ""
    ) -> dict[str, Any]:
        record = await self.record(response_id, tenant)
        items = await history.input_items(self.log, record)
        if order == "desc":
            items.reverse()
        if after is not None:
            position = next((i for i, item in enumerate(items) if item_id(item) == after), None)
            if position is None:
                raise invalid_request(
                    f"Item with id '{after}' not found in this response's input.", param="after", code="item_not_found"
                )
            items = items[position + 1 :]
        page = items[:limit]
        data = [to_builtins(item) for item in page]
        return {
            "object": "list",
            "data": data,
            "first_id": item_id(page[0]) if page else None,
            "last_id": item_id(page[-1]) if page else None,
            "has_more": len(items) > limit,
        }

    # Counting and compacting -----------------------------------------------------------------

    async def count_input_tokens(self, request: CreateRequest, tenant: str = "") -> dict[str, Any]:
        if find_model(self.engine, request.model) is None:
            raise model_not_found(request.model)
        parent = await self.resolve(request, StageTimes(), tenant)
        return {"object": "response.input_tokens", "input_tokens": self.pipeline.count_input_tokens(request, parent)}

    async def compact(self, raw: Any, tenant: str = "") -> dict[str, Any]:
        body: CompactBody = shape_check(raw, CompactBody)
        if not body.model:
            raise missing_parameter("model")
        if find_model(self.engine, body.model) is None:
            raise model_not_found(body.model)
        items = parse_input(body.input) if body.input is not None else []
        if body.previous_response_id is not None:
            parent = await history.load_parent(self.log, body.previous_response_id, tenant)
            items = [*(parent.items or []), *items]
        if not items:
            raise missing_parameter("input")
        context = compaction.effective_context(self.pipeline.sealer, items)
        renderer = self.pipeline.renderer
        before = len(renderer.header(body.instructions, EMPTY_TOOLS)) + len(renderer.items(context))
        compacted = compaction.compact(context)
        sealed = compaction.seal_items(self.pipeline.sealer, compacted)
        visible = [normalized(msgspec.structs.replace(m)) for m in compacted if isinstance(m, Message) and m.role == "user"]
        output = [to_builtins(item) for item in [*visible, sealed]]
        after = len(renderer.items(compacted))
        return {
            "id": ids.new_id(ids.RESPONSE),
            "object": "response.compaction",
            "created_at": int(time.time()),
            "output": output,
            "usage": msgspec.to_builtins(Usage.of(before, 0, after)),
        }

    # Models ----------------------------------------------------------------------------------

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [describe(info) for info in self.engine.models()]}

    def model(self, model_id: str) -> dict[str, Any]:
        info = find_model(self.engine, model_id)
        if info is None:
            raise ApiError(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
        return describe(info)

    async def drain(self, timeout_s: float) -> None:
        """Let every WebSocket session finish its in-flight responses (up to ``timeout_s``), then close it."""
        self.draining = True
        sessions = list(self.sessions)
        if sessions:
            await asyncio.wait([asyncio.create_task(s.drain(timeout_s)) for s in sessions], timeout=timeout_s + 1)

    async def aclose(self) -> None:
        await self.background.aclose()
        await self.log.drain()


async def _after(events: list[Event], starting_after: int) -> AsyncIterator[Event]:
    for event in events:
        if isinstance(event.sequence_number, int) and event.sequence_number > starting_after:
            yield event


async def _raw_after(events: list[dict[str, Any]], starting_after: int) -> AsyncIterator[dict[str, Any]]:
    for event in events:
        if event.get("sequence_number", -1) > starting_after:
            yield event
