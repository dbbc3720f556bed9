"""The MCP tests' servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mcp.notes import NotesServer


@pytest.fixture(scope="module")
def notes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotesServer]:
    server = NotesServer(tmp_path_factory.mktemp("notes"))
    yield server
    server.stop()


@pytest.fixture
def fresh_notes(tmp_path: Path) -> Iterator[NotesServer]:
    """A notes server of the test's own (for the ones that kill it)."""
    server = NotesServer(tmp_path)
    yield server
    server.stop()
