"""The coding agent's tools, and ``loopway agent`` fixing the example repository end to end."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loopway.client.coding import MAX_OUTPUT_CHARS, Workspace
from tests.conftest import Server

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fix-average"


def test_paths_outside_the_work_directory_are_refused(tmp_path: Path):
    (tmp_path / "inside.txt").write_text("ok")
    (tmp_path / "escape").symlink_to("/etc")
    ws = Workspace(tmp_path)
    assert ws.read_file("inside.txt") == "ok"
    for bad in ("../x", "/etc/passwd", "escape/hostname"):
        with pytest.raises(PermissionError):
            ws.read_file(bad)
    with pytest.raises(PermissionError):
        ws.write_file("../evil.txt", "x")


def test_list_search_write(tmp_path: Path):
    ws = Workspace(tmp_path)
    ws.write_file("pkg/mod.py", "def f():\n    return 42\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("hidden")
    assert ws.list_files() == "pkg/mod.py  (23 bytes)"
    assert ws.search(r"return \d+") == "pkg/mod.py:2:     return 42"


def test_run_command_has_a_timeout_and_an_output_cap(tmp_path: Path):
    ws = Workspace(tmp_path, command_timeout_s=0.5)
    assert ws.run_command("echo hi; exit 3") == "exit code 3\nhi\n"
    assert ws.run_command("sleep 5").startswith("timed out after 0.5 s")
    capped = ws.run_command(f"{sys.executable} -c \"print('x' * {MAX_OUTPUT_CHARS * 2})\"")
    assert len(capped) < MAX_OUTPUT_CHARS + 100 and capped.endswith("characters cut)")


@pytest.mark.parametrize("transport", ["ws", "http"])
def test_loopway_agent_fixes_the_example_repository(tmp_path: Path, transport: str):
    work = tmp_path / "repo"
    shutil.copytree(EXAMPLE / "repo", work)
    failing = subprocess.run([sys.executable, "-m", "unittest", "-q"], cwd=work, capture_output=True, text=True)
    assert failing.returncode != 0
    server = Server(tmp_path, "--sim-trace", str(EXAMPLE / "trace.json"), "--store", "memory")
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "loopway",
                "agent",
                "--base-url",
                server.url,
                "--workdir",
                str(work),
                "--transport",
                transport,
                "Make the tests pass.",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    assert "run_command" in done.stdout and "Both tests pass" in done.stdout
    passing = subprocess.run([sys.executable, "-m", "unittest", "-q"], cwd=work, capture_output=True, text=True)
    assert passing.returncode == 0, passing.stderr
