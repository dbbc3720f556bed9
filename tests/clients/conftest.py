"""Clients nobody here wrote, each driving a real ``loopway serve``: installed by ``.ci/run``, pinned.

Node clients (openai-node, the Vercel AI SDK) run under the Node 22 that npm's ``node`` package
brings, from ``LOOPWAY_NODE_CLIENTS`` (a folder with their ``node_modules``); Python clients
(openai-agents, langchain-openai, pydantic-ai) run in their own venv, ``LOOPWAY_CLIENTS_PYTHON``,
so their pins never touch loopway's. Each client is a small script in ``js/`` or ``py/`` that does
what a user would and prints what it saw as JSON. Absent, they are skipped with a reason (and fail
in CI, which installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _required(variable: str, what: str) -> Path:
    value = os.environ.get(variable)
    if value and Path(value).exists():
        return Path(value)
    if os.environ.get("CI"):
        pytest.fail(f"not installed: {what}; .ci/run installs them and sets {variable}")
    pytest.skip(f"not installed: {what} (see .ci/run; set {variable})")


def run_node(script: str, *args: str, tmp: Path) -> dict:
    clients = _required("LOOPWAY_NODE_CLIENTS", "the Node clients (openai, ai, @ai-sdk/openai, node@22)")
    work = tmp / "js"
    work.mkdir(exist_ok=True)
    (work / "node_modules").symlink_to(clients / "node_modules")  # ES modules resolve from the script's folder
    shutil.copy(HERE / "js" / script, work / script)
    return _json_of([str(clients / "node_modules" / ".bin" / "node"), str(work / script), *args], work)


def run_python(script: str, *args: str) -> dict:
    python = _required("LOOPWAY_CLIENTS_PYTHON", "the Python clients (openai-agents, langchain-openai, pydantic-ai)")
    return _json_of([str(python), str(HERE / "py" / script), *args], HERE)


def _json_of(command: list[str], cwd: Path) -> dict:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    return json.loads(done.stdout.strip().splitlines()[-1])
