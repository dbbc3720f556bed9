"""One response in the making: its request, its context, the live response object and its timings.

A ``Turn`` is built in one place, ``TurnPipeline.prepare``, from the request, its parent and a
``TurnOrigin`` (what the service alone knows: the tenant, where the parent was served, the socket,
a conversation's version, what was prepared ahead). After that it flows one way: the pipeline
runs it, the records driver persists it, the transports send its events. What others may do to a
live turn is a method here (``steer``, ``queue``, ``wrote_conversation``), never an attribute
set from outside.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from msgspec import UNSET

from loopway.core.context.conversation import Conversation
from loopway.core.ops.fault_injection import Fault
from loopway.core.ops.timing import StageTimes
from loopway.core.turn import mcp_rounds as mcp_turn
from loopway.core.turn.assembler import EventAssembler
from loopway.engines.base import Delta
from loopway.mcp.sessions import McpSessions
from loopway.protocol.events import Event
from loopway.protocol.items import Compaction, Item
from loopway.protocol.request import CreateRequest
from loopway.protocol.response import Response
from loopway.tokens.render import Renderer


@dataclass(frozen=True, slots=True)
class TurnOrigin:
    """What the service knows of a turn before the pipeline builds it."""

    tenant: str = ""
    replica: str | None = None  # where the parent was served (its prefix is cached there)
    session: str | None = None  # the WebSocket connection it runs on
    conversation_version: int | None = None  # a conversation's version when the turn read it
    renderer: Renderer | None = None  # the request's tokens, rendered ahead off the loop
    stored: dict[str, Item] = field(default_factory=dict)  # items ``item_reference`` names elsewhere
    connection_mcp: Callable[[], McpSessions] | None = None  # the connection's MCP sessions, if any
    fault: Fault | None = None  # an injected fault (``--faults``): breaks the engine's stream or cuts the events


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
        origin: TurnOrigin = TurnOrigin(),
    ) -> None:
        self.request = request
        self.origin = origin
        self.response = response
        self.conversation = conversation
        self.new_items = new_items
        self.known_prefix = known_prefix
        self.known_items = known_items
        self.compacted = compacted
        self.times = times
        self.assembler = EventAssembler(response)
        self.after: Conversation | None = None
        self.steered = False  # set by response.steer: end after the current output item
        self.started = False  # ``TurnPipeline.start`` ran: the engine was asked (or will be, in a round)
        self.generation: AsyncIterator[Delta] | None = None  # the engine's stream, once it accepted
        self.open_failure: tuple[str, str] | None = None  # the engine failed before it accepted
        self.opened_at = 0.0
        self.first_token_at: float | None = None
        self.events: list[Event] | None = None  # kept for replay (background responses)
        self.served_by: str | None = None  # the engine replica that served this turn
        # A turn on a conversation: its version after the turn appended to it (the connection cache
        # keeps this rendering only if nobody else wrote since ``origin.conversation_version``).
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
    def tenant(self) -> str:
        return self.origin.tenant

    def steer(self, steer_id: str) -> Event:
        """``response.steer``: the turn ends after the output item now streaming; the acceptance
        is numbered in the turn's own sequence."""
        self.steered = True
        return self.assembler.steer_accepted(steer_id)

    def queue(self) -> Response:
        """A background turn's first events (created, queued), kept with every later one for replay;
        returns the response as queued."""
        self.events = list(self.assembler.queued())
        return self.events[0].response  # type: ignore[attr-defined]

    def wrote_conversation(self, version: int) -> None:
        self.conversation_written = version

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
