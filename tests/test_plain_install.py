"""The README's install-and-serve, as a user gets it: ``pip install -e .`` without the test extra.

The test extra pins some libraries (``openai[realtime]`` holds ``websockets`` below 16) that a plain
install resolves to newer versions; a server that worked in the test venv once failed to start from
the plain one. ``.ci/run`` makes that venv and sets ``LOOPWAY_PLAIN_PYTHON`` to its python.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from openai import OpenAI

from tests.conftest import MODEL, Server


def plain_python() -> str:
    configured = os.environ.get("LOOPWAY_PLAIN_PYTHON")
    if configured:
        return configured
    if os.environ.get("CI"):
        pytest.fail("no plain install to test: .ci/run makes one (LOOPWAY_PLAIN_PYTHON)")
    pytest.skip("no plain install to test (set LOOPWAY_PLAIN_PYTHON to the python of a 'pip install -e .' venv)")


def test_a_plain_install_serves_http_and_websocket_turns(tmp_path: Path):
    python = plain_python()
    versions = subprocess.run(
        [python, "-c", "import websockets, uvicorn; print(websockets.__version__, uvicorn.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    server = Server(tmp_path, "--store", "memory", python=python)
    try:
        client = OpenAI(base_url=server.url, api_key="unused")
        first = client.responses.create(model=MODEL, input="Please read src/app.py")
        assert first.status == "completed", versions
        with client.responses.connect() as conn:
            conn.response.create(model=MODEL, input="and then?", store=False)
            types = []
            for event in conn:
                types.append(event.type)
                if event.type in ("response.completed", "error"):
                    break
        assert types[0] == "response.created" and types[-1] == "response.completed", (versions, types)
    finally:
        server.stop()
