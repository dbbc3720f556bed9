"""Background responses: run detached, observable while running, cancellable, never left hanging.

A background run belongs to the app, not to the request that started it: it survives the client
going away and is cancelled only by ``POST /v1/responses/{id}/cancel``, or ended by shutdown. Its
events are kept so ``GET ?stream=true&starting_after=N`` can replay and then follow it live.

Each run ends exactly once (``_Run.ended``): completing, being cancelled and being deleted may race
(two cancels, a cancel and a delete, a cancel as the answer's last token arrives), and every one of
them waits for that single ending (final state stored, run forgotten, followers released) instead
of interrupting it. While a run lives, its process renews a claim on it in the store; a process that
dies (``kill -9``) stops renewing, and the next process to look (its successor at start-up, or a
peer replica on the same store) ends the run as ``failed``, so nothing stays ``queued`` forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import msgspec

from loopway.core.records.driver import Persist, TurnDriver
from loopway.core.records.persistence import ResponseLog, record_of, store_unavailable
from loopway.core.turn.turn import Turn
from loopway.protocol import response as wire
from loopway.protocol.errors import ApiError
from loopway.protocol.events import Event, ResponseFailed, ResponseInProgress, encode_event, is_terminal
from loopway.protocol.response import Response, ResponseError
from loopway.store.base import BackgroundClaims, StoreUnavailable

log = logging.getLogger("loopway.background")

CLAIM_S = 15.0  # how long a claim lasts unrenewed; it is renewed every third of that
LIVE = ("queued", "in_progress")
RESTARTED = "The server stopped before this response finished; create it again."
SHUT_DOWN = "The server shut down before this response finished; create it again."


class _Run:
    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.changed = asyncio.Condition()
        self.ended = asyncio.Event()  # final state stored, run forgotten
        self.stopping = False  # cancel() or shutdown stopped the generation
        self.task: asyncio.Task[None] | None = None


class BackgroundRuns:
    def __init__(self, driver: TurnDriver, log: ResponseLog, claims: BackgroundClaims, claim_s: float = CLAIM_S) -> None:
        self.driver = driver
        self.log = log
        self.claims = claims
        self.claim_s = claim_s
        self._runs: dict[str, _Run] = {}
        self._keeper: asyncio.Task[None] | None = None

    async def start(self, turn: Turn) -> Response:
        """Queue the turn; returns once its ``queued`` state is stored (and claimed)."""
        run = _Run(turn)
        queued = turn.queue()
        await self._claim(turn.id)
        await self.log.put(record_of(turn))
        self._runs[turn.id] = run
        run.task = asyncio.create_task(self._run(run), name=f"background {turn.id}")
        self.keep_claims()
        return queued

    async def _run(self, run: _Run) -> None:
        turn = run.turn
        saved = False
        try:
            # The pipeline keeps every event on turn.events, for replay.
            async for event in self.driver.events(turn, "background", Persist.FIRST):
                saved = is_terminal(event)
                if isinstance(event, ResponseInProgress):
                    await self._left_the_queue(turn)
                async with run.changed:
                    run.changed.notify_all()
        except asyncio.CancelledError:
            if not run.stopping:
                raise
        except ApiError as err:
            log.error("background response %s: %s", turn.id, err.message)
            if err.code == "store_unavailable":  # the final write failed: the run is over, its last state unsaved
                saved = True
            else:  # it could not be recorded as it ended (its conversation was deleted meanwhile)
                _fail_instead(turn, err)
                saved = False
        finally:
            await asyncio.shield(self._end(run, saved))

    async def _left_the_queue(self, turn: Turn) -> None:
        """The run has started: stored as ``in_progress``, so a status read after this process dies
        never goes back to ``queued`` (a failed write leaves ``queued``, which its ending replaces)."""
        with contextlib.suppress(ApiError):
            await self.log.put(record_of(turn))

    async def _end(self, run: _Run, saved: bool) -> None:
        """The one ending of a run: its last state stored unless already, then forgotten."""
        turn = run.turn
        try:
            if not saved:  # stopped before its terminal event: cancelled, or ended by shutdown
                self.driver.metrics.turn_finished(turn, "background")
                with contextlib.suppress(ApiError):
                    await self.log.put(record_of(turn))
            with contextlib.suppress(StoreUnavailable):
                await self.claims.release(turn.id)
        finally:
            self._runs.pop(turn.id, None)
            run.ended.set()
            async with run.changed:
                run.changed.notify_all()

    def _run_of(self, response_id: str, tenant: str) -> _Run | None:
        run = self._runs.get(response_id)
        return run if run is not None and run.turn.tenant == tenant else None

    def running(self, response_id: str, tenant: str) -> Turn | None:
        run = self._run_of(response_id, tenant)
        return run.turn if run else None

    async def cancel(self, response_id: str, tenant: str) -> Response | None:
        """Cancel a running background response and wait for its end; None if it is not running here.

        Idempotent: a second cancel (or a delete) waits for the same ending. A response that already
        has its terminal state keeps it.
        """
        run = self._run_of(response_id, tenant)
        if run is None:
            return None
        self._stop(run, "cancelled")
        await run.ended.wait()
        return run.turn.response

    def _stop(self, run: _Run, status: str, error: str | None = None) -> None:
        response = run.turn.response
        if run.stopping or response.status not in LIVE or run.task is None:
            return
        run.stopping = True
        response.status = status  # type: ignore[assignment]
        if error is not None:
            response.error = ResponseError(code="server_error", message=error)
        run.task.cancel()

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
            if run.ended.is_set():
                return
            async with run.changed:
                if index >= len(events) and not run.ended.is_set():
                    await run.changed.wait()

    # Claims, recovery and shutdown -----------------------------------------------------------

    async def _claim(self, response_id: str) -> None:
        try:
            await self.claims.claim(response_id, time.time() + self.claim_s)
        except StoreUnavailable as exc:
            raise store_unavailable(f" ({exc})") from None

    def keep_claims(self) -> None:
        """Start renewing this process's claims and ending dead processes' runs (once; from start-up)."""
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.create_task(self._renew_claims(), name="background claims")

    async def _renew_claims(self) -> None:
        while True:
            for response_id in list(self._runs):
                with contextlib.suppress(StoreUnavailable):
                    await self.claims.claim(response_id, time.time() + self.claim_s)
            await self.recover()
            await asyncio.sleep(self.claim_s / 3)

    async def recover(self) -> list[str]:
        """End every run whose claim expired (its process died) as ``failed``; returns their ids."""
        try:
            orphans = [i for i in await self.claims.orphans(time.time()) if i not in self._runs]
        except StoreUnavailable:
            return []
        ended = []
        for response_id in orphans:
            with contextlib.suppress(StoreUnavailable, ApiError):
                if await self._fail_orphan(response_id):
                    ended.append(response_id)
                await self.claims.release(response_id)
        return ended

    async def _fail_orphan(self, response_id: str) -> bool:
        record = await self.log.store.get(response_id)
        if record is None:
            return False
        response = wire.decode(record.response)
        if response.status not in LIVE:
            return False
        response.status = "failed"
        response.error = ResponseError(code="server_error", message=RESTARTED)
        events = msgspec.json.decode(record.events) if record.events is not None else []
        failed = ResponseFailed(response=response, sequence_number=len(events))
        events.append(msgspec.json.decode(encode_event(failed)))  # a replay now ends
        await self.log.put(
            msgspec.structs.replace(record, response=wire.encode(response), events=msgspec.json.encode(events))
        )
        log.warning("background response %s was left unfinished by a stopped process: now failed", response_id)
        return True

    async def drain(self, deadline: float) -> None:
        """Shutdown: let running responses finish until ``deadline`` (loop time), then end the rest."""
        loop = asyncio.get_running_loop()
        while self._runs and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await self.aclose()

    async def aclose(self) -> None:
        for run in list(self._runs.values()):
            self._stop(run, "failed", SHUT_DOWN)
        await asyncio.gather(*(run.ended.wait() for run in list(self._runs.values())))
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper


def _fail_instead(turn: Turn, err: ApiError) -> None:
    """A run whose ending could not be recorded (its terminal event never left) ends ``failed``,
    saying why: its replay ends with that, not with an ending nobody was told of."""
    if turn.events and is_terminal(turn.events[-1]):
        turn.events.pop()
    response = turn.response
    response.status = "failed"
    response.error = ResponseError(code="server_error", message=f"The response could not be recorded: {err.message}")
    failed = ResponseFailed(response=msgspec.structs.replace(response, output=list(response.output)))
    failed.sequence_number = len(turn.events or [])
    if turn.events is not None:
        turn.events.append(failed)
