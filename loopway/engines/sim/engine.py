"""The ``sim`` engine: a policy decides what to say, the cost model decides how long it takes."""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import AsyncIterator

import msgspec

from loopway.engines.base import Delta, EngineRequest, Finish, ModelInfo, TextDelta, ToolCallDelta
from loopway.engines.sim.cost import CostModel, PrefixCache
from loopway.engines.sim.policy import DefaultPolicy, PlannedCall
from loopway.engines.sim.schema_instance import Budget
from loopway.engines.sim.trace import TracePolicy, load_trace
from loopway.tokens.render import encode_long, encoding
from loopway.tokens.sequence import BLOCK_SIZE


class SimSettings(msgspec.Struct, kw_only=True):
    models: list[str] = msgspec.field(default_factory=lambda: ["loopway-sim"])
    context_window: int = 200_000
    seed: int = 0
    base_latency_ms: float = 20.0
    prefill_tokens_per_s: float = 20_000.0
    decode_tokens_per_s: float = 1_000.0
    max_output_tokens: int = 16_384  # the model's maximum output: what one response may say at most
    trace: str | None = None


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
        self.cost = CostModel(settings.base_latency_ms / 1000, settings.prefill_tokens_per_s, settings.decode_tokens_per_s)
        self.cache = PrefixCache()
        fallback = DefaultPolicy(settings.seed)
        self.policy = TracePolicy(load_trace(settings.trace), fallback) if settings.trace else fallback

    def models(self) -> list[ModelInfo]:
        return [
            ModelInfo(id=name, context_window=self.settings.context_window, created=1_767_225_600)
            for name in self.settings.models
        ]

    async def aclose(self) -> None:
        return None

    async def open(self, request: EngineRequest) -> AsyncIterator[Delta]:
        return self._generate(request)  # the simulator accepts everything it is given

    async def _generate(self, request: EngineRequest) -> AsyncIterator[Delta]:
        cap = self.settings.max_output_tokens  # the simulated model's own maximum output
        limit = min(request.max_output_tokens or cap, cap)
        budget = Budget.for_tokens(limit)
        plan = self.policy.plan(request, budget)
        hashes = request.tokens.block_hashes()
        cached = min(self.cache.cached_tokens(hashes), len(request.tokens))
        self.cache.insert(hashes, start_block=cached // BLOCK_SIZE)
        await asyncio.sleep(self.cost.time_to_first_token(len(request.tokens) - cached))

        loop = asyncio.get_running_loop()
        start, produced, truncated = loop.time(), 0, budget.exhausted
        rate = self.cost.decode_tokens_per_s
        for index, planned in enumerate(plan):
            is_call = isinstance(planned, PlannedCall)
            ids = encode_long(planned.arguments if is_call else planned.text)
            if produced + len(ids) > limit:
                ids, truncated = ids[: limit - produced], True
            pieces = token_pieces(ids)
            first = True
            i = 0
            while i < len(pieces) or (first and is_call):
                due = int((loop.time() - start) * rate) - produced
                if due <= 0 and i < len(pieces):
                    await asyncio.sleep((produced + 1) / rate - (loop.time() - start))
                    continue
                step = max(0, min(due, len(pieces) - i))
                text = "".join(pieces[i : i + step])
                i += step
                produced += step
                if is_call:
                    yield ToolCallDelta(
                        index=index,
                        arguments=text,
                        call_id=planned.call_id if first else None,
                        name=planned.name if first else None,
                        namespace=planned.namespace if first else None,
                    )
                elif text:
                    yield TextDelta(text)
                first = False
            if truncated:
                break
        reason = "length" if truncated else ("tool_calls" if any(isinstance(p, PlannedCall) for p in plan) else "stop")
        yield Finish(reason=reason, input_tokens=len(request.tokens), cached_tokens=cached, output_tokens=produced)
