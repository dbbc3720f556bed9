"""The ``sim`` engine: a policy decides what to say, the cost model decides how long it takes."""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import AsyncIterator, Callable

import msgspec

from loopway.engines.base import (
    Delta,
    EngineRequest,
    Finish,
    ModelInfo,
    ReasoningDelta,
    ReplicaStatus,
    TextDelta,
    ToolCallDelta,
)
from loopway.engines.sim.cost import Capacity, CostModel, PrefixCache
from loopway.engines.sim.policy import DefaultPolicy, Plan, PlannedCall
from loopway.engines.sim.schema_instance import Budget
from loopway.engines.sim.thinking import PlannedReasoning, effort_of, reasoning_of
from loopway.engines.sim.trace import TracePolicy, load_trace
from loopway.tokens.render import encode_long, encoding

# libuv (uvloop) keeps its clock and timers in whole milliseconds: a shorter sleep fires at once with
# the clock unchanged, so a pacer that sleeps "until the next token" spun ~300 times per token there.
TIMER_RESOLUTION_S = 0.001


class SimSettings(msgspec.Struct, kw_only=True):
    models: list[str] = msgspec.field(default_factory=lambda: ["loopway-sim"])
    context_window: int = 200_000
    seed: int = 0
    base_latency_ms: float = 20.0
    prefill_tokens_per_s: float = 20_000.0
    decode_tokens_per_s: float = 1_000.0
    max_output_tokens: int = 16_384  # the model's maximum output: what one response may say at most
    reasoning_models: list[str] = msgspec.field(default_factory=list)  # reason by default (effort medium)
    trace: str | None = None
    # One GPU's limits (docs/upstream.md says where each default comes from); 0 / off: unlimited.
    kv_cache_tokens: int = 393_216  # prefix cache: Llama-3.1-8B's KV on an 80 GB GPU under vLLM
    shared_prefill: bool = True  # concurrent requests queue for the one prefill throughput
    decode_slowdown: float = 0.03  # each other sequence in the batch slows a decode step by this


def token_pieces(ids: list[int]) -> list[str]:
    """The text each token adds, decoding UTF-8 incrementally (a split character lands whole)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    to_bytes = encoding().decode_single_token_bytes
    pieces = [decoder.decode(to_bytes(token)) for token in ids]
    if pieces:
        pieces[-1] += decoder.decode(b"", final=True)
    return pieces


class SimEngine:
    def __init__(self, settings: SimSettings | None = None) -> None:
        self.settings = settings = settings or SimSettings()
        self.cost = CostModel.of(settings)
        self.capacity = Capacity.of(settings)
        self.cache = PrefixCache(settings.kv_cache_tokens)
        fallback = DefaultPolicy(settings.seed)
        self.policy = TracePolicy(load_trace(settings.trace), fallback) if settings.trace else fallback

    def models(self) -> list[ModelInfo]:
        return [
            ModelInfo(id=name, context_window=self.settings.context_window, created=1_767_225_600)
            for name in self.settings.models
        ]

    def replicas(self) -> list[ReplicaStatus]:
        return []

    def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def open(self, request: EngineRequest) -> AsyncIterator[Delta]:
        return self._generate(request)  # the simulator accepts everything it is given

    async def _generate(self, request: EngineRequest) -> AsyncIterator[Delta]:
        cap = self.settings.max_output_tokens  # the simulated model's own maximum output
        limit = min(request.max_output_tokens or cap, cap)
        budget = Budget.for_tokens(limit)
        plan = self.policy.plan(request, budget)
        effort = effort_of(request, self.settings.reasoning_models)
        thought = reasoning_of(request, plan, effort, self.settings.seed) if effort else None
        hashes = request.tokens.block_hashes()
        cached = min(self.cache.cached_tokens(hashes), len(request.tokens))
        self.cache.insert(hashes)
        loop = asyncio.get_running_loop()
        now = loop.time()
        prefilled = self.capacity.prefill_done(len(request.tokens) - cached, now)
        await asyncio.sleep(self.cost.base_latency_s + prefilled - now)

        pace = _Pace(loop, self.capacity.decode_rate, limit)
        reasoning_tokens = 0
        self.capacity.decoding += 1
        try:
            for segment in _segments(thought, plan):
                async for delta in pace.stream(segment):
                    yield delta
                if segment.reasoning:
                    reasoning_tokens = pace.produced
                if pace.truncated:
                    break
        finally:
            self.capacity.decoding -= 1
        truncated = pace.truncated or budget.exhausted
        reason = "length" if truncated else ("tool_calls" if any(isinstance(p, PlannedCall) for p in plan) else "stop")
        yield Finish(
            reason=reason,
            input_tokens=len(request.tokens),
            cached_tokens=cached,
            output_tokens=pace.produced,
            reasoning_tokens=reasoning_tokens,
        )


class _Segment(msgspec.Struct):
    """One stream of tokens: reasoning text or summary, an answer, or one call's arguments."""

    text: str
    reasoning: bool = False
    summary: bool = False
    call: PlannedCall | None = None
    index: int = 0


def _segments(thought: PlannedReasoning | None, plan: Plan) -> list[_Segment]:
    segments = []
    if thought is not None:
        segments.append(_Segment(thought.text, reasoning=True))
        if thought.summary:
            segments.append(_Segment(thought.summary, reasoning=True, summary=True))
    for index, planned in enumerate(plan):
        if isinstance(planned, PlannedCall):
            segments.append(_Segment(planned.arguments, call=planned, index=index))
        else:
            segments.append(_Segment(planned.text))
    return segments


class _Pace:
    """Releases tokens at the decode rate, as many as are due at each wake-up, up to the output limit.

    It sleeps until the next token is due, never less than the timer resolution: a late wake-up
    (a loaded loop) releases every token due by then in one delta, which is how deltas coalesce at
    the source under load while an idle server still sends each token as it is decoded. The rate
    is read at every wake-up (it falls as the engine's batch grows) and progress is its integral.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, rate: Callable[[], float], limit: int) -> None:
        self.loop, self.rate, self.limit = loop, rate, limit
        self.last = loop.time()
        self.progress = 0.0  # tokens decoded by now, fractional
        self.produced = 0
        self.truncated = False

    def _due(self) -> int:
        now = self.loop.time()
        self.progress += (now - self.last) * self.rate()
        self.last = now
        return int(self.progress) - self.produced

    async def stream(self, segment: _Segment) -> AsyncIterator[Delta]:
        ids = encode_long(segment.text)
        if self.produced + len(ids) > self.limit:
            ids, self.truncated = ids[: self.limit - self.produced], True
        pieces = token_pieces(ids)
        first, i = True, 0
        while i < len(pieces) or (first and segment.call is not None):
            due = self._due()
            if due <= 0 and i < len(pieces):
                wait = (self.produced + 1 - self.progress) / self.rate()
                await asyncio.sleep(max(wait, TIMER_RESOLUTION_S))
                continue
            step = max(0, min(due, len(pieces) - i))
            text = "".join(pieces[i : i + step])
            i += step
            self.produced += step
            delta = _delta(segment, text, first)
            if delta is not None:
                yield delta
            first = False


def _delta(segment: _Segment, text: str, first: bool) -> Delta | None:
    call = segment.call
    if call is not None:
        return ToolCallDelta(
            index=segment.index,
            arguments=text,
            call_id=call.call_id if first else None,
            name=call.name if first else None,
            namespace=call.namespace if first else None,
        )
    if not text:
        return None
    return ReasoningDelta(text, summary=segment.summary) if segment.reasoning else TextDelta(text)
