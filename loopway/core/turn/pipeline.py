"""One turn: resolve → validate → render → generate → assemble → finalize.

Transports call ``prepare`` (everything before the engine, synchronous and cheap for a cached
continuation) and iterate ``run`` (the engine, turned into events). The terminal event comes
last; by then ``turn.after`` holds the conversation including the output, ready for a connection
cache, and ``core.records.persistence.record_of(turn)`` gives what to persist. Where persistence
happens relative to the terminal event is the transport's choice: that is the overlap of WebSocket
mode.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator

from loopway.core.context.builder import ContextBuilder, check_tool_outputs, fit, resolve_references
from loopway.core.context.conversation import Conversation
from loopway.core.context.parent import Parent
from loopway.core.context.reasoning import ReasoningVault
from loopway.core.context.sealing import Sealer
from loopway.core.ops.timing import StageLog, StageTimes
from loopway.core.turn import mcp_rounds as mcp_turn
from loopway.core.turn.turn import Turn, new_response
from loopway.engines.base import Engine, EngineError, EngineRequest, Finish, find_model
from loopway.mcp.sessions import McpRuntime
from loopway.protocol import ids
from loopway.protocol.errors import ApiError, model_not_found
from loopway.protocol.events import Event
from loopway.protocol.items import (
    Compaction,
    FunctionCall,
    Item,
    McpApprovalRequest,
    McpCall,
    normalized,
)
from loopway.protocol.request import CreateRequest
from loopway.protocol.response import Usage
from loopway.protocol.tools import EMPTY_TOOLS
from loopway.tokens.render import Renderer, prerender

log = logging.getLogger("loopway.pipeline")

LARGE_TOOL_OUTPUT = 64 << 10  # characters of MCP answers in one round worth a worker thread to tokenize


def _model_output(turn: Turn) -> list[Item]:
    """The output the model produced; a compaction item stands for context, not for output."""
    return [item for item in turn.response.output if not isinstance(item, Compaction)]


class TurnPipeline:
    def __init__(
        self,
        engine: Engine,
        sealer: Sealer,
        renderer: Renderer | None = None,
        vault: ReasoningVault | None = None,
        mcp: McpRuntime | None = None,
    ) -> None:
        self.engine = engine
        self.sealer = sealer
        self.renderer = renderer or Renderer()
        self.vault = vault or ReasoningVault([secrets.token_bytes(32)])
        self.context = ContextBuilder(sealer, self.vault)
        self.mcp = mcp  # remote MCP servers this server may call (``--mcp-allow``)
        self.stage_log = StageLog()

    # Before the engine -----------------------------------------------------------------------

    def prepare(
        self,
        request: CreateRequest,
        parent: Parent | None,
        times: StageTimes | None = None,
        tenant: str = "",
        renderer: Renderer | None = None,
        stored: dict[str, Item] | None = None,
    ) -> Turn:
        """Everything before the engine. ``renderer`` may hold the request's tokens rendered ahead
        (``tokens.render.prerender``, off the event loop for large requests); ``stored`` holds items
        that ``item_reference`` names from other stored responses (``history.stored_items``)."""
        times = times or StageTimes()
        renderer = renderer or self.renderer
        with times.measure("validate"):
            info = find_model(self.engine, request.model)
            if info is None:
                raise model_not_found(request.model)
            new_items = [normalized(item) for item in request.input]
            self.context.restore_reasoning(new_items, tenant)
        with times.measure("render"):
            resolved = resolve_references(new_items, parent, stored)
            conversation, known, known_items = self.context.build(request, parent, resolved, renderer)
            check_tool_outputs(conversation, new_items)
            conversation = fit(request, conversation, info.context_window)
            mcp = mcp_turn.prepare(request.tools, conversation, resolved, self.mcp, request.max_tool_calls)
            compacted = None
            threshold = request.compact_threshold
            if request.compact_now or (threshold is not None and len(conversation.tokens) > threshold):
                conversation, compacted = self.context.compact(request, conversation, resolved, renderer)
                known = known_items = 0
        response = new_response(request, ids.new_id(ids.RESPONSE))
        self.stage_log.add(response.id, times)
        turn = Turn(request, response, conversation, resolved, known, compacted, times, known_items)
        turn.tenant = tenant
        if mcp is not None:
            turn.mcp = mcp
            turn.assembler.call_kind = mcp.call_kind
        if "reasoning.encrypted_content" in request.include or not request.store:
            turn.assembler.seal = lambda item: self.vault.seal(item, tenant)  # the client carries it
        return turn

    def count_input_tokens(
        self, request: CreateRequest, parent: Parent | None, stored: dict[str, Item] | None = None
    ) -> int:
        """``POST /v1/responses/input_tokens``: the context as the engine would see it, counted."""
        resolved = resolve_references(list(request.input), parent, stored)
        conversation, _, _ = self.context.build(request, parent, resolved, self.renderer)
        return len(conversation.tokens)

    # The engine ------------------------------------------------------------------------------

    async def start(self, turn: Turn) -> None:
        """Hand the turn to the engine. An engine that refuses the request raises ``ApiError`` here,
        before any event exists; one that fails is remembered and the response will fail. A turn
        whose MCP servers must be listed, or whose approved calls must run, first opens in ``run``."""
        if not turn.request.generate or turn.generation is not None or turn.open_failure is not None:
            return
        if turn.mcp is not None and (turn.mcp.unlisted() or turn.mcp.approved):
            return
        await self._open(turn)

    async def _open(self, turn: Turn, midstream: bool = False) -> None:
        """Open the engine's stream. ``midstream``: a later round (or the first after MCP listing),
        when the response has begun, so a refusal fails the response instead of the request."""
        turn.opened_at = turn.opened_at or time.perf_counter()
        try:
            if midstream:
                self._refit(turn)
            request = self._engine_request(turn)
            turn.seen = (len(request.tokens), len(request.items))  # what the next round's engine has seen
            turn.generation = await self.engine.open(request)
        except EngineError as exc:
            turn.open_failure = (exc.code, str(exc))
        except ApiError as exc:
            if not midstream:
                raise
            turn.open_failure = ("server_error", exc.message)

    def _refit(self, turn: Turn) -> None:
        """A later round's context within the window (its tools' answers grew it): truncated as the
        request allows (``truncation: auto``), else refused."""
        info = find_model(self.engine, turn.request.model)
        if turn.running is None or info is None or len(turn.running.tokens) <= info.context_window:
            return
        turn.running = fit(turn.request, turn.running, info.context_window)
        turn.seen = (0, 0)  # a truncated context is a new prefix for the engine

    async def run(self, turn: Turn) -> AsyncIterator[Event]:
        """The turn's events, ending with exactly one terminal event."""
        a = turn.assembler
        if not turn.request.generate:  # warm-up: state is prepared, the model is not asked
            yield a.opening()[0]
            for event in self._terminal(
                turn, a.finish(Finish(reason="stop", input_tokens=0, cached_tokens=0, output_tokens=0))
            ):
                yield event
            return
        await self.start(turn)
        for event in a.opening():
            yield event
        if turn.compacted is not None:
            for event in a.add_item(turn.compacted):
                yield event
        try:
            if turn.mcp is not None and turn.generation is None and turn.open_failure is None:
                async for event in self._mcp_first(turn, turn.mcp):
                    yield event
            async for event in self._generate(turn):
                yield event
        finally:
            if turn.mcp is not None:
                turn.mcp.cancel()  # calls still running when the client went away

    async def _mcp_first(self, turn: Turn, mcp: mcp_turn.McpTurn) -> AsyncIterator[Event]:
        """Before the engine: list the servers not listed in the context (together), run the calls
        the client approved, then open the engine with their tools and results in its context."""
        a = turn.assembler
        unlisted = mcp.unlisted()
        started = []
        for spec in unlisted:
            events, item, index = a.mcp_list_started(spec.server_label)
            started.append((item, index))
            for event in events:
                yield event
        listings = await asyncio.gather(*(mcp.list_tools(spec) for spec in unlisted))
        for (item, index), (tools, error) in zip(started, listings, strict=True):
            for event in a.mcp_list_finished(item, index, tools, error):
                yield event
            mcp.remember(item)
        for call in mcp.approved:
            events, index = a.mcp_call_opened(call)
            for event in events:
                yield event
            mcp.start_call(call)
            for event in a.mcp_call_finished(call, index, *await mcp.result(call)):
                yield event
        await self._feed_running(turn)
        await self._open(turn, midstream=True)

    async def _feed_running(self, turn: Turn) -> None:
        """The next round's context: the turn's context and the output so far. MCP answers run to a
        megabyte each: large ones are tokenized in a worker thread, not on the event loop."""
        output = _model_output(turn)
        new = output[turn.fed :]
        renderer = self.renderer
        if sum(len(i.output or "") for i in new if isinstance(i, McpCall)) > LARGE_TOOL_OUTPUT:
            renderer = await asyncio.to_thread(prerender, None, EMPTY_TOOLS, new)
        turn.running = turn.context.append(renderer, new)
        turn.fed = len(output)

    async def _generate(self, turn: Turn) -> AsyncIterator[Event]:
        a, times = turn.assembler, turn.times
        started = turn.opened_at
        first: float | None = None
        spent: list[Finish] = []  # each engine round's usage
        try:
            while True:
                generation = turn.generation
                if generation is None:
                    failure = turn.open_failure or ("server_error", "No engine stream.")
                    break
                finish: Finish | None = None
                calls: list[tuple[McpCall, int]] = []
                round_start = len(turn.response.output)
                async for delta in generation:
                    if turn.steered and not a.continues_open_item(delta) and not isinstance(delta, Finish):
                        await generation.aclose()  # type: ignore[attr-defined]
                        events = a.close_open_item()
                        events += a.end_incomplete("steered", self._usage_so_far(turn))
                        for event in self._terminal(turn, events):
                            yield event
                        return
                    if first is None:
                        first = time.perf_counter()
                        times.ttft = (first - started) * 1000
                    if isinstance(delta, Finish):
                        finish = delta
                        break
                    for event in a.feed(delta):
                        yield event
                    calls += self._start_mcp_calls(turn)
                if finish is None:
                    failure = ("server_error", "The engine ended the response without finishing it.")
                    break
                spent.append(finish)
                truncated = finish.reason in ("length", "content_filter")
                for event in a.close_open_item("incomplete" if truncated else "completed"):
                    yield event
                calls += self._start_mcp_calls(turn)
                for call, index in calls:
                    for event in a.mcp_call_finished(call, index, *await turn.mcp.result(call)):  # type: ignore[union-attr]
                        yield event
                if calls and not truncated and not turn.steered and self._only_mcp_calls(turn, round_start):
                    turn.mcp.rounds += 1  # type: ignore[union-attr]
                    await generation.aclose()  # type: ignore[attr-defined]  # the round's stream, before the next opens
                    await self._feed_running(turn)
                    turn.generation = None
                    await self._open(turn, midstream=True)
                    continue
                times.decode = (time.perf_counter() - (first or started)) * 1000
                turn.served_by = finish.replica
                for event in self._terminal(turn, a.finish(_summed(spent))):
                    yield event
                return
        except asyncio.CancelledError:
            raise
        except EngineError as exc:
            failure = (exc.code, str(exc))
        except Exception:  # an engine bug must fail this response, not the server
            log.exception("engine failed on %s", turn.id)
            failure = ("server_error", "The model failed to generate a response.")
        for event in self._terminal(turn, a.fail(*failure)):
            yield event

    @staticmethod
    def _start_mcp_calls(turn: Turn) -> list[tuple[McpCall, int]]:
        """MCP calls whose arguments the engine just finished: they start running now."""
        closed = turn.assembler.closed_mcp_calls
        if not closed:
            return []
        started, closed[:] = list(closed), []
        for call, _ in started:
            turn.mcp.start_call(call)  # type: ignore[union-attr]
        return started

    @staticmethod
    def _only_mcp_calls(turn: Turn, start: int) -> bool:
        """Whether the round's calls were all loopway's to run (then the model goes on in the same
        response); a function call or an approval request is the client's turn."""
        return not any(isinstance(i, (FunctionCall, McpApprovalRequest)) for i in turn.response.output[start:])

    def _usage_so_far(self, turn: Turn) -> Usage:
        """Usage of a response stopped early: its prompt and the output rendered so far."""
        return Usage.of(len(turn.conversation.tokens), 0, len(self.renderer.items(_model_output(turn))))

    def _engine_request(self, turn: Turn) -> EngineRequest:
        request = turn.request
        context = turn.context
        known_prefix, known_items = turn.seen or (turn.known_prefix, turn.known_items)
        return EngineRequest(
            model=request.model,
            tokens=context.tokens,
            known_prefix=known_prefix,
            items=context.items,
            known_items=known_items,
            response_id=turn.id,
            previous_response_id=request.previous_response_id,
            instructions=request.instructions,
            tools=turn.mcp.engine_tools(request.tools) if turn.mcp is not None else request.tools,
            tool_choice=request.tool_choice,
            parallel_tool_calls=request.parallel_tool_calls,
            max_output_tokens=request.max_output_tokens,
            json_schema=request.json_schema,
            temperature=request.temperature,
            top_p=request.top_p,
            reasoning_effort=request.reasoning.get("effort"),
            reasoning_summary=request.reasoning.get("summary"),
            replica=turn.replica,
            session=turn.session,
            route_prefix=_route_prefix(context),
        )

    def _terminal(self, turn: Turn, events: list[Event]) -> list[Event]:
        """Before the terminal event leaves, the conversation including the output is ready."""
        if turn.response.status != "failed":
            turn.after = turn.context.append(self.renderer, _model_output(turn)[turn.fed :])
        return events


def _summed(rounds: list[Finish]) -> Finish:
    """One response's usage over its engine rounds, ending as the last round ended."""
    last = rounds[-1]
    if len(rounds) == 1:
        return last
    return Finish(
        reason=last.reason,
        input_tokens=sum(r.input_tokens for r in rounds),
        cached_tokens=sum(r.cached_tokens for r in rounds),
        output_tokens=sum(r.output_tokens for r in rounds),
        reasoning_tokens=sum(r.reasoning_tokens for r in rounds),
        replica=last.replica,
    )


def _route_prefix(conversation: Conversation) -> int:
    """The tokens that identify a conversation wherever it is continued: instructions, tools and
    its first item (a coding agent's task), before any later turn."""
    if not len(conversation.items):
        return len(conversation.tokens)
    return conversation.header_length + conversation.item_tokens(0)
