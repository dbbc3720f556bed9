"""openai-agents against loopway: a streamed run with two tools and a handoff, over HTTP or WebSocket.

Usage: python agents_run.py BASE_URL MODEL http|websocket; prints one JSON object of what it saw.
"""

import asyncio
import json
import sys

from agents import Agent, ModelSettings, RunConfig, Runner, function_tool, set_tracing_disabled
from agents.models.openai_provider import OpenAIProvider

BASE_URL, MODEL, TRANSPORT = sys.argv[1:4]
set_tracing_disabled(True)
calls: list[str] = []


@function_tool
def read_file(path: str) -> str:
    """Read a file of the repository."""
    calls.append(f"read_file {path}")
    return "def add(a, b):\n    return a - b\n"


@function_tool
def run_tests(target: str) -> str:
    """Run the test suite on a target."""
    calls.append(f"run_tests {target}")
    return "1 failed: test_add expected 3, got -1"


async def main() -> None:
    reviewer = Agent(name="reviewer", instructions="You review changes.", model=MODEL)
    coder = Agent(
        name="coder",
        instructions="You fix code.",
        model=MODEL,
        tools=[read_file, run_tests],
        handoffs=[reviewer],
        model_settings=ModelSettings(parallel_tool_calls=False),
    )
    provider = OpenAIProvider(
        base_url=BASE_URL, api_key="sk-test", use_responses=True, use_responses_websocket=TRANSPORT == "websocket"
    )
    result = Runner.run_streamed(
        coder,
        "Please read 'src/calc.py' and run 'tests/test_calc.py', then hand off to the reviewer.",
        run_config=RunConfig(model_provider=provider),
    )
    kinds: list[str] = []
    async for event in result.stream_events():
        kinds.append(event.type)
    print(
        json.dumps(
            {
                "calls": calls,
                "last_agent": result.last_agent.name,
                "output": result.final_output,
                "events": sorted(set(kinds)),
            }
        )
    )


asyncio.run(main())
