"""Scripted rollouts: at model turn k, say exactly what the trace says.

A trace is JSON: ``{"turns": [{"output": [ITEM, ...]}, ...]}`` where an item is
``{"type": "message", "text": "..."}`` or ``{"type": "function_call", "name": "...",
"arguments": {...} | "..."}``. Other keys (tool results and timings a benchmark replays on the
client side) are ignored here. The turn index is the number of model turns already in the
context, so stateless and chained clients see the same script (and a response whose MCP calls
loopway runs moves through it round by round). Past the last scripted turn the default policy
answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from loopway.engines.base import EngineRequest
from loopway.engines.sim.policy import DefaultPolicy, Plan, PlannedCall, PlannedText, model_turns
from loopway.engines.sim.schema_instance import Budget


class TraceError(ValueError):
    pass


def _planned(raw: Any, where: str) -> PlannedText | PlannedCall:
    if not isinstance(raw, dict):
        raise TraceError(f"{where}: expected an object")
    kind = raw.get("type")
    if kind == "message":
        return PlannedText(str(raw.get("text", "")))
    if kind == "function_call":
        arguments = raw.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = msgspec.json.encode(arguments).decode()
        if not raw.get("name"):
            raise TraceError(f"{where}: function_call needs a name")
        namespace = raw.get("namespace")
        return PlannedCall(
            name=str(raw["name"]),
            arguments=arguments,
            call_id=raw.get("call_id"),
            namespace=str(namespace) if namespace else None,
        )
    raise TraceError(f"{where}: unknown item type {kind!r}")


def load_trace(path: str | Path) -> list[Plan]:
    try:
        data = msgspec.json.decode(Path(path).read_bytes())
    except (OSError, msgspec.DecodeError) as exc:
        raise TraceError(f"cannot read trace {path}: {exc}") from None
    turns = data.get("turns") if isinstance(data, dict) else None
    if not isinstance(turns, list):
        raise TraceError(f"{path}: expected an object with a 'turns' array")
    plans = []
    for k, turn in enumerate(turns):
        output = turn.get("output") if isinstance(turn, dict) else None
        if not isinstance(output, list) or not output:
            raise TraceError(f"{path}: turns[{k}].output must be a non-empty array")
        plans.append([_planned(item, f"turns[{k}].output[{i}]") for i, item in enumerate(output)])
    return plans


class TracePolicy:
    def __init__(self, plans: list[Plan], fallback: DefaultPolicy) -> None:
        self.plans = plans
        self.fallback = fallback

    def plan(self, request: EngineRequest, budget: Budget) -> Plan:
        turn = model_turns(request.items)
        if turn < len(self.plans):
            return _on_mcp_servers(self.plans[turn], request)
        return self.fallback.plan(request, budget)


def _on_mcp_servers(plan: Plan, request: EngineRequest) -> Plan:
    """A scripted call of a tool that an MCP server offers (and no function tool of that name)
    goes to that server: one trace runs client-side tools and server-run MCP tools alike."""
    served = {t.name: t.namespace for t in request.tools.functions if t.mcp}
    if not served:
        return plan
    local = {t.name for t in request.tools.functions if not t.mcp}
    return [
        msgspec.structs.replace(step, namespace=served[step.name])
        if isinstance(step, PlannedCall) and step.namespace is None and step.name in served and step.name not in local
        else step
        for step in plan
    ]
