"""Large requests leave the event loop; small ones stay on it."""

from __future__ import annotations

import threading

from loopway.core.ops import offload
from loopway.protocol.request import create_from
from loopway.tokens.render import prerender

BODY = {"model": "loopway-sim", "input": "Say hello", "store": False}


async def test_small_work_runs_on_the_loop_and_large_work_in_a_thread():
    loop_thread = threading.get_ident()
    assert await offload.call(False, threading.get_ident) == loop_thread
    assert await offload.call(True, threading.get_ident) != loop_thread


async def test_a_large_intake_is_parsed_and_rendered_ahead_in_a_thread():
    threads: list[int] = []

    def parse():
        threads.append(threading.get_ident())
        return create_from(BODY, websocket=True)

    small = await offload.intake(False, parse)
    assert small.renderer is None and threads == [threading.get_ident()]
    large = await offload.intake(True, parse)
    assert threads[1] != threading.get_ident()
    expected = prerender(large.request.instructions, large.request.tools, large.request.input)
    assert large.renderer is not None
    assert large.renderer.items(large.request.input) == expected.items(large.request.input)
