"""Running a prepared turn to its end, the same way for every transport.

The one choice that differs between transports is where persistence sits relative to the terminal
event, and it is made here, once:

- ``Persist.FIRST``: the store has the response before the client hears it ended (HTTP JSON and
  SSE, background runs, and WebSocket with ``--ws-durable-store``). A failed write takes the
  terminal event's place: the driver raises the store's ``ApiError`` (503 ``store_unavailable``),
  which each transport renders as it renders any error.
- ``Persist.BEHIND``: the terminal event goes out first and the write follows (WebSocket's overlap);
  the record is readable from the moment it is submitted (``ResponseLog.put_behind``). A write that
  fails later is reported to ``on_unsaved`` with the same 503, naming the response.

A turn on a conversation (``conversation`` in the request) appends its input and output to it before
its terminal event on every transport, so the next turn finds them wherever it runs; appends land in
the order turns finish.

``store=false`` turns write nothing. Every finished turn is counted once, when its terminal event
leaves. A stored turn persisted first (HTTP, background, ``--ws-durable-store``) is also remembered,
rendered, in the process's recent conversations (``core.records.recent``) for an HTTP continuation of it.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable

from loopway.core.ops.metrics import Metrics
from loopway.core.ops.observatory import Observatory
from loopway.core.records.conversation_store import Conversations
from loopway.core.records.persistence import ResponseLog, record_of
from loopway.core.records.recent import RecentConversations
from loopway.core.turn.pipeline import TurnPipeline
from loopway.core.turn.turn import Turn
from loopway.protocol.errors import ApiError
from loopway.protocol.events import Event, is_terminal


class Persist(enum.Enum):
    FIRST = "first"
    BEHIND = "behind"


class TurnDriver:
    """Runs a prepared turn's events through to the client and the records: persistence where the
    ``Persist`` choice puts it, the conversation append, the recent-conversation cache, and the
    counting of every finished turn, once. One per service; a turn's state stays on the ``Turn``.
    """

    def __init__(
        self,
        pipeline: TurnPipeline,
        log: ResponseLog,
        metrics: Metrics,
        recent: RecentConversations | None = None,
        observatory: Observatory | None = None,
        conversations: Conversations | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.log = log
        self.metrics = metrics
        self.recent = recent
        self.observatory = observatory or Observatory()
        self.conversations = conversations

    async def events(
        self,
        turn: Turn,
        transport: str,
        persist: Persist,
        on_unsaved: Callable[[ApiError], None] | None = None,
    ) -> AsyncIterator[Event]:
        """The turn's events in order, ending with its terminal event (or a raised store error)."""
        self.observatory.in_flight[transport] += 1
        try:
            async for event in self.pipeline.run(turn):
                if not is_terminal(event):
                    yield event
                    continue
                if persist is Persist.FIRST:
                    try:
                        await self._append_to_conversation(turn)
                        await self._persist(turn)
                    finally:
                        self._finished(turn, transport)
                    yield event
                else:
                    try:
                        await self._append_to_conversation(turn)
                    except ApiError:
                        self._finished(turn, transport)
                        raise
                    try:
                        yield event
                    finally:  # also when the consumer stops here: the client has had its answer
                        self._persist_behind(turn, on_unsaved)
                        self._finished(turn, transport)
        finally:
            self.observatory.in_flight[transport] -= 1
            if turn.mcp is not None:
                await turn.mcp.aclose()  # its running calls, and its own sessions (not a connection's)

    async def _append_to_conversation(self, turn: Turn) -> None:
        """A turn on a conversation adds its input and output to it before its terminal event, on
        every transport: the next turn, wherever it runs, finds them (a failed turn adds nothing)."""
        conversation = turn.request.conversation
        if conversation is None or self.conversations is None or turn.response.status == "failed":
            return
        items = [*turn.new_items, *turn.response.output]
        turn.wrote_conversation(await self.conversations.append(conversation, items, "conversation"))

    def _finished(self, turn: Turn, transport: str) -> None:
        self.metrics.turn_finished(turn, transport)
        self.observatory.turn_finished(turn, transport)

    async def _persist(self, turn: Turn) -> None:
        if turn.request.store:
            with turn.times.measure("persist"):
                await self.log.put(record_of(turn))
            if self.recent is not None and turn.after is not None and turn.response.status != "failed":
                self.recent.remember(turn.tenant, turn.response, turn.after, turn.served_by)

    def _persist_behind(self, turn: Turn, on_unsaved: Callable[[ApiError], None] | None) -> None:
        if turn.request.store:
            with turn.times.measure("persist"):
                self.log.put_behind(record_of(turn), on_unsaved)
