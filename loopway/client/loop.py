"""The agent loop: send a turn, run tools as their calls arrive, send their outputs, repeat.

A function call is dispatched the moment its ``response.output_item.done`` arrives, so tools run
while the model is still streaming; parallel calls run concurrently. Each turn leaves a timing
trace: time to the server's first event (network and server), model time (first event to
completion), the tools' time on the critical path (completion until the last result), and the
client's own time around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import msgspec

from loopway.client.tools import ToolRegistry
from loopway.client.transports import RESTARTED, TERMINAL, ServerError, Transport, TurnRequest


class AgentError(Exception):
    pass


class TurnTrace(msgspec.Struct, kw_only=True):
    turn: int
    response_id: str
    status: str
    calls: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    started: float  # seconds since the run began
    to_first_event_s: float  # request sent → response.created: network + server pre-inference
    to_first_token_s: float | None = None  # request sent → its first output delta (None: the turn had none)
    model_s: float  # response.created → terminal event
    tool_s: float  # terminal event → last tool result (tools that finished earlier cost nothing here)
    client_s: float  # the client's own time in this turn
    tool_run_s: float  # the tools' own wall time, overlapping or not
    total_s: float
    new_input_bytes: int  # JSON size of the items this turn added: the least a transport must send
    output_bytes: int  # JSON size of the output items: the least a transport must receive


class RunResult(msgspec.Struct, kw_only=True):
    output_text: str
    response_id: str | None
    turns: list[TurnTrace]
    items: list[dict[str, Any]]
    elapsed_s: float


def _text_of(response: dict[str, Any]) -> str:
    parts = []
    for item in response.get("output", []):
        if item.get("type") == "message":
            parts += [c.get("text", "") for c in item.get("content", []) if c.get("type") == "output_text"]
    return "".join(parts)


def _as_input(item: dict[str, Any]) -> dict[str, Any]:
    """An output item as the next request's input (ids kept; fields only output has dropped)."""
    return {k: v for k, v in item.items() if v is not None and k not in ("status",)}


class AgentLoop:
    def __init__(
        self,
        transport: Transport,
        tools: ToolRegistry,
        *,
        model: str,
        instructions: str | None = None,
        max_turns: int = 100,
        extra: dict[str, Any] | None = None,
        on_turn: Callable[[TurnTrace], None] | None = None,
    ) -> None:
        self.transport = transport
        self.tools = tools
        self.model = model
        self.instructions = instructions
        self.max_turns = max_turns
        self.extra = extra or {}
        self.on_turn = on_turn

    async def run(self, task: str | list[dict[str, Any]]) -> RunResult:
        start = time.perf_counter()
        items = [{"role": "user", "content": task}] if isinstance(task, str) else list(task)
        new_items, previous = list(items), None
        traces: list[TurnTrace] = []
        response: dict[str, Any] = {}
        for turn in range(self.max_turns):
            request = TurnRequest(
                model=self.model,
                instructions=self.instructions,
                tools=self.tools.definitions(),
                history=items,
                new_items=new_items,
                previous_response_id=previous,
                extra=self.extra,
            )
            response, outputs, trace = await self._turn(turn, request, start)
            traces.append(trace)
            if self.on_turn is not None:
                self.on_turn(trace)
            items = [*items, *(_as_input(i) for i in response.get("output", [])), *outputs]
            previous, new_items = response["id"], outputs
            if not outputs:
                break
        else:
            raise AgentError(f"no final answer after {self.max_turns} turns")
        return RunResult(
            output_text=_text_of(response),
            response_id=response.get("id"),
            turns=traces,
            items=items,
            elapsed_s=time.perf_counter() - start,
        )

    async def _turn(
        self, turn: int, request: TurnRequest, start: float
    ) -> tuple[dict[str, Any], list[dict[str, Any]], TurnTrace]:
        began = time.perf_counter()
        calls: list[tuple[dict[str, Any], asyncio.Task[tuple[str, float]]]] = []
        try:
            response, created, done, first_token = await self._stream(request, calls)
            results = await asyncio.gather(*(task for _, task in calls))
        except ServerError as exc:
            raise AgentError(str(exc)) from exc
        finally:
            for _, task in calls:
                task.cancel()
        tools_done = time.perf_counter()
        outputs = [
            {"type": "function_call_output", "call_id": item["call_id"], "output": output}
            for (item, _), (output, _) in zip(calls, results)
        ]
        usage = response.get("usage") or {}
        finished = time.perf_counter()
        trace = TurnTrace(
            turn=turn,
            response_id=response["id"],
            status=response["status"],
            calls=len(calls),
            input_tokens=usage.get("input_tokens", 0),
            cached_tokens=(usage.get("input_tokens_details") or {}).get("cached_tokens", 0),
            output_tokens=usage.get("output_tokens", 0),
            started=began - start,
            to_first_event_s=created - began,
            to_first_token_s=first_token - began if first_token is not None else None,
            model_s=done - created,
            tool_s=tools_done - done,
            client_s=finished - tools_done,
            tool_run_s=sum(seconds for _, seconds in results),
            total_s=finished - began,
            new_input_bytes=len(json.dumps(request.new_items)),
            output_bytes=len(json.dumps(response.get("output", []))),
        )
        return response, outputs, trace

    async def _stream(
        self, request: TurnRequest, calls: list[tuple[dict[str, Any], asyncio.Task[tuple[str, float]]]]
    ) -> tuple[dict[str, Any], float, float, float | None]:
        """Read one response, starting each function call's tool the moment the call is complete."""
        created: float | None = None
        first_token: float | None = None
        async with contextlib.aclosing(self.transport.stream(request)) as events:
            async for event in events:
                kind = event.get("type") or ""
                if kind == RESTARTED:  # the turn is sent again: forget its partial output
                    for _, task in calls:
                        task.cancel()
                    calls.clear()
                    created = first_token = None
                elif kind == "response.created":
                    created = created or time.perf_counter()
                elif first_token is None and kind.endswith(".delta"):
                    first_token = time.perf_counter()
                elif kind == "response.output_item.done" and event["item"].get("type") == "function_call":
                    item = event["item"]
                    calls.append((item, asyncio.create_task(self._call(item))))
                elif kind in TERMINAL:
                    response = event["response"]
                    if response.get("status") == "failed":
                        raise AgentError(f"response failed: {response.get('error')}")
                    return response, created or time.perf_counter(), time.perf_counter(), first_token
        raise AgentError("the stream ended without a terminal event")

    async def _call(self, item: dict[str, Any]) -> tuple[str, float]:
        started = time.perf_counter()
        output = await self.tools.call(item.get("name", ""), item.get("arguments", "{}"))
        return output, time.perf_counter() - started
