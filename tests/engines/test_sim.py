"""The sim engine: deterministic policy, honest cost model, exact prefix cache."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import jsonschema
import msgspec
import pytest

from loopway.core.context.conversation import Conversation
from loopway.engines.base import EngineRequest, Finish, ReasoningDelta, TextDelta, ToolCallDelta
from loopway.engines.sim import SimEngine, SimSettings
from loopway.engines.sim.cost import Capacity, CostModel, PrefixCache
from loopway.engines.sim.policy import targets_of
from loopway.engines.sim.trace import TraceError, load_trace
from loopway.protocol.items import FunctionCall, FunctionCallOutput, Message
from loopway.protocol.request import JsonSchemaFormat
from loopway.protocol.tools import EMPTY_TOOLS, ToolChoice, parse_tool_choice, parse_tools
from loopway.tokens.render import Renderer
from loopway.tokens.sequence import TokenSequence

R = Renderer()
TOOLS = parse_tools(
    [
        {
            "type": "function",
            "name": "read_file",
            "description": "Read a file",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
        },
        {
            "type": "function",
            "name": "run_command",
            "description": "Run a shell command",
            "parameters": {
                "type": "object",
                "properties": {"command": {"type": "string"}, "timeout": {"type": "integer", "minimum": 1}},
                "required": ["command", "timeout"],
            },
        },
    ]
)
FAST = SimSettings(base_latency_ms=0, prefill_tokens_per_s=1e12, decode_tokens_per_s=1e9)


def request(items, tools=TOOLS, choice: ToolChoice | None = None, parallel=True, max_out=None, schema=None, **kw):
    conversation = Conversation.start(R, None, tools, items)
    return EngineRequest(
        **kw,
        model="loopway-sim",
        tokens=conversation.tokens,
        known_prefix=0,
        items=items,
        instructions=None,
        tools=tools,
        tool_choice=choice or ToolChoice("auto"),
        parallel_tool_calls=parallel,
        max_output_tokens=max_out,
        json_schema=schema,
        temperature=1,
        top_p=1,
    )


async def collect(engine: SimEngine, req: EngineRequest) -> list:
    return [d async for d in await engine.open(req)]


def calls_of(deltas) -> list[tuple[str, dict]]:
    out: dict[int, list] = {}
    for d in deltas:
        if isinstance(d, ToolCallDelta):
            out.setdefault(d.index, [d.name, ""])[1] += d.arguments
    return [(name, json.loads(args)) for name, args in out.values()]


def text_of(deltas) -> str:
    return "".join(d.text for d in deltas if isinstance(d, TextDelta))


def test_targets_are_paths_and_quoted_strings():
    assert targets_of('read src/app.py then grep "TODO items" in ./lib/x.ts') == ["TODO items", "src/app.py", "./lib/x.ts"]


async def test_calls_best_matching_tool_on_a_named_path():
    deltas = await collect(SimEngine(FAST), request([Message(role="user", content="Please read src/app.py")]))
    assert calls_of(deltas) == [("read_file", {"path": "src/app.py"})]
    assert deltas[-1].reason == "tool_calls"


async def test_arguments_satisfy_the_schema():
    deltas = await collect(SimEngine(FAST), request([Message(role="user", content="run 'pytest -q' now")]))
    ((name, args),) = calls_of(deltas)
    assert name == "run_command" and args == {"command": "pytest -q", "timeout": 1}


async def test_one_target_per_turn_then_the_next():
    items = [
        Message(role="user", content="read src/a.py and src/b.py"),
        FunctionCall(call_id="c1", name="read_file", arguments='{"path":"src/a.py"}'),
        FunctionCallOutput(call_id="c1", output="A"),
    ]
    first = await collect(SimEngine(FAST), request(items[:1]))
    assert calls_of(first) == [("read_file", {"path": "src/a.py"})]
    second = await collect(SimEngine(FAST), request(items))
    assert calls_of(second) == [("read_file", {"path": "src/b.py"})]


async def test_parallel_calls_when_asked_together():
    deltas = await collect(SimEngine(FAST), request([Message(role="user", content="read both src/a.py and src/b.py")]))
    assert [args["path"] for _, args in calls_of(deltas)] == ["src/a.py", "src/b.py"]
    serial = await collect(
        SimEngine(FAST), request([Message(role="user", content="read both src/a.py and src/b.py")], parallel=False)
    )
    assert len(calls_of(serial)) == 1


async def test_answers_in_text_referring_to_tool_output_once_targets_are_done():
    items = [
        Message(role="user", content="read src/a.py"),
        FunctionCall(call_id="c1", name="read_file", arguments='{"path":"src/a.py"}'),
        FunctionCallOutput(call_id="c1", output="def main():\n    pass\n"),
    ]
    deltas = await collect(SimEngine(FAST), request(items))
    text = text_of(deltas)
    assert "read_file" in text and "def main():" in text and deltas[-1].reason == "stop"


async def test_tool_choice_none_and_required_and_named():
    message = [Message(role="user", content="read src/a.py")]
    none = await collect(SimEngine(FAST), request(message, choice=parse_tool_choice("none", TOOLS)))
    assert not calls_of(none)
    required = await collect(
        SimEngine(FAST), request([Message(role="user", content="hello")], choice=parse_tool_choice("required", TOOLS))
    )
    assert len(calls_of(required)) == 1
    named = await collect(
        SimEngine(FAST), request(message, choice=parse_tool_choice({"type": "function", "name": "run_command"}, TOOLS))
    )
    assert calls_of(named)[0][0] == "run_command"


async def test_deterministic_per_seed():
    items = [Message(role="user", content="tell me a story")]
    a = text_of(await collect(SimEngine(FAST), request(items, tools=EMPTY_TOOLS)))
    b = text_of(await collect(SimEngine(FAST), request(items, tools=EMPTY_TOOLS)))
    other = SimSettings(base_latency_ms=0, prefill_tokens_per_s=1e12, decode_tokens_per_s=1e9, seed=7)
    c = text_of(await collect(SimEngine(other), request(items, tools=EMPTY_TOOLS)))
    assert a == b and a != c


async def test_structured_output_validates_against_the_schema():
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 2},
            "age": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}, "minItems": 2},
            "address": {"$ref": "#/$defs/address"},
            "nick": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["name", "age", "tags", "address", "nick"],
        "additionalProperties": False,
        "$defs": {
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            }
        },
    }
    deltas = await collect(
        SimEngine(FAST),
        request(
            [Message(role="user", content="Describe Ada Lovelace")],
            tools=EMPTY_TOOLS,
            schema=JsonSchemaFormat(name="p", schema=schema),
        ),
    )
    jsonschema.validate(json.loads(text_of(deltas)), schema)


async def test_max_output_tokens_truncates():
    deltas = await collect(
        SimEngine(FAST), request([Message(role="user", content="write a lot")], tools=EMPTY_TOOLS, max_out=16)
    )
    assert deltas[-1].reason == "length" and deltas[-1].output_tokens == 16


async def test_prefix_cache_hits_the_same_for_appended_and_resent_history():
    engine = SimEngine(FAST)
    history = [Message(role="user", content="word " * 400)]
    first = (await collect(engine, request(history, tools=EMPTY_TOOLS)))[-1]
    assert first.cached_tokens == 0
    longer = history + [Message(role="assistant", content="ok"), Message(role="user", content="more " * 100)]
    again = (await collect(engine, request(longer, tools=EMPTY_TOOLS)))[-1]
    assert again.cached_tokens == (first.input_tokens // 64) * 64 and again.input_tokens > first.input_tokens


def test_cost_model():
    cost = CostModel(base_latency_s=0.05, prefill_tokens_per_s=10_000, decode_tokens_per_s=1_000)
    assert cost.time_to_first_token(5_000) == pytest.approx(0.55)
    assert cost.decode_time(250) == pytest.approx(0.25)


async def test_timing_follows_the_cost_model():
    settings = SimSettings(base_latency_ms=50, prefill_tokens_per_s=1e12, decode_tokens_per_s=2_000)
    req = request([Message(role="user", content="tell me about it")], tools=EMPTY_TOOLS, max_out=200)
    start = time.perf_counter()
    deltas = await collect(SimEngine(settings), req)
    elapsed = time.perf_counter() - start
    expected = 0.05 + deltas[-1].output_tokens / 2_000
    assert expected * 0.95 <= elapsed <= expected + 0.25


async def test_trace_replays_turns_then_falls_back(tmp_path: Path):
    trace = tmp_path / "t.json"
    trace.write_text(
        json.dumps(
            {
                "turns": [
                    {
                        "output": [
                            {"type": "function_call", "name": "run_command", "arguments": {"command": "ls", "timeout": 5}}
                        ]
                    },
                    {"output": [{"type": "message", "text": "All done."}]},
                ]
            }
        )
    )
    engine = SimEngine(SimSettings(base_latency_ms=0, prefill_tokens_per_s=1e12, decode_tokens_per_s=1e9, trace=str(trace)))
    items = [Message(role="user", content="go")]
    assert calls_of(await collect(engine, request(items))) == [("run_command", {"command": "ls", "timeout": 5})]
    items += [FunctionCall(call_id="c", name="run_command", arguments="{}"), FunctionCallOutput(call_id="c", output="x")]
    assert text_of(await collect(engine, request(items))) == "All done."
    items += [Message(role="assistant", content="All done."), Message(role="user", content="thanks")]
    assert isinstance((await collect(engine, request(items)))[-1], Finish)


def test_bad_traces_are_refused(tmp_path: Path):
    bad = tmp_path / "bad.json"
    for content in ["{", '{"turns": 3}', '{"turns": [{"output": []}]}', '{"turns": [{"output": [{"type": "x"}]}]}']:
        bad.write_text(content)
        with pytest.raises(TraceError):
            load_trace(bad)


async def test_cancelling_stops_generation():
    settings = SimSettings(base_latency_ms=0, prefill_tokens_per_s=1e12, decode_tokens_per_s=100)
    engine = SimEngine(settings)
    req = request([Message(role="user", content="write")], tools=EMPTY_TOOLS)

    async def consume():
        async for _ in await engine.open(req):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_tool_the_message_names_is_called_on_its_subject():
    weather = parse_tools(
        [
            {
                "type": "function",
                "name": "get_weather",
                "description": "Get the weather",
                "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
            }
        ]
    )
    items = [Message(role="user", content="What's the weather like in San Francisco?")]
    deltas = await collect(SimEngine(FAST), request(items, tools=weather))
    assert calls_of(deltas) == [("get_weather", {"location": "San Francisco"})]
    items += [
        FunctionCall(call_id="c", name="get_weather", arguments='{"location":"San Francisco"}'),
        FunctionCallOutput(call_id="c", output="Sunny, 21 C"),
    ]
    answer = await collect(SimEngine(FAST), request(items, tools=weather))
    assert "Sunny, 21 C" in text_of(answer)  # acted on: it answers instead of calling again


CODEX_TOOLS = parse_tools(json.loads((Path(__file__).parent / "fixtures" / "codex-0.169-tools.json").read_text())["tools"])


async def test_with_codex_tools_commands_go_to_its_shell_tool_one_a_turn():
    items = [Message(role="user", content="Please run `ls` and then `cat README.md`")]
    first = await collect(SimEngine(FAST), request(items, tools=CODEX_TOOLS))
    assert calls_of(first) == [("exec_command", {"cmd": "ls"})]
    items += [
        FunctionCall(call_id="c1", name="exec_command", arguments='{"cmd":"ls"}'),
        FunctionCallOutput(call_id="c1", output="README.md"),
    ]
    second = await collect(SimEngine(FAST), request(items, tools=CODEX_TOOLS))
    assert calls_of(second) == [("exec_command", {"cmd": "cat README.md"})]


async def test_with_only_a_shell_a_path_to_read_is_read_with_cat():
    items = [Message(role="user", content="Please open src/app.py")]
    deltas = await collect(SimEngine(FAST), request(items, tools=CODEX_TOOLS))
    assert calls_of(deltas) == [("exec_command", {"cmd": "cat src/app.py"})]


async def test_an_empty_user_message_is_not_taken_as_the_request():
    """The llm plugin sends an empty user message between a call and its output."""
    items = [
        Message(role="user", content="read src/a.py"),
        FunctionCall(call_id="c1", name="read_file", arguments='{"path":"src/a.py"}'),
        Message(role="user", content=""),
        FunctionCallOutput(call_id="c1", output="def main():\n    pass\n"),
    ]
    deltas = await collect(SimEngine(FAST), request(items))
    assert "def main():" in text_of(deltas) and deltas[-1].reason == "stop"


async def test_a_reasoning_request_thinks_first_at_the_decode_rate_and_counts_it():
    settings = SimSettings(base_latency_ms=0, prefill_tokens_per_s=1e12, decode_tokens_per_s=2000)
    low = request([Message(role="user", content="Say hello")], reasoning_effort="low", reasoning_summary="concise")
    started = time.perf_counter()
    deltas = await collect(SimEngine(settings), low)
    elapsed = time.perf_counter() - started
    thought = [d for d in deltas if isinstance(d, ReasoningDelta)]
    assert thought and not thought[0].summary and thought[-1].summary  # its text, then its summary
    finish = deltas[-1]
    assert finish.reasoning_tokens >= 48 and finish.output_tokens > finish.reasoning_tokens
    assert elapsed >= finish.output_tokens / 2000 * 0.9
    high = await collect(SimEngine(FAST), request([Message(role="user", content="Say hello")], reasoning_effort="high"))
    assert high[-1].reasoning_tokens > finish.reasoning_tokens
    plain = await collect(SimEngine(FAST), request([Message(role="user", content="Say hello")]))
    assert plain[-1].reasoning_tokens == 0 and not any(isinstance(d, ReasoningDelta) for d in plain)


def test_decoding_waits_instead_of_spinning_under_uvloop():
    """libuv's clock and timers are whole milliseconds: the pacer must sleep at least that long."""
    import uvloop

    from loopway.engines.sim import engine as sim_engine

    wakeups = 0
    real_sleep = asyncio.sleep

    async def counting_sleep(delay: float) -> None:
        nonlocal wakeups
        wakeups += 1
        await real_sleep(delay)

    async def decode() -> int:
        pace = sim_engine._Pace(asyncio.get_running_loop(), lambda: 2_000.0, 10_000)
        async for _ in pace.stream(sim_engine._Segment("word " * 200)):
            pass
        return pace.produced

    sim_engine.asyncio.sleep = counting_sleep  # type: ignore[assignment]
    try:
        produced = uvloop.run(decode())
    finally:
        sim_engine.asyncio.sleep = real_sleep  # type: ignore[assignment]
    assert produced >= 200
    assert wakeups <= produced  # at most one wake-up per token (it was ~300 per token)


def test_a_full_prefix_cache_evicts_the_least_recently_used_tail_first():
    one = TokenSequence.of(list(range(1000, 1640)))  # 10 blocks
    two = TokenSequence.of(list(range(5000, 5640)))
    cache = PrefixCache(capacity_tokens=15 * 64)
    cache.insert(one.block_hashes())
    cache.insert(two.block_hashes())
    assert cache.cached_tokens(two.block_hashes()) == 640
    assert cache.cached_tokens(one.block_hashes()) == 5 * 64  # its head survives, its tail went first
    assert cache.evicted_blocks == 5
    cache.insert(one.block_hashes())  # read again: now the freshest, and the other one pays
    assert cache.cached_tokens(one.block_hashes()) == 640
    assert cache.cached_tokens(two.block_hashes()) == 5 * 64


def test_an_unbounded_prefix_cache_keeps_everything():
    cache = PrefixCache(capacity_tokens=0)
    sequences = [TokenSequence.of([i] * 640) for i in range(50)]
    for sequence in sequences:
        cache.insert(sequence.block_hashes())
    assert all(cache.cached_tokens(s.block_hashes()) == 640 for s in sequences) and cache.evicted_blocks == 0


def test_concurrent_prefills_queue_for_one_throughput():
    shared = Capacity(10_000, 1_000, shared=True, slowdown=0)
    assert shared.prefill_done(5_000, now=0.0) == pytest.approx(0.5)
    assert shared.prefill_done(5_000, now=0.1) == pytest.approx(1.0)  # behind the first
    assert shared.prefill_done(1_000, now=2.0) == pytest.approx(2.1)  # the queue had drained
    separate = Capacity(10_000, 1_000, shared=False, slowdown=0)
    assert separate.prefill_done(5_000, now=0.0) == separate.prefill_done(5_000, now=0.0) == pytest.approx(0.5)


def test_decode_slows_as_the_batch_grows():
    capacity = Capacity(10_000, 1_000, shared=True, slowdown=0.03)
    capacity.decoding = 1
    assert capacity.decode_rate() == 1_000
    capacity.decoding = 8
    assert capacity.decode_rate() == pytest.approx(1_000 / 1.21)  # 8 × 0.826 = 6.6× one sequence's throughput
    assert Capacity(10_000, 1_000, shared=True, slowdown=0).decode_rate() == 1_000


async def test_the_engine_counts_its_batch_while_it_decodes():
    engine = SimEngine(msgspec.structs.replace(FAST, decode_tokens_per_s=2_000))
    streams = [await engine.open(request([Message(role="user", content=f"explain question {i}")])) for i in range(3)]
    firsts = [await anext(stream) for stream in streams]
    assert all(not isinstance(f, Finish) for f in firsts) and engine.capacity.decoding == 3
    for stream in streams:
        async for _ in stream:
            pass
    assert engine.capacity.decoding == 0
