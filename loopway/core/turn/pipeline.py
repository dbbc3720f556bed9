"""One turn: resolve → validate → render → generate → assemble → finalize.

Transports call ``prepare`` (everything before the engine, synchronous and cheap for a cached
continuation), then ``start`` once (the engine's acceptance), then iterate ``run`` (the engine's
rounds, turned into events). The terminal event comes last; by then ``turn.after`` holds the
conversation including the output, ready for a connection cache, and
``core.records.persistence.record_of(turn)`` gives what to persist. Where persistence happens
relative to the terminal event is the transport's choice: that is the overlap of WebSocket mode.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator

from loopway.core.context.builder import ContextBuilder, check_tool_outputs, extended, fit, resolve_references
from loopway.core.context.conversation import Conversation
from loopway.core.context.parent import Parent
from loopway.core.context.reasoning import ReasoningVault
from loopway.core.context.sealing import Sealer
from loopway.core.ops.timing import StageLog, StageTimes
from loopway.core.turn import mcp_rounds
from loopway.core.turn.engine_round import Ending, EngineRound
from loopway.core.turn.turn import Turn, TurnOrigin, new_response
from loopway.engines.base import Engine, EngineError, EngineRequest, Finish, find_model
from loopway.mcp.sessions import McpRuntime
from loopway.protocol import ids
from loopway.protocol.errors import ApiError, model_not_found
from loopway.protocol.events import Event
from loopway.protocol.items import Compaction, Item, normalized
from loopway.protocol.request import CreateRequest
from loopway.protocol.response import Usage
from loopway.tokens.render import Renderer

NO_USAGE = Finish(reason="stop", input_tokens=0, cached_tokens=0, output_tokens=0)


def _model_output(turn: Turn) -> list[Item]:
    """The output the model produced; a compaction item stands for context, not for output."""
    return [item for item in turn.response.output if not isinstance(item, Compaction)]


class TurnPipeline:
    """The turn path, engine side: builds a turn's context, opens the engine, and runs its rounds.

    One per server process. It holds what every turn shares (the engine, the keys that open what
    clients carry, the MCP runtime, the stage log) and no per-turn state: that lives on ``Turn``.
    """

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
        origin: TurnOrigin = TurnOrigin(),
    ) -> Turn:
        """Everything before the engine: the turn, whole. ``origin`` is what the caller knows of it."""
        times = times or StageTimes()
        renderer = origin.renderer or self.renderer
        with times.measure("validate"):
            info = find_model(self.engine, request.model)
            if info is None:
                raise model_not_found(request.model)
            new_items = [normalized(item) for item in request.input]
            self.context.restore_reasoning(new_items, origin.tenant)
        with times.measure("render"):
            resolved = resolve_references(new_items, parent, origin.stored)
            conversation, known, known_items = self.context.build(request, parent, resolved, renderer)
            check_tool_outputs(conversation, new_items)
            conversation = fit(request, conversation, info.context_window)
            mcp = mcp_rounds.prepare(request.tools, conversation, resolved, self.mcp, request.max_tool_calls)
            compacted = None
            threshold = request.compact_threshold
            if request.compact_now or (threshold is not None and len(conversation.tokens) > threshold):
                conversation, compacted = self.context.compact(request, conversation, resolved, renderer)
                known = known_items = 0
        response = new_response(request, ids.new_id(ids.RESPONSE))
        self.stage_log.add(response.id, times)
        turn = Turn(request, response, conversation, resolved, known, compacted, times, known_items, origin)
        if mcp is not None:
            self._attach_mcp(turn, mcp)
        if "reasoning.encrypted_content" in request.include or not request.store:
            turn.assembler.seal = lambda item: self.vault.seal(item, origin.tenant)  # the client carries it
        return turn

    def _attach_mcp(self, turn: Turn, mcp: mcp_rounds.McpTurn) -> None:
        """A WebSocket connection's turns share its MCP sessions (open until it closes); any other
        turn opens its own, closed when it ends."""
        turn.mcp = mcp
        turn.assembler.call_kind = mcp.call_kind
        if self.mcp is None:
            return
        if turn.origin.connection_mcp is not None:
            mcp.sessions = turn.origin.connection_mcp()
        else:
            mcp.sessions, mcp.owns_sessions = self.mcp.sessions(turn.origin.tenant), True

    def count_input_tokens(
        self,
        request: CreateRequest,
        parent: Parent | None,
        stored: dict[str, Item] | None = None,
        renderer: Renderer | None = None,
    ) -> int:
        """``POST /v1/responses/input_tokens``: the context as the engine would see it, counted."""
        resolved = resolve_references(list(request.input), parent, stored)
        conversation, _, _ = self.context.build(request, parent, resolved, renderer or self.renderer)
        return len(conversation.tokens)

    # The engine ------------------------------------------------------------------------------

    async def start(self, turn: Turn) -> None:
        """Hand the turn to the engine, once. An engine that refuses the request raises ``ApiError``
        here, before any event exists; one that fails is remembered and the response will fail. A
        turn whose MCP servers must be listed, or whose approved calls must run, first opens in
        ``run``. An injected fault breaks the engine's stream from here."""
        if turn.started:
            raise RuntimeError(f"turn {turn.id} was already started")
        turn.started = True
        if not turn.request.generate or (turn.mcp is not None and (turn.mcp.unlisted() or turn.mcp.approved)):
            return
        await self._open(turn)
        fault = turn.origin.fault
        if fault is not None and turn.generation is not None:
            turn.generation = fault.wrap(turn.generation)

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

    async def _next_round(self, turn: Turn) -> None:
        """The engine again, its context grown by the output so far (the MCP answers in it)."""
        output = _model_output(turn)
        turn.running = await extended(turn.context, output[turn.fed :], self.renderer)
        turn.fed = len(output)
        turn.generation = None
        await self._open(turn, midstream=True)

    async def run(self, turn: Turn) -> AsyncIterator[Event]:
        """The turn's events, ending with exactly one terminal event (kept on ``turn.events`` for a
        background turn's replay)."""
        if not turn.started:
            raise RuntimeError(f"turn {turn.id} runs before it was started")
        kept = turn.events
        try:
            async for event in self._events(turn):
                if kept is not None:
                    kept.append(event)
                yield event
        finally:
            if turn.mcp is not None:
                turn.mcp.cancel()  # calls still running when the client went away

    async def _events(self, turn: Turn) -> AsyncIterator[Event]:
        a = turn.assembler
        if not turn.request.generate:  # warm-up: state is prepared, the model is not asked
            yield a.opening()[0]
            for event in self._terminal(turn, a.finish(NO_USAGE)):
                yield event
            return
        for event in a.opening():
            yield event
        if turn.compacted is not None:
            for event in a.add_item(turn.compacted):
                yield event
        if turn.mcp is not None and turn.generation is None and turn.open_failure is None:
            async for event in mcp_rounds.first_round(a, turn.mcp):
                yield event
            await self._next_round(turn)
        async for event in self._rounds(turn):
            yield event

    async def _rounds(self, turn: Turn) -> AsyncIterator[Event]:
        """Engine rounds until one does not end with MCP calls run, then the terminal event."""
        spent: list[Finish] = []  # each engine round's usage
        while True:
            round_ = EngineRound(turn)
            async for event in round_.events():
                yield event
            if round_.finish is not None:
                spent.append(round_.finish)
            if round_.ending is not Ending.TOOLS_RAN:
                break
            turn.mcp.rounds += 1  # type: ignore[union-attr]
            await self._next_round(turn)
        for event in self._terminal(turn, self._ending(turn, round_, spent)):
            yield event

    def _ending(self, turn: Turn, last: EngineRound, spent: list[Finish]) -> list[Event]:
        a = turn.assembler
        if last.ending is Ending.STEERED:
            return a.end_incomplete("steered", self._usage_so_far(turn))
        if last.ending is Ending.FAILED:
            return a.fail(*last.failure)
        turn.times.decode = (time.perf_counter() - (turn.first_token_at or turn.opened_at)) * 1000
        turn.served_by = spent[-1].replica
        return a.finish(_summed(spent))

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
            replica=turn.origin.replica,
            session=turn.origin.session,
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
