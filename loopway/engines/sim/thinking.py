"""What the simulated model thinks before it answers, when it is a reasoning model.

A request reasons when it sets ``reasoning.effort`` (anything but ``none``), or when its model is
one of ``--sim-reasoning-models`` (effort ``medium`` then). The reasoning is deterministic and about
the turn at hand (the request, and what the plan will do about it), as long as the effort asks
(``EFFORT_TOKENS``), and streamed at the decode rate before the answer, so it costs what a real
model's would. ``reasoning.summary`` adds a summary of one to three sentences.
"""

from __future__ import annotations

import random

import msgspec

from loopway.engines.base import EngineRequest
from loopway.engines.sim.policy import (
    WORDS,
    Plan,
    PlannedCall,
    latest_user_index,
    stable_seed,
)
from loopway.protocol.items import FunctionCallOutput, text_of
from loopway.tokens.render import encode_long, encoding

EFFORT_TOKENS = {"minimal": 16, "low": 48, "medium": 128, "high": 320, "xhigh": 640}
SUMMARY_SENTENCES = {"concise": 1, "auto": 2, "detailed": 3}


class PlannedReasoning(msgspec.Struct):
    text: str
    summary: str = ""


def effort_of(request: EngineRequest, reasoning_models: list[str]) -> str | None:
    """The effort this request reasons with; None when it does not reason."""
    effort = request.reasoning_effort
    if effort is None and request.model in reasoning_models:
        effort = "medium"
    return effort if effort in EFFORT_TOKENS else None


def reasoning_of(request: EngineRequest, plan: Plan, effort: str, seed: int = 0) -> PlannedReasoning:
    items = request.items
    user_at = latest_user_index(items)
    topic = " ".join(text_of(items[user_at].content).split()[:16]) if user_at >= 0 else "the task"  # type: ignore[union-attr]
    seen = sum(isinstance(i, FunctionCallOutput) for i in items[user_at + 1 :])
    steps = [f"The user asks: \u201c{topic}\u201d."]
    calls = [p for p in plan if isinstance(p, PlannedCall)]
    if calls:
        steps += [f"I should call {c.name} with {c.arguments[:120]}." for c in calls]
    elif seen:
        steps.append(f"I have {seen} tool result{'s' if seen != 1 else ''} to go on, so I can answer now.")
    else:
        steps.append("No tool is needed here; I can answer directly.")
    text = _padded(" ".join(steps), EFFORT_TOKENS[effort], random.Random(stable_seed(seed, topic, len(items))))
    sentences = SUMMARY_SENTENCES.get(request.reasoning_summary or "", 0)
    return PlannedReasoning(text=text, summary=" ".join(steps[:sentences]) if sentences else "")


def _padded(text: str, tokens: int, rng: random.Random) -> str:
    """``text`` made ``tokens`` long: cut, or carried on with considered-sounding filler."""
    while len(encode_long(text)) < tokens:
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 12))]
        text += " " + " ".join(words).capitalize() + "."
    return encoding().decode(encode_long(text)[:tokens])
