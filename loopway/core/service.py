"""The Responses service: every operation of the API, for any transport.

HTTP routes and the WebSocket session call these methods and only frame what comes back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from loopway.core.connection.state import OpenConnection
from loopway.core.context import compaction
from loopway.core.context.builder import unresolved_references
from loopway.core.context.parent import Parent, ParentCache
from loopway.core.ops import offload
from loopway.core.ops.fault_injection import Fault, FaultInjector
from loopway.core.ops.feed import Feed
from loopway.core.ops.limits import ConnectionLimiter, RateLimiter
from loopway.core.ops.metrics import Metrics
from loopway.core.ops.observatory import ConnectionView, Observatory
from loopway.core.ops.timing import StageTimes
from loopway.core.records import history
from loopway.core.records.background import CLAIM_S, BackgroundRuns
from loopway.core.records.conversation_store import Conversations
from loopway.core.records.driver import Persist, TurnDriver
from loopway.core.records.persistence import ResponseLog
from loopway.core.records.recent import RecentConversations
from loopway.core.turn.pipeline import TurnPipeline
from loopway.core.turn.replay import stored_replay
from loopway.core.turn.turn import Turn, TurnOrigin
from loopway.engines.base import Engine, describe, find_model
from loopway.mcp.sessions import McpSessions
from loopway.protocol import ids
from loopway.protocol import response as wire
from loopway.protocol.errors import (
    ApiError,
    invalid_request,
    missing_parameter,
    model_not_found,
    not_found,
    previous_response_not_found,
    response_not_found,
)
from loopway.protocol.events import Event
from loopway.protocol.items import Item, Message, item_id, normalized, parse_input, to_builtins
from loopway.protocol.request import CreateRequest, shape_check
from loopway.protocol.response import Response, Usage
from loopway.protocol.tools import EMPTY_TOOLS
from loopway.store.base import StoredResponse
from loopway.tokens.render import Renderer


class CompactBody(msgspec.Struct, kw_only=True):
    model: str | None = None
    input: str | list[Any] | None = None
    previous_response_id: str | None = None
    instructions: str | None = None


class ResponsesService:
    """The API's operations over one engine, pipeline and store; transports parse, call and frame."""

    def __init__(
        self,
        engine: Engine,
        pipeline: TurnPipeline,
        log: ResponseLog,
        *,
        metrics: Metrics | None = None,
        limiter: RateLimiter | None = None,
        connection_limit: ConnectionLimiter | None = None,
        background_claim_s: float = CLAIM_S,
        recent: RecentConversations | None = None,
        faults: FaultInjector | None = None,
    ) -> None:
        self.engine = engine
        self.pipeline = pipeline
        self.log = log
        self.metrics = metrics or Metrics()
        self.limiter = limiter or RateLimiter(0)
        self.connection_limit = connection_limit or ConnectionLimiter(0)
        log.on_persisted = self.metrics.persisted
        self.recent = recent if recent is not None else RecentConversations(0)  # HTTP continuations' rendered parents
        self.conversations = Conversations(log.store)  # the Conversations API's objects
        self.observatory = Observatory()  # what the dashboard shows
        self.feed = Feed(self.dashboard)  # and how it reaches the viewers
        self.driver = TurnDriver(pipeline, log, self.metrics, self.recent, self.observatory, self.conversations)
        self.background = BackgroundRuns(self.driver, log, log.store, background_claim_s)
        self.open_connections: set[OpenConnection] = set()  # WebSocket sessions, for metrics and draining
        self.metrics.watch_connections(
            lambda: len(self.open_connections), lambda: sum(c.lanes_used for c in self.open_connections)
        )
        self.draining = False  # set on SIGTERM: finish what is in flight, start nothing new
        if pipeline.mcp is not None:
            pipeline.mcp.observe_call = self.metrics.mcp_call
            pipeline.mcp.observe_listing = self.metrics.mcp_listing
        self.faults = faults  # --faults: failing on purpose, for client developers (core.ops.fault_injection)
        if faults is not None:
            faults.on_fault = self._fault_injected
        self._store_health: tuple[float, dict[str, Any]] = (0.0, {"state": "unknown"})

    # Creating --------------------------------------------------------------------------------

    async def prepare(
        self,
        request: CreateRequest,
        times: StageTimes | None = None,
        tenant: str = "",
        cache: ParentCache | None = None,
        renderer: Renderer | None = None,
        fault: Fault | None = None,
    ) -> Turn:
        """Everything before the first event: resolve, validate, render, and the engine's acceptance.

        ``cache`` is where a continuation looks first (a WebSocket connection's); a miss there goes
        to the store only for ``store=true`` requests, as WebSocket mode requires. ``renderer`` holds
        the request's tokens when they were rendered ahead, off the loop (``core.ops.offload``).
        ``fault``: the one ``draw_fault`` gave this request, refusing it here or breaking its stream.
        """
        refusal = fault.refusal(request) if fault is not None else None
        if refusal is not None:
            raise refusal
        times = times or StageTimes()
        if request.store:
            await self.log.check()  # store=true needs the store: say so now, not after generating
        parent, version = await self._parent(request, times, tenant, cache)
        renderer = await _rendered_ahead(request, parent) or renderer
        origin = TurnOrigin(
            tenant=tenant,
            replica=parent.replica if parent is not None else None,
            session=cache.session_id if cache is not None else None,
            conversation_version=version,
            renderer=renderer,
            stored=await self._referenced(request, parent, tenant),
            connection_mcp=self._connection_mcp(cache, tenant),
            fault=fault,
        )
        turn = self.pipeline.prepare(request, parent, times, origin)
        await self.pipeline.start(turn)
        return turn

    def _connection_mcp(self, cache: ParentCache | None, tenant: str) -> Callable[[], McpSessions] | None:
        """A WebSocket connection's MCP sessions, opened by its first turn that needs them."""
        runtime = self.pipeline.mcp
        if cache is None or runtime is None:
            return None

        def sessions() -> McpSessions:
            if cache.mcp_sessions is None:
                cache.mcp_sessions = runtime.sessions(tenant)
            return cache.mcp_sessions

        return sessions

    async def _parent(
        self, request: CreateRequest, times: StageTimes, tenant: str, cache: ParentCache | None
    ) -> tuple[Parent | None, int | None]:
        """What the turn continues: a previous response, or a conversation's items (and the
        conversation's version then); a connection's cache holds a conversation rendered at the
        version it was left at, so a turn on it costs O(new input) while nobody else writes to it."""
        if request.conversation is None:
            return await self.resolve(request, times, tenant, cache), None
        with times.measure("resolve"):
            stored = await self.conversations.get(request.conversation, tenant, param="conversation")
            rendered = cache.conversation(stored.id, stored.version) if cache is not None else None
            if cache is not None:
                self.metrics.cache_lookup(rendered is not None)
            if rendered is not None:
                return Parent(conversation=rendered), stored.version
            items, size = await self.conversations.items(stored.id)
            return Parent(items=items, stored_bytes=size), stored.version

    def draw_fault(self, request: CreateRequest, transport: str) -> Fault | None:
        """This request's injected fault, if the server injects any (``transport``: ws, sse, http)."""
        return self.faults.draw(request, transport) if self.faults is not None else None

    async def _referenced(self, request: CreateRequest, parent: Parent | None, tenant: str) -> dict[str, Item]:
        """Stored items that the input's ``item_reference`` names beyond its own context."""
        missing = unresolved_references(request.input, parent)
        return await history.stored_items(self.log, missing, tenant) if missing else {}

    async def resolve(
        self, request: CreateRequest, times: StageTimes, tenant: str, cache: ParentCache | None = None
    ) -> Parent | None:
        """The previous response: from ``cache`` when given (a WebSocket connection's), else from the
        process's recent conversations if the store still has it, else rebuilt from the store."""
        previous = request.previous_response_id
        if previous is None:
            return None
        with times.measure("resolve"):
            if cache is not None:
                parent = cache.parent(previous)
                self.metrics.cache_lookup(parent is not None)
                if parent is not None:
                    return parent
                if not request.store:
                    raise previous_response_not_found(previous)
            else:
                parent = self.recent.parent(tenant, previous)
                if parent is not None and await self.log.get(previous, tenant) is not None:
                    self.metrics.recent_lookup(True)
                    return parent
                self.metrics.recent_lookup(False)
            return await history.load_parent(self.log, previous, tenant)

    def run(
        self, turn: Turn, transport: str, persist: Persist, on_unsaved: Callable[[ApiError], None] | None = None
    ) -> AsyncIterator[Event]:
        """The turn's events to send; see ``core.records.driver`` for where persistence sits. An
        injected ``drop`` or ``close`` raises ``StreamCut`` where the connection must end."""
        events = self.driver.events(turn, transport, persist, on_unsaved)
        fault = turn.origin.fault
        return fault.cut(events) if fault is not None and fault.kind in ("drop", "close") else events

    async def complete(self, turn: Turn) -> Response:
        """Run a turn to its end without streaming (HTTP JSON); durable before it returns."""
        async for _ in self.run(turn, "http", Persist.FIRST):
            pass
        return turn.response

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
        return stored_replay(record.events, record.response, starting_after)

    async def delete(self, response_id: str, tenant: str = "") -> dict[str, Any]:
        if self.background.running(response_id, tenant) is not None:
            await self.background.cancel(response_id, tenant)
        self.recent.forget_tenant(tenant)  # an entry may hold this response as an ancestor
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
        parent, _ = await self._parent(request, StageTimes(), tenant, None)
        stored = await self._referenced(request, parent, tenant)
        count = self.pipeline.count_input_tokens(request, parent, stored, await _rendered_ahead(request, parent))
        return {"object": "response.input_tokens", "input_tokens": count}

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

    # Looking inside ----------------------------------------------------------------------------

    def observe_error(self, err: ApiError) -> None:
        """An error a client was answered with, by any transport (for ``/metrics`` and the dashboard)."""
        self.metrics.error(err.code or err.type)
        self.observatory.error(err.code, err.type)

    def _fault_injected(self, kind: str) -> None:
        self.metrics.fault_injected(kind)
        self.observatory.fault(kind)

    async def dashboard(self, viewer: str | None) -> dict[str, Any]:
        """The dashboard's snapshot for ``viewer`` (a tenant; None: every tenant in full)."""
        connections: list[ConnectionView] = [c.view() for c in self.open_connections]
        return self.observatory.snapshot(viewer, connections, await self._cached_store_health(), self.engine.replicas())

    async def _cached_store_health(self) -> dict[str, Any]:
        """Asked at most every 2 s, and never waited on for more than 1 s (a dashboard must not
        queue probes behind a store that hangs)."""
        checked, report = self._store_health
        now = time.monotonic()
        if now - checked >= 2.0:
            try:
                async with asyncio.timeout(1.0):
                    report = await self.log.health()
            except TimeoutError:
                report = {"state": "unavailable", "detail": "the store did not answer within 1 s"}
            self._store_health = (now, report)
        return report

    # Health ----------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """``ok`` while default requests can be served: store=true (the default) needs the store."""
        store = await self.log.health()
        status = "ok" if store["state"] == "ok" else "degraded"
        return {"status": status, "store": store, "draining": self.draining}

    # Models ----------------------------------------------------------------------------------

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [describe(info) for info in self.engine.models()]}

    def model(self, model_id: str) -> dict[str, Any]:
        info = find_model(self.engine, model_id)
        if info is None:
            raise not_found(f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
        return describe(info)

    async def drain(self, timeout_s: float) -> None:
        """Let in-flight responses finish (up to ``timeout_s``): every open connection's, then closing it,
        and every background run's, ending the rest as failed."""
        self.draining = True
        await self.feed.aclose()
        deadline = asyncio.get_running_loop().time() + timeout_s
        work = [self.background.drain(deadline), *(c.drain(timeout_s) for c in list(self.open_connections))]
        await asyncio.wait([asyncio.create_task(w) for w in work], timeout=timeout_s + 1)

    async def aclose(self) -> None:
        await self.feed.aclose()
        await self.background.aclose()
        await self.log.drain()


async def _rendered_ahead(request: CreateRequest, parent: Parent | None) -> Renderer | None:
    """A large context from the store (a long conversation, a long chain that missed the caches)
    rendered in a worker thread, so the loop only looks its tokens up; None for the rest."""
    if parent is None or parent.items is None or parent.stored_bytes <= offload.LARGE_CONTEXT_BYTES:
        return None
    return await offload.render_ahead(request, parent.items)
