"""The context the engine sees, built from what a turn continues and what it sends.

``build`` starts from the parent (rendered, from a connection cache: only the new items are
rendered; raw, from the store: all of it) or afresh (no parent, or a ``compaction`` item in the
input); ``fit`` keeps it within the model's window as ``truncation`` says; ``compact`` replaces what
came before the turn's input with a summary and a sealed ``compaction`` item. The checks a context
must pass (references that resolve, tool outputs that answer a call) are here too, so every rule about
what the engine may see is in one file.
"""

from __future__ import annotations

import asyncio

from loopway.core.context import compaction
from loopway.core.context.conversation import Conversation
from loopway.core.context.parent import Parent
from loopway.core.context.reasoning import ReasoningVault
from loopway.core.context.sealing import Sealer
from loopway.protocol.errors import invalid_request
from loopway.protocol.items import (
    Compaction,
    FunctionCallOutput,
    Item,
    ItemReference,
    McpCall,
    Reasoning,
    item_id,
)
from loopway.protocol.request import CreateRequest
from loopway.protocol.tools import EMPTY_TOOLS
from loopway.tokens.render import Renderer, prerender

LARGE_TOOL_OUTPUT = 64 << 10  # characters of MCP answers in one round worth a worker thread to tokenize


class ContextBuilder:
    """Builds a turn's context; holds the keys that open what clients carry (sealed compactions,
    encrypted reasoning)."""

    def __init__(self, sealer: Sealer, vault: ReasoningVault) -> None:
        self.sealer = sealer
        self.vault = vault

    def restore_reasoning(self, items: list[Item], tenant: str) -> None:
        """Reasoning items that come back with ``encrypted_content`` get their text back for the engine."""
        for index, item in enumerate(items):
            if isinstance(item, Reasoning) and item.encrypted_content:
                self.vault.restore(item, tenant, f"input[{index}].encrypted_content")

    def build(
        self, request: CreateRequest, parent: Parent | None, new_items: list[Item], renderer: Renderer
    ) -> tuple[Conversation, int, int]:
        """The conversation the engine will see, and how many of its tokens and items came before."""
        start = compaction.last_compaction(new_items)
        if start >= 0 or parent is None:  # a compaction in the input starts the context afresh
            items = compaction.effective_context(self.sealer, new_items)
            return Conversation.start(renderer, request.instructions, request.tools, items), 0, 0
        if parent.conversation is not None:
            base = parent.conversation.rebase(renderer, request.instructions, request.tools)
            known = len(base.tokens) if base is parent.conversation else 0
            return base.append(renderer, new_items), known, len(base.items)
        previous = parent.items or []
        items = compaction.effective_context(self.sealer, [*previous, *new_items])
        known_items = len(previous) if compaction.last_compaction(previous) < 0 else 0
        return Conversation.start(renderer, request.instructions, request.tools, items), 0, known_items

    def compact(
        self, request: CreateRequest, conversation: Conversation, new_items: list[Item], renderer: Renderer
    ) -> tuple[Conversation, Compaction]:
        """Compact what came before this turn's input; the sealed item carries the whole new context."""
        items = conversation.items.to_list()
        prior = items[: max(0, len(items) - len(new_items))]
        context = [*compaction.compact(prior), *items[len(prior) :]]
        sealed = compaction.seal_items(self.sealer, context)
        return Conversation.start(renderer, request.instructions, request.tools, context), sealed


def fit(request: CreateRequest, conversation: Conversation, window: int) -> Conversation:
    """The context within the window: refused (``truncation: disabled``), or its oldest items dropped.

    One pass over the items' token counts, newest first; nothing is rendered again.
    """
    if len(conversation.tokens) <= window:
        return conversation
    if request.truncation == "disabled":
        raise invalid_request(
            f"Your input exceeds the context window of this model ({len(conversation.tokens)} tokens > "
            f"{window}). Please adjust your input and try again, or set 'truncation' to 'auto'.",
            param="input",
            code="context_length_exceeded",
        )
    count = len(conversation.items)
    budget, start = window - conversation.header_length, count
    while start > 0 and conversation.item_tokens(start - 1) <= budget:
        start -= 1
        budget -= conversation.item_tokens(start)
    if start == count:
        raise invalid_request(
            "The latest input item alone exceeds the context window of this model.",
            param="input",
            code="context_length_exceeded",
        )
    return conversation.suffix(start)


def unresolved_references(items: list[Item], parent: Parent | None) -> list[str]:
    """Ids that ``item_reference`` items name and that neither the context nor the input holds."""
    wanted = [i.id for i in items if isinstance(i, ItemReference)]
    if not wanted:
        return []
    known = {item_id(i) for i in (parent.context() if parent else [])}
    known.update(item_id(i) for i in items if not isinstance(i, ItemReference))
    return [w for w in dict.fromkeys(wanted) if w not in known]


def resolve_references(items: list[Item], parent: Parent | None, stored: dict[str, Item] | None = None) -> list[Item]:
    """The input with every ``item_reference`` replaced by the item it names (a 400 if none)."""
    if not any(isinstance(i, ItemReference) for i in items):
        return items
    known = dict(stored or {})
    known.update({item_id(i): i for i in (parent.context() if parent else [])})
    known.update({item_id(i): i for i in items if not isinstance(i, ItemReference)})
    resolved = []
    for index, item in enumerate(items):
        if isinstance(item, ItemReference):
            target = known.get(item.id)
            if target is None:
                raise invalid_request(
                    f"Item with id '{item.id}' not found.", param=f"input[{index}].id", code="item_not_found"
                )
            item = target
        resolved.append(item)
    return resolved


def check_tool_outputs(conversation: Conversation, new_items: list[Item]) -> None:
    """Every function_call_output answers a function_call of the context (as OpenAI requires)."""
    start = compaction.last_compaction(new_items) + 1  # what precedes a compaction is not in the context
    for index, item in enumerate(new_items[start:], start):
        if isinstance(item, FunctionCallOutput) and not conversation.has_call(item.call_id):
            raise invalid_request(
                f"No tool call found for function call output with call_id {item.call_id}.",
                param=f"input[{index}]",
                code="tool_call_not_found",
            )


async def extended(context: Conversation, output: list[Item], renderer: Renderer) -> Conversation:
    """A next engine round's context: this round's and the output it added. MCP answers run to a
    megabyte each: large ones are tokenized in a worker thread, not on the event loop."""
    if sum(len(i.output or "") for i in output if isinstance(i, McpCall)) > LARGE_TOOL_OUTPUT:
        renderer = await asyncio.to_thread(prerender, None, EMPTY_TOOLS, output)
    return context.append(renderer, output)
