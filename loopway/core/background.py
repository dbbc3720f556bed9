"""Background responses: run detached, observable while running, cancellable.

A background run belongs to the app, not to the request that started it: it survives the client
going away and is cancelled only by ``POST /v1/responses/{id}/cancel`` or shutdown. Its events are
kept so ``GET ?stream=true&starting_after=N`` can replay and then follow it live.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from loopway.core.driver import Persist, TurnDriver
from loopway.core.persistence import ResponseLog
from loopway.core.pipeline import Turn, is_terminal
from loopway.protocol.errors import ApiError
from loopway.protocol.events import Event
from loopway.protocol.response import Response

log = logging.getLogger("loopway.background")


class _Run:
    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.changed = asyncio.Condition()
        self.done = False
        self.task: asyncio.Task[None] | None = None


class BackgroundRuns:
    def __init__(self, driver: TurnDriver, log: ResponseLog) -> None:
        self.driver = driver
        self.log = log
        self._runs: dict[str, _Run] = {}

    async def start(self, turn: Turn) -> Response:
        """Queue the turn; returns once its ``queued`` state is stored."""
        run = _Run(turn)
        turn.events = list(turn.assembler.queued())
        if turn.request.store:
            await self.log.put(self.driver.pipeline.record(turn))
        self._runs[turn.id] = run
        run.task = asyncio.create_task(self._run(run), name=f"background {turn.id}")
        return turn.events[0].response  # type: ignore[attr-defined]

    async def _run(self, run: _Run) -> None:
        turn = run.turn
        assert turn.events is not None
        ended = False
        try:
            async for event in self.driver.events(turn, "background", Persist.FIRST):  # records turn.events
                ended = is_terminal(event)
                async with run.changed:
                    run.changed.notify_all()
        except ApiError as err:  # the store failed its final write: the run is over, unsaved
            log.error("background response %s was not saved: %s", turn.id, err.message)
            ended = True
        finally:
            await self._finish(run, saved=ended)

    async def _finish(self, run: _Run, saved: bool) -> None:
        if not saved:  # cancelled before its terminal event: its last state still needs writing and counting
            if run.turn.request.store:
                await asyncio.shield(self.log.put(self.driver.pipeline.record(run.turn)))
            self.driver.metrics.turn_finished(run.turn, "background")
        run.done = True
        self._runs.pop(run.turn.id, None)
        async with run.changed:
            run.changed.notify_all()

    def _run_of(self, response_id: str, tenant: str) -> _Run | None:
        run = self._runs.get(response_id)
        return run if run is not None and run.turn.tenant == tenant else None

    def running(self, response_id: str, tenant: str) -> Turn | None:
        run = self._run_of(response_id, tenant)
        return run.turn if run else None

    async def cancel(self, response_id: str, tenant: str) -> Response | None:
        """Cancel a running background response; None if it is not running here."""
        run = self._run_of(response_id, tenant)
        if run is None or run.task is None:
            return None
        run.turn.response.status = "cancelled"
        run.task.cancel()
        try:
            await run.task
        except asyncio.CancelledError:
            pass
        return run.turn.response

    async def follow(self, response_id: str, starting_after: int, tenant: str) -> AsyncIterator[Event] | None:
        run = self._run_of(response_id, tenant)
        if run is None:
            return None
        return self._follow(run, starting_after)

    async def _follow(self, run: _Run, starting_after: int) -> AsyncIterator[Event]:
        events = run.turn.events or []
        index = starting_after + 1
        while True:
            while index < len(events):
                yield events[index]
                index += 1
            if run.done:
                return
            async with run.changed:
                if index >= len(events) and not run.done:
                    await run.changed.wait()

    async def aclose(self) -> None:
        for response_id, run in list(self._runs.items()):
            await self.cancel(response_id, run.turn.tenant)
