"""A turn's MCP servers: which tools the model sees, which calls run and which wait for approval.

``prepare`` (before the engine, with the turn's context) finds each server's ``mcp_list_tools`` in
the context (reused, as OpenAI does: a server is listed once per conversation), checks the URLs
against ``--mcp-allow``, and takes the calls that this turn's ``mcp_approval_response`` items
approve. While the turn runs, ``first_round`` lists the servers not yet listed and runs the
approved calls; their tools are offered to the engine as function tools in the server's namespace,
and every call the engine makes of one starts (``start_closed_calls``) the moment its arguments are
complete, while the engine may still be writing the next; ``result`` waits for it. A call never
raises: a failing server is the call's ``error``. A round whose calls were all loopway's to run
(``only_mcp_calls``) lets the model go on in a next round of the same response.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec

from loopway.core.context.conversation import Conversation
from loopway.core.turn.assembler import EventAssembler
from loopway.mcp.client import McpError, McpFailure, McpResult, McpSession
from loopway.mcp.sessions import McpRuntime, McpSessions
from loopway.protocol import ids
from loopway.protocol.errors import invalid_request
from loopway.protocol.events import Event, McpCallArgumentsDone
from loopway.protocol.items import (
    FunctionCall,
    Item,
    McpApprovalRequest,
    McpApprovalResponse,
    McpCall,
    McpListedTool,
    McpListTools,
)
from loopway.protocol.mcp_spec import McpServerSpec
from loopway.protocol.tools import FunctionTool, ToolSet

log = logging.getLogger("loopway.mcp")

MAX_ROUNDS = 100  # engine rounds with MCP calls in one response; the next one is offered no MCP tools
MAX_CALLS = 200  # MCP calls in one response, whatever max_tool_calls says


def _server_param(tools: ToolSet, label: str) -> str:
    for i, raw in enumerate(tools.echo):
        if raw.get("type") == "mcp" and raw.get("server_label") == label:
            return f"tools[{i}].server_url"
    return "tools"


class McpTurn:
    def __init__(
        self,
        servers: Sequence[McpServerSpec],
        listed: dict[str, McpListTools],
        approved: list[McpCall],
        max_calls: int,
        runtime: McpRuntime | None = None,
    ) -> None:
        self.servers = list(servers)
        self.listed = listed  # server label -> its tool list (from the context, or listed this turn)
        self.approved = approved  # calls the client approved, to run before the engine
        self.max_calls = max_calls
        self.runtime = runtime
        self.sessions: McpSessions | None = None  # the connection's, or the turn's own
        self.owns_sessions = False
        self.calls = 0
        self.rounds = 0
        self._running: dict[str, asyncio.Task[McpResult]] = {}

    # Before the engine ---------------------------------------------------------------------

    def unlisted(self) -> list[McpServerSpec]:
        return [s for s in self.servers if s.server_label not in self.listed]

    async def list_tools(self, spec: McpServerSpec) -> tuple[list[McpListedTool], str | None]:
        """The server's tools that the spec allows, or the error that listing met."""
        assert self.sessions is not None
        try:
            tools = await self.sessions.session(spec).list_tools()
        except Exception as exc:  # the McpError a server earns, or anything stranger: the model hears of it
            message = exc.failure.message if isinstance(exc, McpError) else f"{type(exc).__name__}: {exc}"
            self._observe_listing("failed")
            return [], f"Error retrieving tool list from MCP server '{spec.server_label}': {message}"
        self._observe_listing("completed")
        return [t for t in tools if spec.allows(t)], None

    def _observe_listing(self, outcome: str) -> None:
        if self.runtime is not None:
            self.runtime.observe_listing(outcome)

    def remember(self, item: McpListTools) -> None:
        if item.error is None:
            self.listed[item.server_label] = item

    # What the engine sees --------------------------------------------------------------------

    def engine_tools(self, tools: ToolSet) -> ToolSet:
        """The request's tools plus the listed MCP tools (none once the calls or rounds are spent)."""
        if self.calls >= self.max_calls or self.rounds >= MAX_ROUNDS:
            return tools
        offered: list[FunctionTool] = []
        for spec in self.servers:
            listing = self.listed.get(spec.server_label)
            for tool in listing.tools if listing is not None else ():
                if spec.allows(tool):
                    offered.append(
                        FunctionTool(
                            name=tool.name,
                            parameters=tool.input_schema,
                            description=tool.description,
                            namespace=spec.server_label,
                            mcp=True,
                        )
                    )
        if not offered:
            return tools
        return msgspec.structs.replace(tools, functions=[*tools.functions, *offered])

    def call_kind(self, namespace: str | None, name: str) -> tuple[str, str]:
        """What a call of the engine is: ``("mcp_call" | "mcp_approval", label)``, or a function call."""
        spec = self._server(namespace)
        if spec is None:
            return "function", ""
        tool = self._listed_tool(spec, name)
        return ("mcp_approval" if spec.needs_approval(tool) else "mcp_call"), spec.server_label

    def _server(self, label: str | None) -> McpServerSpec | None:
        return next((s for s in self.servers if s.server_label == label), None) if label else None

    def _listed_tool(self, spec: McpServerSpec, name: str) -> McpListedTool | None:
        listing = self.listed.get(spec.server_label)
        return next((t for t in listing.tools if t.name == name), None) if listing is not None else None

    # Running calls ---------------------------------------------------------------------------

    def start_call(self, call: McpCall) -> None:
        """Run a call now, in the background of the turn; a call past the budget does not run."""
        self.calls += 1
        if self.calls > self.max_calls:
            skipped = McpFailure("mcp_protocol_error", f"This response reached max_tool_calls ({self.max_calls}).", -32000)
            self._running[call.id or ""] = _done(McpResult(failure=skipped))
            return
        spec = self._server(call.server_label)
        arguments = _arguments(call.arguments)
        refusal = self._refusal(spec, call.name) or (arguments if isinstance(arguments, McpFailure) else None)
        if spec is None or self.sessions is None or refusal is not None or isinstance(arguments, McpFailure):
            failure = refusal or McpFailure("mcp_protocol_error", "No session.", -32000)
            self._running[call.id or ""] = _done(McpResult(failure=failure))
            return
        task = asyncio.get_running_loop().create_task(self._timed(self.sessions.session(spec), call.name, arguments))
        self._running[call.id or ""] = task

    def _refusal(self, spec: McpServerSpec | None, name: str) -> McpFailure | None:
        """Only a tool the server listed and the spec allows runs, whatever name the model writes."""
        tool = self._listed_tool(spec, name) if spec is not None else None
        if spec is not None and tool is not None and spec.allows(tool):
            return None
        label = spec.server_label if spec is not None else "?"
        return McpFailure("mcp_protocol_error", f"Tool '{name}' is not offered by MCP server '{label}'.", -32602)

    async def _timed(self, session: McpSession, name: str, arguments: dict[str, Any]) -> McpResult:
        started = time.perf_counter()
        try:
            result = await session.call_tool(name, arguments)
        except Exception as exc:  # anything stranger than an McpError: the call's error, never the response's
            log.warning("MCP call %s failed unexpectedly: %s", name, type(exc).__name__)
            failure = McpFailure("mcp_protocol_error", f"The call failed: {type(exc).__name__}.", -32603)
            result = McpResult(failure=failure)
        if self.runtime is not None:
            outcome = result.failure.kind if result.failure is not None else "completed"
            self.runtime.observe_call(outcome, time.perf_counter() - started)
        return result

    async def result(self, call: McpCall) -> tuple[str | None, dict[str, Any] | None]:
        """The call's ``output`` and ``error``, once it has run."""
        task = self._running.pop(call.id or "")
        result = await task
        return result.output, result.failure.wire() if result.failure is not None else None

    def cancel(self) -> None:
        for task in self._running.values():
            task.cancel()
        self._running.clear()

    async def aclose(self) -> None:
        self.cancel()
        if self.owns_sessions and self.sessions is not None:
            await self.sessions.aclose()


# A turn's MCP rounds ---------------------------------------------------------------------------


async def first_round(a: EventAssembler, mcp: McpTurn) -> AsyncIterator[Event]:
    """Before the engine: list the servers the context has no listing of (together), then run the
    calls the client approved, one after another as OpenAI does."""
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


def start_closed_calls(mcp: McpTurn, output: Sequence[Item], events: list[Event]) -> list[tuple[McpCall, int]]:
    """The MCP calls whose arguments ``events`` complete (``mcp_call_arguments.done``): they start
    running now, and are returned with their output index for the round to wait on."""
    closed = []
    for event in events:
        if isinstance(event, McpCallArgumentsDone):
            call = output[event.output_index]
            assert isinstance(call, McpCall)
            mcp.start_call(call)
            closed.append((call, event.output_index))
    return closed


def only_mcp_calls(round_output: Sequence[Item]) -> bool:
    """Whether the round's calls were all loopway's to run (then the model goes on in the same
    response); a function call or an approval request is the client's turn."""
    return not any(isinstance(i, (FunctionCall, McpApprovalRequest)) for i in round_output)


def _done(result: McpResult) -> asyncio.Task[McpResult]:
    async def now() -> McpResult:
        return result

    return asyncio.get_running_loop().create_task(now())


def _arguments(raw: str) -> dict[str, Any] | McpFailure:
    try:
        value = msgspec.json.decode(raw or "{}")
    except msgspec.DecodeError:
        return McpFailure("mcp_protocol_error", "The model's arguments are not valid JSON.", -32602)
    if not isinstance(value, dict):
        return McpFailure("mcp_protocol_error", "The model's arguments are not a JSON object.", -32602)
    return value


def prepare(
    tools: ToolSet,
    conversation: Conversation,
    new_items: Sequence[Item],
    runtime: McpRuntime | None,
    max_tool_calls: int | None,
) -> McpTurn | None:
    """The turn's MCP state, or None for a turn without MCP servers or approvals; refusals are 400s."""
    approvals = [(i, item) for i, item in enumerate(new_items) if isinstance(item, McpApprovalResponse)]
    if not tools.mcp and not approvals:
        return None
    for spec in tools.mcp:
        if runtime is None:
            raise invalid_request("This server runs no MCP tools.", param=_server_param(tools, spec.server_label))
        runtime.check(spec, _server_param(tools, spec.server_label))
    listed = {s.server_label: found for s in tools.mcp if (found := conversation.mcp_tools_listed(s.server_label))}
    approved = _approved_calls(tools, conversation, approvals)
    limit = min(max_tool_calls, MAX_CALLS) if max_tool_calls is not None else MAX_CALLS
    return McpTurn(tools.mcp, listed, approved, limit, runtime)


def _approved_calls(
    tools: ToolSet, conversation: Conversation, approvals: list[tuple[int, McpApprovalResponse]]
) -> list[McpCall]:
    """The calls this turn's approvals let run: each once (a client resending its history with the
    call that already ran does not run it again)."""
    calls = []
    for index, answer in approvals:
        request = conversation.mcp_approval_request(answer.approval_request_id)
        if request is None:
            raise invalid_request(
                f"No MCP approval request found with id '{answer.approval_request_id}'.",
                param=f"input[{index}].approval_request_id",
                code="invalid_value",
            )
        if not answer.approve or conversation.mcp_call_approved(answer.approval_request_id):
            continue
        if tools.mcp_server(request.server_label) is None:
            raise invalid_request(
                f"The approved call runs on MCP server '{request.server_label}', which this request's tools do not include.",
                param=f"input[{index}]",
                code="invalid_value",
            )
        calls.append(
            McpCall(
                id=ids.new_id(ids.MCP_CALL),
                server_label=request.server_label,
                name=request.name,
                arguments=request.arguments,
                status="in_progress",
                approval_request_id=request.id,
            )
        )
    return calls
