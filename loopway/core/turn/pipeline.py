"""One turn: resolve → validate → render → generate → assemble → finalize.

Transports call ``prepare`` (everything before the engine, synchronous and cheap for a cached
continuation) and iterate ``run`` (the engine, turned into events). The terminal event comes
last; by then ``turn.after`` holds the conversation including the output, ready for a
connection cache, and ``record(turn)`` gives what to persist. Where persistence happens relative
to the terminal event is the transport's choice: that is the overlap of WebSocket mode.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator

from msgspec import UNSET

from loopway.core.context import compaction
from loopway.core.context.conversation import Conversation
from loopway.core.context.reasoning import ReasoningVault
from loopway.core.context.sealing import Sealer
from loopway.core.ops.timing import StageLog, StageTimes
from loopway.core.records.history import Parent
from loopway.core.turn import mcp_rounds as mcp_turn
from loopway.core.turn.assembler import EventAssembler
from loopway.engines.base import Delta, Engine, EngineError, EngineRequest, Finish, find_model
from loopway.mcp.sessions import McpRuntime
from loopway.protocol import ids
from loopway.protocol import response as wire
from loopway.protocol.errors import ApiError, invalid_request, model_not_found
from loopway.protocol.events import TERMINAL_EVENTS, Event, encode_event
from loopway.protocol.items import ENCODER as ITEMS_ENCODER
from loopway.protocol.items import (
    Compaction,
    FunctionCall,
    FunctionCallOutput,
    Item,
    ItemReference,
    McpApprovalRequest,
    McpCall,
    Reasoning,
    item_id,
    normalized,
)
from loopway.protocol.request import CreateRequest
from loopway.protocol.response import Response, Usage
from loopway.protocol.tools import EMPTY_TOOLS
from loopway.store.base import StoredResponse
from loopway.tokens.render import Renderer, prerender

log = logging.getLogger("loopway.pipeline")

LARGE_TOOL_OUTPUT = 64 << 10  # characters of MCP answers in one round worth a worker thread to tokenize


class Turn:
    """One response in the making: its request, context, live response object and timings."""

    def __init__(
        self,
        request: CreateRequest,
        response: Response,
        conversation: Conversation,
        new_items: list[Item],
        known_prefix: int,
        compacted: Compaction | None,
        times: StageTimes,
        known_items: int = 0,
    ) -> None:
        self.request = request
        self.response = response
        self.conversation = conversation
        self.new_items = new_items
        self.known_prefix = known_prefix
        self.known_items = known_items
        self.tenant = ""
        self.compacted = compacted
        self.times = times
        self.assembler = EventAssembler(response)
        self.after: Conversation | None = None
        self.steered = False  # set by response.steer: end after the current output item
        self.generation: AsyncIterator[Delta] | None = None  # the engine's stream, once it accepted
        self.open_failure: tuple[str, str] | None = None  # the engine failed before it accepted
        self.opened_at = 0.0
        self.events: list[Event] | None = None  # kept for replay (background responses)
        self.replica: str | None = None  # where the parent was served (its prefix is cached there)
        self.session: str | None = None  # the WebSocket connection it runs on
        self.served_by: str | None = None  # the engine replica that served this turn
        # A turn on a conversation: its version when the turn read it, and after the turn appended
        # to it (the connection cache keeps this rendering only if nobody else wrote in between).
        self.conversation_read: int | None = None
        self.conversation_written: int | None = None
        # A turn with MCP servers runs engine rounds until the model stops calling their tools:
        # ``running`` is the context of the round now running (``conversation`` and the output
        # before it; ``fed`` of the output's items), ``seen`` what the previous round's engine saw.
        self.mcp: mcp_turn.McpTurn | None = None
        self.running: Conversation | None = None
        self.fed = 0
        self.seen: tuple[int, int] | None = None

    @property
    def id(self) -> str:
        return self.response.id

    @property
    def context(self) -> Conversation:
        """What the engine sees now: the turn's context, and the output of its earlier MCP rounds."""
        return self.running or self.conversation


def new_response(request: CreateRequest, response_id: str) -> Response:
    return Response(
        id=response_id,
        created_at=int(time.time()),
        status="in_progress",
        background=request.background,
        instructions=request.instructions,
        max_output_tokens=request.max_output_tokens,
        max_tool_calls=request.max_tool_calls,
        model=request.model,
        parallel_tool_calls=request.parallel_tool_calls,
        previous_response_id=request.previous_response_id,
        prompt_cache_key=request.prompt_cache_key,
        reasoning=request.reasoning,
        safety_identifier=request.safety_identifier,
        service_tier=request.service_tier,
        store=request.store,
        temperature=request.temperature,
        text=request.text,
        tool_choice=request.tool_choice.echo,
        tools=request.tools.echo,
        top_logprobs=request.top_logprobs,
        top_p=request.top_p,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        truncation=request.truncation,
        user=request.user if request.user is not None else UNSET,
        conversation={"id": request.conversation} if request.conversation is not None else UNSET,
        metadata=request.metadata,
    )


def _indexed(item: Item) -> bool:
    """Whether a stored item goes in the item index: it has an id, and is not itself a reference."""
    return not isinstance(item, ItemReference) and bool(item_id(item))


def unresolved_references(items: list[Item], parent: Parent | None) -> list[str]:
    """Ids that ``item_reference`` items name and that neither the context nor the input holds."""
    wanted = [i.id for i in items if isinstance(i, ItemReference)]
    if not wanted:
        return []
    known = {item_id(i) for i in (parent.context() if parent else [])}
    known.update(item_id(i) for i in items if not isinstance(i, ItemReference))
    return [w for w in dict.fromkeys(wanted) if w not in known]


def _resolve_references(items: list[Item], parent: Parent | None, stored: dict[str, Item] | None = None) -> list[Item]:
    if not any(isinstance(i, ItemReference) for i in items):
        return items
    known = dict(stored or {})
    known.update({item_id(i): i for i in (parent.context() if parent else [])})
    known.update({item_id(i): i for i in items if not isinstance(i, ItemReference)})
    resolved = []
    for index, item in enumerate(items):
        if isinstance(item, ItemReference):
            target = known.get(item.id)
            if target is None:
                raise invalid_request(
                    f"Item with id '{item.id}' not found.", param=f"input[{index}].id", code="item_not_found"
                )
            item = target
        resolved.append(item)
    return resolved


def _model_output(turn: Turn) -> list[Item]:
    """The output the model produced; a compaction item stands for context, not for output."""
    return [item for item in turn.response.output if not isinstance(item, Compaction)]


def _check_tool_outputs(conversation: Conversation, new_items: list[Item]) -> None:
    """Every function_call_output answers a function_call of the context (as OpenAI requires)."""
    start = compaction.last_compaction(new_items) + 1  # what precedes a compaction is not in the context
    for index, item in enumerate(new_items[start:], start):
        if isinstance(item, FunctionCallOutput) and not conversation.has_call(item.call_id):
            raise invalid_request(
                f"No tool call found for function call output with call_id {item.call_id}.",
                param=f"input[{index}]",
                code="tool_call_not_found",
            )


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
            self._restore_reasoning(new_items, tenant)
        with times.measure("render"):
            resolved = _resolve_references(new_items, parent, stored)
            conversation, known, known_items = self._context(request, parent, resolved, renderer)
            _check_tool_outputs(conversation, new_items)
            conversation = self._fit(request, conversation, info.context_window)
            mcp = mcp_turn.prepare(request.tools, conversation, resolved, self.mcp, request.max_tool_calls)
            compacted = None
            threshold = request.compact_threshold
            if request.compact_now or (threshold is not None and len(conversation.tokens) > threshold):
                conversation, compacted = self._compact(request, conversation, resolved, renderer)
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

    def _restore_reasoning(self, items: list[Item], tenant: str) -> None:
        """Reasoning items that come back with ``encrypted_content`` get their text back for the engine."""
        for index, item in enumerate(items):
            if isinstance(item, Reasoning) and item.encrypted_content:
                self.vault.restore(item, tenant, f"input[{index}].encrypted_content")

    def _compact(
        self, request: CreateRequest, conversation: Conversation, new_items: list[Item], renderer: Renderer
    ) -> tuple[Conversation, Compaction]:
        """Compact what came before this turn's input; the sealed item carries the whole new context."""
        items = conversation.items.to_list()
        prior = items[: max(0, len(items) - len(new_items))]
        context = [*compaction.compact(prior), *items[len(prior) :]]
        sealed = compaction.seal_items(self.sealer, context)
        return Conversation.start(renderer, request.instructions, request.tools, context), sealed

    def _context(
        self, request: CreateRequest, parent: Parent | None, new_items: list[Item], renderer: Renderer
    ) -> tuple[Conversation, int, int]:
        """The conversation the engine will see, and how many of its tokens and items came before."""
        start = compaction.last_compaction(new_items)
        if start >= 0 or parent is None:  # a compaction in the input starts the context afresh
            items = compaction.effective_context(self.sealer, new_items)
            return Conversation.start(renderer, request.instructions, request.tools, items), 0, 0
        if parent.conversation is not None:
            base = parent.conversation.rebase(renderer, request.instructions, request.tools)
            known = len(base.tokens) if base is parent.conversation else 0
            return base.append(renderer, new_items), known, len(base.items)
        previous = parent.items or []
        items = compaction.effective_context(self.sealer, [*previous, *new_items])
        known_items = len(previous) if compaction.last_compaction(previous) < 0 else 0
        return Conversation.start(renderer, request.instructions, request.tools, items), 0, known_items

    def _fit(self, request: CreateRequest, conversation: Conversation, window: int) -> Conversation:
        """The context within the window: refused (``truncation: disabled``), or its oldest items dropped.

        One pass over the items' token counts, newest first; nothing is rendered again.
        """
        if len(conversation.tokens) <= window:
            return conversation
        if request.truncation == "disabled":
            raise ApiError(
                400,
                f"Your input exceeds the context window of this model ({len(conversation.tokens)} tokens > "
                f"{window}). Please adjust your input and try again, or set 'truncation' to 'auto'.",
                param="input",
                code="context_length_exceeded",
            )
        count = len(conversation.items)
        budget, start = window - conversation.header_length, count
        while start > 0 and conversation.item_tokens(start - 1) <= budget:
            start -= 1
            budget -= conversation.item_tokens(start)
        if start == count:
            raise ApiError(
                400,
                "The latest input item alone exceeds the context window of this model.",
                param="input",
                code="context_length_exceeded",
            )
        return conversation.suffix(start)

    def count_input_tokens(
        self, request: CreateRequest, parent: Parent | None, stored: dict[str, Item] | None = None
    ) -> int:
        """``POST /v1/responses/input_tokens``: the context as the engine would see it, counted."""
        resolved = _resolve_references(list(request.input), parent, stored)
        conversation, _, _ = self._context(request, parent, resolved, self.renderer)
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
        turn.running = self._fit(turn.request, turn.running, info.context_window)
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

    # After the engine ------------------------------------------------------------------------

    def record(self, turn: Turn) -> StoredResponse:
        return StoredResponse(
            id=turn.id,
            created_at=turn.response.created_at,
            previous_response_id=turn.request.previous_response_id,
            response=wire.encode(turn.response),
            input_items=ITEMS_ENCODER.encode(turn.new_items),
            events=b"[" + b",".join(encode_event(e) for e in turn.events) + b"]" if turn.events is not None else None,
            tenant=turn.tenant,
            item_ids=[item_id(i) for i in [*turn.new_items, *turn.response.output] if _indexed(i)],
            replica=turn.served_by,
        )


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


def is_terminal(event: Event) -> bool:
    return isinstance(event, TERMINAL_EVENTS)
