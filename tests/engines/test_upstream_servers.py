"""loopway in front of real upstream servers, driven by the official SDK over HTTP and WebSocket.

- ``openai-chat`` in front of llama-cpp-python's OpenAI-compatible server running a tiny random-weight
  GGUF model (written by ``tiny_gguf.py``): it installs from PyPI and starts in seconds on 2 cores,
  and its grammar-constrained function calling emits real streamed tool-call deltas.
- ``openai-responses`` in front of another loopway process (sim engine): a real Responses server.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import READ_FILE, Server, free_port, metric_samples, terminate
from tests.engines.tiny_gguf import write_tiny_model
from tests.openapi import validate_event


def llama_python() -> str:
    configured = os.environ.get("LOOPWAY_LLAMA_PYTHON")
    if configured:
        return configured
    if subprocess.run([sys.executable, "-c", "import llama_cpp.server"], capture_output=True).returncode == 0:
        return sys.executable
    if os.environ.get("CI"):
        pytest.fail("llama-cpp-python[server] is not installed: .ci/run installs it (LOOPWAY_LLAMA_PYTHON)")
    pytest.skip("llama-cpp-python[server] is not installed (set LOOPWAY_LLAMA_PYTHON to its python)")


@contextlib.contextmanager
def llama_server(tmp: Path) -> Iterator[str]:
    """A llama-cpp-python server of the tiny model; yields its /v1 URL."""
    python = llama_python()
    tmp.mkdir(parents=True, exist_ok=True)
    model = tmp / "tiny.gguf"
    if not model.exists():
        write_tiny_model(model)
    port = free_port()
    log = (tmp / f"llama-{port}.log").open("wb")
    process = subprocess.Popen(
        [
            python,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--port",
            str(port),
            "--chat_format",
            "chatml-function-calling",
            "--n_ctx",
            "4096",
            "--model_alias",
            "tiny",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                httpx.get(f"{url}/models", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp / f"llama-{port}.log").read_text()[-3000:]) from None
                time.sleep(0.2)
        yield url
    finally:
        terminate(process)
        log.close()


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with llama_server(tmp_path_factory.mktemp("llama")) as url:
        yield url


@pytest.fixture(scope="module")
def chat_front(llama: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(
        tmp_path_factory.mktemp("front"),
        "--engine",
        "openai-chat",
        "--upstream",
        llama,
        "--upstream-model",
        "tiny-public=tiny,missing=not-a-model",
        "--store",
        "memory",
    )
    yield server
    server.stop()


TERMINAL = ("response.completed", "response.incomplete", "response.failed", "error")


def terminal(conn: object) -> object:
    """The next terminal event (or error) on an SDK WebSocket connection."""
    return next(e for e in conn if e.type in TERMINAL)  # type: ignore[attr-defined]


def sdk(server: Server) -> OpenAI:
    return OpenAI(base_url=server.url, api_key="sk-test", max_retries=0)


def test_chat_upstream_text_over_http(chat_front: Server):
    response = sdk(chat_front).responses.create(model="tiny-public", input="hello", max_output_tokens=16)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].type == "message" and response.usage.output_tokens > 0


def test_chat_upstream_streams_valid_events(chat_front: Server):
    with sdk(chat_front).responses.stream(model="tiny-public", input="hello", max_output_tokens=16) as stream:
        types = [event.type for event in stream]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.output_text.delta" in types and types[-1] == "response.incomplete"
    r = httpx.post(
        f"{chat_front.url}/responses",
        json={"model": "tiny-public", "input": "hi", "stream": True, "max_output_tokens": 16},
        timeout=60,
    )
    for block in r.text.strip().split("\n\n"):
        validate_event(json.loads(block.split("\ndata: ", 1)[1]))


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_chat_upstream_function_calling_loop(chat_front: Server, transport: str):
    client = sdk(chat_front)
    forced = {"type": "function", "name": "read_file"}
    if transport == "http":
        first = client.responses.create(
            model="tiny-public", input="read src/a.py", tools=[READ_FILE], tool_choice=forced, max_output_tokens=64
        )
        call = first.output[-1]
        assert call.type == "function_call" and call.name == "read_file" and call.call_id.startswith("call_")
        second = client.responses.create(
            model="tiny-public",
            previous_response_id=first.id,
            tools=[READ_FILE],
            tool_choice="none",
            max_output_tokens=16,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "print('hi')"}],
        )
        assert second.status in ("completed", "incomplete")
        assert not [o for o in second.output if o.type == "function_call"]  # tool_choice none
        return
    with client.responses.connect() as conn:
        conn.response.create(
            model="tiny-public",
            input="read src/a.py",
            tools=[READ_FILE],
            tool_choice=forced,
            max_output_tokens=64,
            store=False,
        )
        first = terminal(conn).response
        call = first.output[-1]
        conn.response.create(
            model="tiny-public",
            previous_response_id=first.id,
            tools=[READ_FILE],
            tool_choice="none",
            max_output_tokens=16,
            store=False,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "ok"}],
        )
        second = terminal(conn)
    assert second.type in ("response.completed", "response.incomplete")
    assert not [o for o in second.response.output if o.type == "function_call"]


def test_chat_upstream_context_overflow_is_a_client_error_or_a_failed_response(chat_front: Server):
    """llama-cpp-python refuses an over-long prompt with a 400, or, when its check comes after it
    has answered 200, with an empty stream: loopway turns the first into the matching client error
    and the second into a failed response. Either way the connection stays usable."""
    client = sdk(chat_front)
    long_input = "word " * 5000  # 25,000 byte tokens into a 4,096-token upstream context
    try:
        response = client.responses.create(model="tiny-public", input=long_input, max_output_tokens=16)
        assert response.status == "failed" and response.error.code == "server_error"
    except openai.BadRequestError as exc:
        assert "upstream refused" in exc.message and exc.code == "context_length_exceeded"
    with client.responses.connect() as conn:
        conn.response.create(model="tiny-public", input=long_input, max_output_tokens=16, store=False)
        outcome = terminal(conn)
        if outcome.type == "error":
            assert outcome.status == 400 and outcome.error.code == "context_length_exceeded"
        else:
            assert outcome.type == "response.failed"
        conn.response.create(model="tiny-public", input="hi", max_output_tokens=16, store=False)
        assert terminal(conn).type in ("response.completed", "response.incomplete")


def test_unreachable_upstream_fails_the_response(tmp_path: Path):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    server = Server(
        tmp_path,
        "--engine",
        "openai-chat",
        "--upstream",
        dead,
        "--upstream-model",
        "m",
        "--upstream-retries",
        "1",
        "--store",
        "memory",
    )
    try:
        response = sdk(server).responses.create(model="m", input="hi")
        assert response.status == "failed" and response.error.code == "server_error"
        assert "unreachable" in response.error.message
    finally:
        server.stop()


@pytest.fixture(scope="module")
def responses_front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    upstream = Server(tmp_path_factory.mktemp("upstream"), "--store", "memory")
    front = Server(
        tmp_path_factory.mktemp("rfront"),
        "--engine",
        "openai-responses",
        "--upstream",
        upstream.url,
        "--upstream-model",
        "front=loopway-sim,broken=nope",
        "--store",
        "memory",
    )
    yield front, upstream
    front.stop()
    upstream.stop()


def test_responses_upstream_loop_over_websocket_with_store_false(responses_front: tuple[Server, Server]):
    front, _ = responses_front
    client = sdk(front)
    read = []
    with client.responses.connect() as conn:
        conn.response.create(model="front", input="read src/a.py and src/b.py", tools=[READ_FILE], store=False)
        while True:
            event = terminal(conn)
            assert event.type == "response.completed", event
            calls = [o for o in event.response.output if o.type == "function_call"]
            if not calls:
                break
            read.append(json.loads(calls[0].arguments)["path"])
            conn.response.create(
                model="front",
                previous_response_id=event.response.id,
                tools=[READ_FILE],
                store=False,
                input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": f"contents of {read[-1]}"}],
            )
    assert read == ["src/a.py", "src/b.py"]
    assert "contents of src/b.py" in event.response.output_text  # the upstream saw the full context


def test_responses_upstream_errors_map(responses_front: tuple[Server, Server]):
    front, _ = responses_front
    with pytest.raises(openai.BadRequestError) as info:
        sdk(front).responses.create(model="broken", input="hi")
    assert info.value.code == "model_not_found"


def test_upstream_flags_are_checked_at_start(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "loopway", "serve", "--engine", "openai-chat", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "--upstream" in done.stderr


def test_responses_upstream_text_and_streaming_over_http(responses_front: tuple[Server, Server]):
    front, _ = responses_front
    client = sdk(front)
    response = client.responses.create(model="front", input="Say something about loops", max_output_tokens=40)
    assert response.status == "incomplete" and response.output[0].type == "message" and response.output_text
    with client.responses.stream(model="front", input="Please read src/x.py", tools=[READ_FILE]) as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in types and types[-1] == "response.completed"
    assert json.loads(final.output[0].arguments) == {"path": "src/x.py"}


def test_responses_upstream_chaining_sends_only_new_items(tmp_path: Path):
    import asyncio

    from loopway.bench.server import InProcessServer
    from loopway.settings import Settings

    with InProcessServer(Settings(port=0, store="memory", data_dir=str(tmp_path / "up"))) as upstream:
        front = Server(
            tmp_path,
            "--engine",
            "openai-responses",
            "--upstream",
            upstream.url,
            "--upstream-model",
            "front=loopway-sim",
            "--upstream-chain",
            "on",
            "--store",
            "memory",
        )
        try:
            client = sdk(front)
            first = client.responses.create(model="front", input="read src/a.py and src/b.py", tools=[READ_FILE])
            call = first.output[0]
            second = client.responses.create(
                model="front",
                previous_response_id=first.id,
                tools=[READ_FILE],
                input=[{"type": "function_call_output", "call_id": call.call_id, "output": "A"}],
            )
            assert json.loads(second.output[0].arguments) == {"path": "src/b.py"}  # the upstream had the context
        finally:
            front.stop()

        async def upstream_records() -> list:
            log = upstream.service.log
            return [await log.get(i) for i in upstream.service.pipeline.stage_log.ids()]

        records = asyncio.run_coroutine_threadsafe(upstream_records(), upstream.loop).result(timeout=10)
    chained = [r for r in records if r.previous_response_id is not None]
    assert len(records) == 2 and len(chained) == 1
    assert [i["type"] for i in json.loads(chained[0].input_items)] == ["function_call_output"]


def test_a_client_that_goes_away_cancels_the_upstream_request(tmp_path: Path):
    import asyncio

    from loopway.bench.server import InProcessServer
    from loopway.engines.sim import SimSettings
    from loopway.settings import Settings

    async def generating() -> int:
        return sum(upstream.service.observatory.in_flight.values())

    settings = Settings(port=0, store="memory", data_dir=str(tmp_path / "up"), sim=SimSettings(decode_tokens_per_s=20))
    with InProcessServer(settings) as upstream:
        # turns running on the upstream, not asyncio tasks: a connection's own tasks coming and
        # going made a count of tasks flaky
        count = lambda: asyncio.run_coroutine_threadsafe(generating(), upstream.loop).result(timeout=10)  # noqa: E731
        idle = count()
        front = Server(
            tmp_path,
            "--engine",
            "openai-responses",
            "--upstream",
            upstream.url,
            "--upstream-model",
            "front=loopway-sim",
            "--store",
            "memory",
        )
        try:
            with httpx.stream(
                "POST",
                f"{front.url}/responses",
                timeout=30,
                json={"model": "front", "input": "write a long story", "stream": True},
            ) as response:
                for line in response.iter_lines():
                    if "response.output_text.delta" in line:
                        break  # the upstream is generating (slowly); now walk away
            assert count() > idle
            deadline = time.monotonic() + 2  # the story alone would take over 3 s at 20 tokens/s
            while count() > idle and time.monotonic() < deadline:
                time.sleep(0.05)
            assert count() == idle  # the upstream's generation was cancelled, not left to run out
        finally:
            front.stop()


def test_a_fleet_of_two_llama_servers_keeps_each_conversation_on_one(llama: str, tmp_path: Path):
    """The CI's real upstream, twice: a WebSocket session and an HTTP chain each stay on one server."""
    with llama_server(tmp_path / "second") as second:
        front = Server(
            tmp_path,
            "--engine",
            "openai-chat",
            "--upstream",
            f"{llama},{second}",
            "--upstream-model",
            "tiny",
            "--upstream-context-window",
            "4096",
        )
        client = sdk(front)

        def served() -> dict[str, float]:
            samples = metric_samples(front)
            return {
                url: samples.get(("loopway_upstream_requests_total", (("outcome", "ok"), ("replica", url))), 0.0)
                for url in (llama, second)
            }

        try:
            with client.responses.connect() as conn:
                previous = None
                for i in range(4):
                    conn.response.create(
                        model="tiny", input=f"say {i}", previous_response_id=previous, max_output_tokens=16, store=False
                    )
                    event = terminal(conn)
                    assert event.type in ("response.completed", "response.incomplete"), event
                    previous = event.response.id
            after_ws = served()
            assert sorted(after_ws.values()) == [0.0, 4.0]
            previous = None
            for i in range(3):
                response = sdk(front).responses.create(
                    model="tiny", input=f"count {i}", previous_response_id=previous, max_output_tokens=16
                )
                previous = response.id
            chain = {url: n - after_ws[url] for url, n in served().items()}
            assert sorted(chain.values()) == [0.0, 3.0]
        finally:
            front.stop()
