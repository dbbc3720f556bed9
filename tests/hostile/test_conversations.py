"""A tenant's large conversation: what reading and rendering it costs everyone else.

Forty megabytes of items on one conversation (two 20 MB posts), then small turns on it and an
``input_tokens`` count, over HTTP (no connection cache: every turn reads the conversation from
the store and renders it). Under the watch the loop stays free: decoding and rendering a stored
context that large happens in a worker thread.
"""

from __future__ import annotations

import httpx

from tests.conftest import MODEL, Server
from tests.hostile.conftest import Watch

TWENTY_MB = 20_000_000


def test_turns_on_a_large_conversation_never_stall_the_loop(target: Server):
    with httpx.Client(base_url=target.url, timeout=60) as http:
        conversation = http.post("/conversations", json={}).json()["id"]
        for n in range(2):
            text = f"part {n}: " + "lorem ipsum dolor sit amet " * (TWENTY_MB // 27)
            item = {"type": "message", "role": "user", "content": text}
            assert http.post(f"/conversations/{conversation}/items", json={"items": [item]}).status_code == 200
        with Watch(target, rss_bound_mib=1500):
            for _ in range(2):
                body = {"model": MODEL, "input": "ok?", "conversation": conversation, "max_output_tokens": 16}
                answer = http.post("/responses", json=body)
                assert answer.status_code in (200, 400), answer.text  # 400: past the window, said as such
                counted = http.post("/responses/input_tokens", json={"model": MODEL, "conversation": conversation})
                assert counted.status_code == 200 and counted.json()["input_tokens"] > 1_000_000, counted.text


def test_a_long_stored_chain_that_misses_the_http_cache_never_stalls_the_loop(tmp_path):
    fast_sim = ("--sim-decode-tps", "20000", "--sim-base-latency-ms", "1", "--sim-prefill-tps", "1e12")
    server = Server(tmp_path, *fast_sim, "--http-cache-mb", "0")  # SQLite; every continuation reads the store
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            page = "lorem ipsum dolor sit amet " * (25_000_000 // 27 // 400)
            fits = {"model": MODEL, "store": True, "max_output_tokens": 16, "truncation": "auto"}  # past the window
            previous = None
            for part in range(2):  # a chain of two 25 MB responses
                pages = [{"type": "message", "role": "user", "content": f"{part}.{n}: {page}"} for n in range(400)]
                answer = http.post("/responses", json={**fits, "input": pages, "previous_response_id": previous})
                assert answer.status_code == 200, answer.text
                previous = answer.json()["id"]
            with Watch(server, rss_bound_mib=1500):
                for _ in range(3):
                    body = {**fits, "input": "ok?", "previous_response_id": previous}
                    answer = http.post("/responses", json=body)
                    assert answer.status_code == 200, answer.text
    finally:
        server.stop()
