"""Large requests are parsed and rendered in a worker thread, so one client's megabytes never stall the rest.

Decoding, validating and tokenizing are pure: they touch no connection state, so a worker thread can do
them while the event loop goes on serving others (the interpreter switches threads every few
milliseconds). What they produce (a validated request and its tokens, ``tokens.render.prerender``) is
then put together on the loop, where the connection caches and their shared buffers live. Small
requests, the common case of an agent loop's continuation, stay on the loop: a thread hop would cost
more than the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import msgspec

from loopway.protocol.items import Item
from loopway.protocol.request import CreateRequest
from loopway.tokens.render import Renderer, prerender

T = TypeVar("T")

LARGE_CONTEXT_BYTES = 256 << 10  # stored JSON of a context worth decoding and rendering in a worker thread


class Intake(msgspec.Struct):
    """A validated request, with its tokens when they were rendered ahead."""

    request: CreateRequest
    renderer: Renderer | None = None


async def call(large: bool, work: Callable[[], T]) -> T:
    """``work()``, in a worker thread when the input is large."""
    return await asyncio.to_thread(work) if large else work()


async def intake(large: bool, parse: Callable[[], CreateRequest]) -> Intake:
    """Parse a create request; when it is large, parse and render it in a worker thread."""
    if not large:
        return Intake(parse())
    return await asyncio.to_thread(_parsed_and_rendered, parse)


async def render_ahead(request: CreateRequest, items: list[Item]) -> Renderer:
    """A stored context (and the request's input) rendered in a worker thread: the loop then only
    looks its tokens up. For contexts that come raw from the store and are large, so one client's
    long conversation never stalls the others' turns."""
    return await asyncio.to_thread(prerender, request.instructions, request.tools, [*items, *request.input])


def _parsed_and_rendered(parse: Callable[[], CreateRequest]) -> Intake:
    request = parse()
    return Intake(request, prerender(request.instructions, request.tools, request.input))
