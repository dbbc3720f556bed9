"""``loopway bench mcp``: its replay server speaks MCP, and the three modes do the same work."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import mcp

from loopway.bench import workload as workloads
from loopway.bench.link import PROFILES
from loopway.bench.mcp_rollout import AppThread, ReplayMcp, run_mode


def test_the_replay_server_answers_the_official_client():
    workload = workloads.generate(3, seed=5)
    call = next(i for t in workload["turns"] for i in t["output"] if i["type"] == "function_call")
    expected = workload["turns"][0]["tool_results"][0]["output"]
    for turn in workload["turns"]:
        for result in turn["tool_results"]:
            result["tool_time_s"] = 0

    async def use(url: str):
        async with mcp.Client(url) as client:
            return await client.list_tools(), await client.call_tool(call["name"], call["arguments"])

    replay = ReplayMcp(workload)
    with AppThread(replay.app) as server:
        listed, called = asyncio.run(use(f"http://127.0.0.1:{server.port}/mcp"))
    assert [t.name for t in listed.tools] == [t["name"] for t in workload["tools"]]
    assert not called.is_error and called.content[0].text == expected


def test_client_tools_and_server_run_tools_do_the_same_work(tmp_path: Path):
    workload = workloads.generate(4, seed=11)
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps(workload))
    client = asyncio.run(run_mode("client-tools", workload, str(trace), PROFILES["loopback"]))
    server = asyncio.run(run_mode("server-mcp", workload, str(trace), PROFILES["loopback"]))
    assert client["tool_calls"] == server["tool_calls"] == 4
    assert client["responses"] == len(workload["turns"]) and server["responses"] == 1
    assert client["link_round_trips"] > server["link_round_trips"] == 1
    assert client["answer"] == server["answer"] and client["answer"].startswith("All tests pass.")
