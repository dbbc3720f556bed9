"""``openai-chat`` and ``openai-responses``: loopway's API in front of any OpenAI-compatible server.

loopway keeps the conversation (items, connection cache, store); the upstream sees each turn's
full context, rendered its own way. Public model names map to upstream names
(``--upstream-model public=upstream``). Several upstream URLs are replicas of one model: the
``fleet`` routes each turn, fails over, and the ``Finish`` says which replica served it.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from loopway.engines.base import (
    Delta,
    EngineError,
    EngineRequest,
    Finish,
    ModelInfo,
    ReasoningDelta,
    ReplicaStatus,
    TextDelta,
    ToolCallDelta,
)
from loopway.engines.upstream.chat_bridge import ChunkDecoder, ToolNames, body_of, mcp_answer, token_count
from loopway.engines.upstream.fleet import Fleet, FleetObserver, Replica, Stream
from loopway.engines.upstream.replica import Upstream
from loopway.protocol.errors import ApiError
from loopway.protocol.items import McpApprovalRequest, McpApprovalResponse, McpCall, McpListTools, to_builtins
from loopway.tokens.render import encode_long


class UpstreamSettings(msgspec.Struct, kw_only=True):
    urls: list[str]  # replicas of the same models
    models: dict[str, str]  # public name -> upstream name
    api_key: str | None = None
    context_window: int = 128_000
    timeout_s: float = 600.0
    retries: int = 2  # attempts after the first, on other replicas while there are some
    route: str = "affinity"  # affinity, round-robin or least-loaded (``fleet``)
    probe_s: float = 5.0  # health probe period; 0: passive health only
    chain: bool = False  # openai-responses: continue upstream responses by id instead of resending
    reasoning_field: str = "auto"  # openai-chat: reasoning_content, reasoning, none, or auto (as streamed)


def parse_model_map(spec: str) -> dict[str, str]:
    """``a,b=c`` → ``{"a": "a", "b": "c"}``."""
    models = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        public, _, upstream = entry.partition("=")
        models[public.strip()] = (upstream or public).strip()
    return models


class _UpstreamEngine:
    def __init__(self, settings: UpstreamSettings, observer: FleetObserver | None = None) -> None:
        self.settings = settings
        self.fleet = Fleet(
            settings.urls,
            lambda url: Upstream(url, settings.api_key, timeout_s=settings.timeout_s),
            route=settings.route,
            attempts=max(settings.retries + 1, len(settings.urls)),
            probe_s=settings.probe_s,
            observer=observer,
        )

    def start(self) -> None:
        self.fleet.start()

    def replicas(self) -> list[ReplicaStatus]:
        return self.fleet.statuses()

    def models(self) -> list[ModelInfo]:
        return [
            ModelInfo(id=name, context_window=self.settings.context_window, owned_by="upstream")
            for name in self.settings.models
        ]

    async def aclose(self) -> None:
        await self.fleet.aclose()


class OutputBudget:
    """The output an upstream may stream for one response, counted here: an upstream that ignores
    its ``max_tokens`` (or never stops) must not grow a response, and loopway's memory, without end.

    The limit is ``max_output_tokens``, else the model's context window, in ``o200k_base`` tokens
    counted delta by delta, with a tenth (at least 16) of slack for an upstream whose own tokenizer
    counts fewer: an upstream that honours the limit ends first, with its own count."""

    def __init__(self, max_output_tokens: int | None, window: int) -> None:
        limit = max_output_tokens if max_output_tokens is not None else window
        self.limit = limit + max(16, limit // 10)
        self.spent = 0

    def over(self, delta: Delta) -> bool:
        text = delta.arguments if isinstance(delta, ToolCallDelta) else getattr(delta, "text", "")
        if text:
            self.spent += len(encode_long(text))
        return self.spent > self.limit

    def finish(self, request: EngineRequest) -> Finish:
        """How a response cut here ends: ``length``, as if the upstream had stopped at its limit."""
        return Finish(reason="length", input_tokens=len(request.tokens), cached_tokens=0, output_tokens=self.spent)


class ChatEngine(_UpstreamEngine):
    """Translates each turn to Chat Completions and its stream back to Responses deltas."""

    def __init__(self, settings: UpstreamSettings, observer: FleetObserver | None = None) -> None:
        super().__init__(settings, observer)
        # Where earlier reasoning goes on an assistant message: configured, or the field the upstream
        # itself streamed reasoning in (learned from its first reasoning answer).
        self.reasoning_field = None if settings.reasoning_field == "none" else settings.reasoning_field

    def _outgoing_reasoning_field(self) -> str | None:
        return "reasoning_content" if self.reasoning_field == "auto" else self.reasoning_field

    async def open(self, request: EngineRequest) -> AsyncIterator[Delta]:
        body = body_of(request, self.settings.models[request.model], self._outgoing_reasoning_field())
        return self._deltas(await self.fleet.open("/chat/completions", body, request), request)

    async def _deltas(self, stream: Stream, request: EngineRequest) -> AsyncIterator[Delta]:
        decoder = ChunkDecoder(ToolNames(request.tools.functions))
        budget = OutputBudget(request.max_output_tokens, self.settings.context_window)
        text: list[str] = []
        thought: list[str] = []
        async with contextlib.aclosing(stream.events()) as events:  # type: ignore[type-var]
            async for chunk in events:
                for delta in decoder.feed(chunk):
                    if isinstance(delta, ReasoningDelta):
                        thought.append(delta.text)
                    else:
                        text.append(delta.text if isinstance(delta, TextDelta) else delta.arguments)  # type: ignore[union-attr]
                    yield delta
                    if budget.over(delta):
                        yield _served(self.fleet, stream.replica, budget.finish(request))
                        return
        if not decoder.finished:  # e.g. llama-cpp-python drops errors raised after its 200 (context overflow)
            raise EngineError("The upstream stream ended without a finish reason.")
        if self.reasoning_field == "auto" and decoder.reasoning_field is not None:
            self.reasoning_field = decoder.reasoning_field
        yield _served(
            self.fleet,
            stream.replica,
            decoder.finish(
                len(request.tokens),
                lambda: len(encode_long("".join(thought) + "".join(text))),
                lambda: len(encode_long("".join(thought))),
            ),
        )


class ResponsesEngine(_UpstreamEngine):
    """Passes each turn to an upstream Responses API.

    By default with the full input and ``store=false``: the upstream keeps nothing. With ``chain``,
    turns are stored upstream and a continuation sends only its new items with the upstream id of
    its parent (remembered here, bounded); an upstream that lost the parent gets the full input.
    """

    MAX_REMEMBERED = 100_000

    def __init__(self, settings: UpstreamSettings, observer: FleetObserver | None = None) -> None:
        super().__init__(settings, observer)
        self._upstream_ids: OrderedDict[str, tuple[str, str]] = OrderedDict()  # ours -> (replica, upstream id)

    async def open(self, request: EngineRequest) -> AsyncIterator[Delta]:
        model = self.settings.models[request.model]
        full = responses_body(request, model, store=self.settings.chain)
        parent = self._upstream_ids.get(request.previous_response_id or "")
        if not (self.settings.chain and parent is not None and request.known_items):
            return self._deltas(await self.fleet.open("/responses", full, request), request)
        chained = responses_body(request, model, since=request.known_items, previous=parent[1])

        def body(replica: Replica) -> dict[str, Any]:  # the parent's id means something only where it is
            return chained if replica.name == parent[0] else full

        try:
            return self._deltas(await self.fleet.open("/responses", body, request), request)
        except ApiError as exc:
            if exc.code != "previous_response_not_found":
                raise
        return self._deltas(await self.fleet.open("/responses", full, request), request)  # the upstream forgot it

    def _remember(self, response_id: str, replica: str, upstream_id: str) -> None:
        if self.settings.chain and response_id:
            self._upstream_ids[response_id] = (replica, upstream_id)
            if len(self._upstream_ids) > self.MAX_REMEMBERED:
                self._upstream_ids.popitem(last=False)

    async def _deltas(self, stream: Stream, request: EngineRequest) -> AsyncIterator[Delta]:
        calls = False
        names = ToolNames(request.tools.functions)
        budget = OutputBudget(request.max_output_tokens, self.settings.context_window)
        async with contextlib.aclosing(stream.events()) as events:  # type: ignore[type-var]
            async for event in events:
                delta = self._delta(event, names)
                if delta is not None:
                    calls = calls or (isinstance(delta, ToolCallDelta) and delta.name is not None)
                    yield delta
                    if budget.over(delta):
                        yield _served(self.fleet, stream.replica, budget.finish(request))
                        return
                    continue
                kind = event.get("type")
                if kind in ("response.completed", "response.incomplete"):
                    self._remember(request.response_id, stream.replica.name, event["response"]["id"])
                    yield _served(self.fleet, stream.replica, finish_of(event["response"], calls))
                    return
                if kind in ("response.failed", "error"):
                    error = (event.get("response") or {}).get("error") or event.get("error") or event
                    raise EngineError(f"The upstream response failed: {error.get('message', error)}")
        raise EngineError("The upstream stream ended without a terminal event.")

    @staticmethod
    def _delta(event: dict[str, Any], names: ToolNames) -> Delta | None:
        """The engine delta an upstream Responses event carries, if it carries one."""
        kind = event.get("type")
        if kind == "response.output_text.delta":
            return TextDelta(event.get("delta", ""))
        if kind in ("response.reasoning_text.delta", "response.reasoning_summary_text.delta"):
            return ReasoningDelta(event.get("delta", ""), summary=kind.startswith("response.reasoning_summary"))
        if kind == "response.output_item.added" and event.get("item", {}).get("type") == "function_call":
            item = event["item"]
            namespace, name = names.original(item.get("name") or "")
            return ToolCallDelta(
                index=event["output_index"], arguments="", call_id=item.get("call_id"), name=name, namespace=namespace
            )
        if kind == "response.function_call_arguments.delta":
            return ToolCallDelta(index=event["output_index"], arguments=event.get("delta", ""))
        return None


def _served(fleet: Fleet, replica: Replica, finish: Finish) -> Finish:
    """The Finish says where the turn ran, so its continuation can go back there."""
    fleet.finished(replica, finish.input_tokens, finish.cached_tokens)
    finish.replica = replica.name
    return finish


def responses_body(
    request: EngineRequest, upstream_model: str, *, since: int = 0, previous: str | None = None, store: bool = False
) -> dict[str, Any]:
    names = ToolNames(request.tools.functions)  # MCP tools go upstream flat: "label__tool"
    items: list[dict[str, Any]] = []
    for item in list(request.items)[since:]:
        if isinstance(item, McpCall):  # a call loopway ran, as the call and its output
            name = names.flat(item.server_label, item.name)
            items.append({"type": "function_call", "call_id": item.id, "name": name, "arguments": item.arguments})
            items.append({"type": "function_call_output", "call_id": item.id, "output": mcp_answer(item)})
            continue
        if isinstance(item, (McpListTools, McpApprovalRequest, McpApprovalResponse)):
            continue  # loopway's own business: the tools go as tools, approvals were settled here
        raw = dict(to_builtins(item))
        raw.pop("id", None)  # loopway's ids mean nothing upstream, and store=false cannot resolve them
        raw.pop("encrypted_content", None)  # sealed by loopway for its client: the reasoning goes as text
        if raw.get("type") in ("function_call", "function_call_output", "message"):
            raw.pop("status", None)
        items.append(raw)
    body: dict[str, Any] = {
        "model": upstream_model,
        "input": items,
        "store": store or previous is not None,
        "stream": True,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "parallel_tool_calls": request.parallel_tool_calls,
    }
    if previous is not None:
        body["previous_response_id"] = previous
    if request.instructions:
        body["instructions"] = request.instructions
    if request.tools.functions:
        body["tools"] = [
            {**t.echo(), "name": names.flat(t.namespace, t.name)} if t.mcp else t.echo() for t in request.tools.functions
        ]
        body["tool_choice"] = request.tool_choice.echo
    if request.json_schema is not None:
        schema = request.json_schema
        body["text"] = {
            "format": {"type": "json_schema", "name": schema.name, "schema": schema.schema, "strict": bool(schema.strict)}
        }
    if request.max_output_tokens is not None:
        body["max_output_tokens"] = request.max_output_tokens
    return body


def finish_of(response: dict[str, Any], calls: bool) -> Finish:
    usage = response.get("usage") or {}
    reason = "tool_calls" if calls else "stop"
    if response.get("status") == "incomplete":
        why = (response.get("incomplete_details") or {}).get("reason")
        reason = "content_filter" if why == "content_filter" else "length"
    usage = usage if isinstance(usage, dict) else {}
    input_details = _dict(usage.get("input_tokens_details"))
    output_details = _dict(usage.get("output_tokens_details"))
    input_tokens = token_count(usage.get("input_tokens"), _zero)
    return Finish(
        reason=reason,  # type: ignore[arg-type]
        input_tokens=input_tokens,
        cached_tokens=min(input_tokens, token_count(input_details.get("cached_tokens"), _zero)),
        output_tokens=token_count(usage.get("output_tokens"), _zero),
        reasoning_tokens=token_count(output_details.get("reasoning_tokens"), _zero),
    )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _zero() -> int:
    return 0
