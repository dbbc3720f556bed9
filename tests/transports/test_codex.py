"""The Codex CLI as a real user would run it: non-interactive, against loopway, with its shell tool.

Codex opens WebSocket mode, warms up with ``generate: false``, then continues with ``store: false``
and only new items, so it depends entirely on the connection cache. With WebSocket mode off, the
upgrade gets a 426 and Codex must finish the same task over HTTP.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Server

MODEL = "gpt-5.1-codex"


def codex_binary() -> str:
    found = os.environ.get("LOOPWAY_CODEX_BIN") or shutil.which("codex")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("the Codex CLI is not installed: .ci/run installs npm @openai/codex")
        pytest.skip("the Codex CLI is not installed (npm install @openai/codex@0.169.0; set LOOPWAY_CODEX_BIN)")
    return found


def run_codex(server: Server, workdir: Path, home: Path, task: str, *, websockets: bool) -> list[dict]:
    provider = (
        f'model_providers.local={{name="local",base_url="{server.url}",wire_api="responses",'
        f'env_key="LOOPWAY_TEST_KEY",supports_websockets={str(websockets).lower()}}}'
    )
    command = [
        codex_binary(),
        "exec",
        "--skip-git-repo-check",
        "--ephemeral",
        "-s",
        "read-only",
        "-m",
        MODEL,
        "-c",
        "model_provider=local",
        "-c",
        provider,
        "--json",
        task,
    ]
    env = {**os.environ, "CODEX_HOME": str(home), "LOOPWAY_TEST_KEY": "sk-test"}
    done = subprocess.run(
        command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.fixture
def task_dir(tmp_path: Path) -> tuple[Path, Path, Path]:
    work, home = tmp_path / "work", tmp_path / "codex-home"
    work.mkdir()
    home.mkdir()
    (work / "answer.txt").write_text("The secret word is pelican.\n")
    trace = tmp_path / "trace.json"
    trace.write_text(
        json.dumps(
            {
                "turns": [
                    {"output": [{"type": "function_call", "name": "exec_command", "arguments": {"cmd": "cat answer.txt"}}]}
                ]
            }
        )
    )
    return work, home, trace


def assert_task_done(events: list[dict]) -> None:
    commands = [e["item"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == "command_execution"]
    assert commands and commands[0]["exit_code"] == 0 and "pelican" in commands[0]["aggregated_output"]
    messages = [e["item"]["text"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == "agent_message"]
    assert messages and "pelican" in messages[-1]  # the model saw the shell tool's real output
    assert events[-1]["type"] == "turn.completed" and events[-1]["usage"]["input_tokens"] > 0


@pytest.mark.parametrize("websocket", ["on", "off"])
def test_codex_exec_finishes_a_shell_task(task_dir: tuple[Path, Path, Path], tmp_path: Path, websocket: str):
    work, home, trace = task_dir
    server = Server(
        tmp_path,
        "--sim-models",
        MODEL,
        "--sim-trace",
        str(trace),
        "--store",
        "memory",
        "--websocket",
        websocket,
        "--log-level",
        "info",
    )
    try:
        assert_task_done(run_codex(server, work, home, "What does answer.txt say?", websockets=True))
        log = server.output()
        if websocket == "on":
            assert '"WebSocket /v1/responses" [accepted]' in log and "POST /v1/responses" not in log
        else:
            assert 'POST /v1/responses HTTP/1.1" 200' in log
    finally:
        server.stop()


@pytest.mark.parametrize("websocket", ["on", "off"])
def test_codex_runs_two_commands_with_the_default_sim(tmp_path: Path, websocket: str):
    """No trace: the default sim picks Codex's own shell tool (``exec_command``) for each command in
    turn, out of Codex's real tool list (namespaces included), then answers in text."""
    work, home = tmp_path / "work", tmp_path / "codex-home"
    work.mkdir()
    home.mkdir()
    (work / "README.md").write_text("# Demo\nThe answer is forty-two.\n")
    (work / "main.py").write_text("print('hi')\n")
    server = Server(tmp_path, "--sim-models", MODEL, "--store", "memory", "--websocket", websocket)
    try:
        events = run_codex(server, work, home, "Please run `ls` and then `cat README.md`", websockets=True)
    finally:
        server.stop()
    commands = [e["item"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == "command_execution"]
    assert [c["exit_code"] for c in commands] == [0, 0], commands
    assert "main.py" in commands[0]["aggregated_output"] and "forty-two" in commands[1]["aggregated_output"]
    messages = [e["item"]["text"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == "agent_message"]
    assert messages and "forty-two" in messages[-1]  # the answer cites what the commands printed
    assert events[-1]["type"] == "turn.completed"


@pytest.mark.parametrize("websocket", ["on", "off"])
def test_codex_with_a_reasoning_model_carries_its_reasoning_across_turns(tmp_path: Path, websocket: str):
    """A reasoning model: Codex asks for ``reasoning.encrypted_content`` with store=false. Over WebSocket the
    connection cache holds the reasoning; over HTTP Codex sends every reasoning item back each turn, and each
    must open (or the turn would be a 400)."""
    work, home = tmp_path / "work", tmp_path / "codex-home"
    work.mkdir()
    home.mkdir()
    (work / "README.md").write_text("# Demo\nThe answer is forty-two.\n")
    server = Server(
        tmp_path, "--sim-models", MODEL, "--sim-reasoning-models", MODEL, "--store", "memory", "--log-level", "info"
    )
    try:
        events = run_codex(server, work, home, "Please run `ls` and then `cat README.md`", websockets=True)
        log = server.output()
    finally:
        server.stop()
    thoughts = [e["item"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == "reasoning"]
    assert len(thoughts) >= 3 and all(t["text"] for t in thoughts), thoughts  # one a turn, shown to the user
    commands = [e["item"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == "command_execution"]
    assert [c["exit_code"] for c in commands] == [0, 0]
    assert events[-1]["type"] == "turn.completed" and events[-1]["usage"]["output_tokens"] > 0
    assert "invalid_encrypted_content" not in log
