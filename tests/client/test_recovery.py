"""``loopway.client`` and the coding agent recover from every fault class a server can inject."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loopway.client import AgentLoop, RetryPolicy, make_transport
from loopway.client import retry as retries
from loopway.client.retry import Recovery
from tests.client.test_loop import TASK, file_tools
from tests.conftest import MODEL, Server, metric_samples, metric_value

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fix-average"
FAST = RetryPolicy(max_attempts=8, initial_delay_s=0.01, max_delay_s=0.05)

# Each fault class with parameters that keep the test quick; 40% of requests, seeded, so a run
# meets the same faults every time and each turn sooner or later gets through.
FAULTS = {
    "drop": "drop=40%",
    "close": "close=40%",
    "failed": "failed=40%",
    "http-500": "http-500=40%",
    "http-503": "http-503=40%",
    "rate-limit": "rate-limit=40% retry-after=0.05",
    "slow": "slow=40% ms=150",
    "stall": "stall=40% ms=100 times=2",
    "connection-limit": "connection-limit=40%",
    "cache-miss": "cache-miss=40%",
}
TRANSPORTS = {  # (kind, store) the loop runs on, by the transports a fault applies to
    "ws": [("ws", False), ("ws", True)],
    "sse": [("http-stateless", False), ("http-chained", True)],
}


def runs_for(fault: str) -> list[tuple[str, bool]]:
    from loopway.core.ops.fault_injection import APPLIES

    runs = [run for transport in sorted(APPLIES[fault] - {"http"}) for run in TRANSPORTS[transport]]
    if fault == "cache-miss":  # only a continuation can miss: a stateless client never continues
        runs.remove(("http-stateless", False))
    return runs


@pytest.fixture(scope="module", params=sorted(FAULTS))
def faulty(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Server]]:
    server = Server(
        tmp_path_factory.mktemp("recovery"),
        "--faults",
        f"seed=3; {FAULTS[request.param]}",
        "--store",
        "memory",
        "--sim-decode-tps",
        "5000",
    )
    yield request.param, server
    server.stop()


async def test_the_loop_recovers_over_every_transport_the_fault_applies_to(faulty: tuple[str, Server]):
    kind, server = faulty
    recovered = 0
    for transport_kind, store in runs_for(kind):
        tools, read = file_tools()
        transport = make_transport(transport_kind, server.url, "sk-test", store=store, retry=FAST)
        try:
            result = await AgentLoop(transport, tools, model=MODEL).run(TASK)
        finally:
            await transport.aclose()
        label = f"{kind} over {transport_kind} store={store}"
        assert "src/c.py" in result.output_text and len(result.turns) == 4, label
        assert set(read) == {"src/a.py", "src/b.py", "src/c.py"}, label  # a restarted turn may read again
        recovered += sum(transport.recoveries.values())  # type: ignore[attr-defined]
    injected = metric_value(metric_samples(server), "loopway_faults_injected_total", kind=kind)
    assert injected >= 2
    if kind not in ("slow", "stall"):  # the only two that need no recovery
        # Every fault was met and recovered from; a refused store=false continuation on a socket
        # also loses its parent (the spec's eviction), which costs one more recovery (a full resend).
        assert recovered >= injected


def test_recoveries_follow_the_table():
    assert retries.for_error(500, {"code": None}) is Recovery.RETRY
    assert retries.for_error(429, {"code": "rate_limit_exceeded"}) is Recovery.RETRY
    assert retries.for_error(400, {"code": "previous_response_not_found"}) is Recovery.RESEND_FULL
    assert retries.for_error(400, {"code": "websocket_connection_limit_reached"}) is Recovery.RECONNECT
    assert retries.for_error(400, {"code": "invalid_value"}) is Recovery.GIVE_UP
    assert retries.for_error(401, {"code": "invalid_api_key"}) is Recovery.GIVE_UP
    assert retries.for_response({"status": "failed", "error": {"code": "server_error"}}) is Recovery.RETRY
    assert retries.for_response({"status": "failed", "error": {"code": "invalid_prompt"}}) is None
    assert retries.for_response({"status": "completed"}) is None


def test_waits_honour_the_server_then_back_off():
    policy = RetryPolicy(initial_delay_s=0.5, max_delay_s=8)
    assert policy.delay(1, {"retry-after-ms": "250", "retry-after": "1"}) == 0.25
    assert policy.delay(1, {"retry-after": "3"}) == 3
    assert policy.delay(1, {"retry-after": "3600"}) == 60  # capped
    assert 0.375 <= policy.delay(1) <= 0.5 and 3 <= policy.delay(4) <= 4 and policy.delay(20) <= 8


async def test_a_refusal_that_cannot_be_retried_reaches_the_caller(server: Server):
    from loopway.client import AgentError

    tools, _ = file_tools()
    transport = make_transport("ws", server.url, "sk-test", retry=FAST)
    try:
        with pytest.raises(AgentError, match="model_not_found"):
            await AgentLoop(transport, tools, model="no-such-model").run(TASK)
    finally:
        await transport.aclose()


@pytest.mark.parametrize("transport", ["ws", "http"])
def test_the_coding_agent_fixes_the_example_under_faults(tmp_path: Path, transport: str):
    """Every fault class that applies, at 30% of requests, and the same answer as without faults."""
    work = tmp_path / "repo"
    shutil.copytree(EXAMPLE / "repo", work)
    spec = "seed=9; any=30% ms=100 retry-after=0.05 times=1"
    server = Server(tmp_path, "--sim-trace", str(EXAMPLE / "trace.json"), "--store", "memory", "--faults", spec)
    try:
        command = [sys.executable, "-m", "loopway", "agent", "--base-url", server.url, "--workdir", str(work)]
        done = subprocess.run(
            [*command, "--transport", transport, "--json", "Make the tests pass."],
            capture_output=True,
            text=True,
            timeout=180,
        )
        injected = metric_samples(server)
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)["answer"]
    assert "Both tests pass" in answer
    assert sum(v for (name, _), v in injected.items() if name == "loopway_faults_injected_total") >= 2
    passing = subprocess.run([sys.executable, "-m", "unittest", "-q"], cwd=work, capture_output=True, text=True)
    assert passing.returncode == 0, passing.stderr
