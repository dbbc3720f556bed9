"""WebSocket mode's rules on a connection, without a socket: lanes, cache, parents, eviction, steering."""

from __future__ import annotations

import pytest

from loopway.core.connection.state import ConnectionState, Job
from loopway.core.ops.timing import StageTimes
from loopway.core.turn.turn import Turn, TurnOrigin
from loopway.protocol.errors import ApiError
from loopway.protocol.events import SteerAccepted, SteerFailed, SteerPending, is_terminal
from loopway.protocol.items import Message
from loopway.protocol.request import CreateRequest
from tests.core.turns import READ_FILE, pipeline, request, user

PIPE = pipeline()


def submit(state: ConnectionState, req: CreateRequest) -> list[Job]:
    return state.submit(req, StageTimes())


def only(jobs: list[Job]) -> Job:
    assert len(jobs) == 1, jobs
    return jobs[0]


async def run(state: ConnectionState, job: Job, *, fail: bool = False) -> Turn:
    """What the session does with a job: prepare from the cache, run, tell the state each step."""
    previous = job.request.previous_response_id
    turn = PIPE.prepare(job.request, state.parent(previous) if previous else None)
    await PIPE.start(turn)
    if fail:  # as if the engine had failed before it accepted
        turn.generation, turn.open_failure = None, ("server_error", "the engine broke")
    state.started(job, turn)
    async for event in PIPE.run(turn):
        if is_terminal(event):
            state.completed(job, turn)
    return turn


async def turn_on(state: ConnectionState, req: CreateRequest) -> Turn:
    job = only(submit(state, req))
    turn = await run(state, job)
    assert state.ended(job, turn).start == []
    return turn


# Lanes and the cache ---------------------------------------------------------------------------


async def test_same_lane_waits_for_the_running_turn_and_starts_when_it_ends():
    state = ConnectionState()
    first = only(submit(state, request()))
    assert submit(state, request()) == [] and state.busy
    turn = await run(state, first)
    second = only(state.ended(first, turn).start)
    assert second is not first
    assert state.ended(second).start == [] and not state.busy


async def test_named_lanes_start_concurrently_and_one_too_many_is_an_api_error():
    state = ConnectionState(max_named_lanes=2)
    assert only(submit(state, request(stream_id="a"))).lane == "a"
    assert only(submit(state, request(stream_id="b"))).lane == "b"
    with pytest.raises(ApiError) as refused:
        submit(state, request(stream_id="c"))
    assert refused.value.code == "websocket_stream_limit_reached" and refused.value.param == "stream_id"
    assert state.lanes_used == 2


async def test_continuation_finds_its_parent_rendered_in_the_cache():
    state = ConnectionState()
    first = await turn_on(state, request())
    parent = state.parent(first.id)
    assert parent is not None and parent.conversation is first.after
    job = only(submit(state, request(input=[user("And again")], previous_response_id=first.id)))
    second = await run(state, job)
    assert second.known_prefix == len(first.after.tokens)  # only the new items were rendered


async def test_a_miss_is_none_so_the_service_decides_between_store_and_not_found():
    assert ConnectionState().parent("resp_unknown") is None


async def test_a_lane_keeps_only_its_latest_response():
    state = ConnectionState()
    first = await turn_on(state, request())
    second = await turn_on(state, request(input=[user("next")], previous_response_id=first.id))
    assert state.parent(first.id) is None and state.parent(second.id) is not None


async def test_lanes_keep_their_own_latest():
    state = ConnectionState()
    a = await turn_on(state, request(stream_id="a"))
    b = await turn_on(state, request(stream_id="b"))
    assert state.parent(a.id) and state.parent(b.id)


async def test_a_queued_fork_keeps_its_parent_cached_until_it_ends():
    state = ConnectionState()
    parent = await turn_on(state, request())
    blocker = only(submit(state, request(stream_id="fork")))  # the fork's lane is busy: it will queue
    fork = request(stream_id="fork", input=[user("branch")], previous_response_id=parent.id)
    assert submit(state, fork) == []
    await turn_on(state, request(input=[user("main goes on")], previous_response_id=parent.id))
    assert state.parent(parent.id) is not None  # replaced as the latest, but pinned by the queued fork
    queued = only(state.ended(blocker, await run(state, blocker)).start)
    state.ended(queued, await run(state, queued))
    assert state.parent(parent.id) is None


async def test_failed_same_lane_continuation_evicts_its_parent():
    state = ConnectionState()
    parent = await turn_on(state, request())
    job = only(submit(state, request(input=[user("x")], previous_response_id=parent.id)))
    state.refused(job)  # e.g. the engine refused it with a 4xx
    state.ended(job)
    assert state.parent(parent.id) is None


async def test_failed_fork_keeps_its_parent():
    state = ConnectionState()
    parent = await turn_on(state, request())
    job = only(submit(state, request(stream_id="fork", input=[user("x")], previous_response_id=parent.id)))
    state.refused(job)
    state.ended(job)
    assert state.parent(parent.id) is not None


async def test_a_failed_response_is_not_cached_and_evicts_its_same_lane_parent():
    state = ConnectionState()
    parent = await turn_on(state, request())
    job = only(submit(state, request(input=[user("x")], previous_response_id=parent.id)))
    failed = await run(state, job, fail=True)
    state.ended(job, failed)
    assert failed.response.status == "failed"
    assert state.parent(failed.id) is None and state.parent(parent.id) is None


async def test_close_forgets_everything():
    state = ConnectionState()
    turn = await turn_on(state, request())
    state.close()
    assert state.parent(turn.id) is None


# Steering --------------------------------------------------------------------------------------


async def running(state: ConnectionState, req: CreateRequest) -> tuple[Job, Turn]:
    """A turn prepared and registered as running, its engine not yet consumed."""
    job = only(submit(state, req))
    turn = PIPE.prepare(job.request, None)
    await PIPE.start(turn)
    state.started(job, turn)
    return job, turn


def failure(state: ConnectionState, target: object, raw_input: object) -> str:
    event = state.steer(target, raw_input).event
    assert isinstance(event, SteerFailed)
    assert event.steer == {"previous_response_id": target, "input": raw_input}  # the input comes back
    return event.error["code"]


@pytest.mark.parametrize(
    ("raw_input", "code"),
    [
        ([], "invalid_input"),
        ([{"type": "message", "role": "assistant", "content": "I said so"}], "invalid_input"),
        ([{"type": "function_call_output", "call_id": "c", "output": "x"}], "invalid_input"),
        (42, "invalid_input"),
    ],
)
async def test_steering_input_must_be_user_messages(raw_input: object, code: str):
    state = ConnectionState()
    _, turn = await running(state, request())
    assert failure(state, turn.id, raw_input) == code


async def test_steering_an_unknown_a_finished_or_a_compacting_response_fails():
    state = ConnectionState()
    done = await turn_on(state, request())
    assert failure(state, None, "x") == "response_not_found"
    assert failure(state, "resp_nope", "x") == "response_not_found"
    assert failure(state, done.id, "x") == "response_already_completed"
    _, compacting = await running(
        state, request(stream_id="c", context_management=[{"type": "compaction", "compact_threshold": 100_000}])
    )
    assert failure(state, compacting.id, "x") == "steering_not_supported"
    _, on_conversation = await running(state, request(stream_id="d", conversation="conv_1"))
    assert failure(state, on_conversation.id, "x") == "steering_not_supported"


async def test_at_most_so_many_steers_wait_per_response():
    state = ConnectionState(max_pending_steers=2)
    _, turn = await running(state, request())
    assert isinstance(state.steer(turn.id, "one").event, SteerAccepted)
    assert isinstance(state.steer(turn.id, "two").event, SteerAccepted)
    assert failure(state, turn.id, "three") == "too_many_pending_steers"


async def test_an_accepted_steer_is_numbered_in_the_target_sequence_on_its_lane():
    state = ConnectionState()
    _, turn = await running(state, request(stream_id="main"))
    events = PIPE.run(turn)
    opening = [await anext(events), await anext(events)]  # response.created, response.in_progress
    outbound = state.steer(turn.id, "Use tabs")
    assert isinstance(outbound.event, SteerAccepted) and outbound.lane == "main"
    assert [e.sequence_number for e in opening] == [0, 1] and outbound.event.sequence_number == 2
    assert outbound.event.steer.previous_response_id == turn.id and turn.steered
    assert (await anext(events)).sequence_number == 3
    await events.aclose()


async def test_a_steered_text_answer_is_followed_at_once_by_a_successor_with_the_steering_input():
    state = ConnectionState()
    job, turn = await running(state, request(stream_id="main", instructions="Be brief"))
    async for event in PIPE.run(turn):
        if event.type == "response.output_text.delta" and not turn.steered:
            state.steer(turn.id, "Actually, say goodbye")
        if is_terminal(event):
            state.completed(job, turn)
    after = state.ended(job, turn)
    successor = only(after.start)
    assert after.send == [] and successor.lane == "main"
    assert successor.request.previous_response_id == turn.id and successor.request.generate
    assert successor.request.instructions == "Be brief"
    assert [m.content for m in successor.request.input if isinstance(m, Message)] == ["Actually, say goodbye"]
    assert state.parent(turn.id) is not None  # pinned for the successor


async def test_steering_a_turn_with_tool_calls_waits_for_their_output_then_goes_first():
    state = ConnectionState()
    job, turn = await running(state, request(input="Please read src/app.py", tools=[READ_FILE]))
    async for event in PIPE.run(turn):
        if event.type == "response.function_call_arguments.delta" and not turn.steered:
            state.steer(turn.id, "Then stop")  # mid-call: the call completes, then the response ends
        if is_terminal(event):
            state.completed(job, turn)
    after = state.ended(job, turn)
    assert after.start == []
    (pending,) = after.send
    assert isinstance(pending.event, SteerPending)
    call = turn.response.output[0]
    assert pending.event.required_input == [{"type": "function_call_output", "call_id": call.call_id, "name": "read_file"}]
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "print('hi')"}
    follow = only(submit(state, request(input=[output], previous_response_id=turn.id, tools=[READ_FILE])))
    assert [type(i).__name__ for i in follow.request.input] == ["Message", "FunctionCallOutput"]


async def test_a_failed_steered_turn_is_followed_by_nothing():
    state = ConnectionState()
    job, turn = await running(state, request())
    state.steer(turn.id, "more")
    turn.generation, turn.open_failure = None, ("server_error", "boom")  # as if the engine had failed
    async for event in PIPE.run(turn):
        if is_terminal(event):
            state.completed(job, turn)
    after = state.ended(job, turn)
    assert after.send == [] and after.start == []
    assert only(submit(state, request(previous_response_id=turn.id))).request.input[0].content == "Say hello"


# Conversation objects ------------------------------------------------------------------------------


async def conversation_turn(
    state: ConnectionState, read: int, written: int, conversation_id: str = "conv_1", **fields: object
) -> Turn:
    """A turn on a conversation that read it at ``read`` and whose append left ``written``."""
    job = only(submit(state, request(conversation=conversation_id, **fields)))
    turn = PIPE.prepare(job.request, None, origin=TurnOrigin(conversation_version=read))
    await PIPE.start(turn)
    turn.wrote_conversation(written)
    state.started(job, turn)
    async for event in PIPE.run(turn):
        if is_terminal(event):
            state.completed(job, turn)
    state.ended(job, turn)
    return turn


async def test_a_conversation_is_kept_rendered_only_while_this_connection_alone_writes_it():
    state = ConnectionState()
    turn = await conversation_turn(state, read=4, written=5)
    assert state.conversation("conv_1", 5) is turn.after
    assert state.conversation("conv_1", 6) is None  # someone wrote since
    await conversation_turn(state, read=5, written=7)  # another write landed between read and append
    assert state.conversation("conv_1", 7) is None and state.conversation("conv_1", 5) is None
    await conversation_turn(state, read=7, written=8, truncation="auto")  # the rendering may be cut short
    assert state.conversation("conv_1", 8) is None


async def test_at_most_eight_conversations_stay_rendered_per_connection():
    state = ConnectionState()
    for n in range(10):
        await conversation_turn(state, read=0, written=1, conversation_id=f"conv_{n}")
    kept = [n for n in range(10) if state.conversation(f"conv_{n}", 1) is not None]
    assert kept == list(range(2, 10))
