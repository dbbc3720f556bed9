"""The coding agent's tools, and ``loopway agent`` fixing the example repository end to end."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
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
    assert len(capped) < MAX_OUTPUT_CHARS + 100 and capped.endswith("bytes of output cut)")


def test_search_and_list_never_follow_a_symlink_out_of_the_work_directory(tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("SECRET=hunter2\n")
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("nothing here\n")
    (work / "link.txt").symlink_to(outside / "secret.txt")
    (work / "linkdir").symlink_to(outside)
    ws = Workspace(work)
    assert ws.search("SECRET") == "(no matches)"
    assert "link" not in ws.list_files()


def test_read_file_refuses_what_is_not_a_regular_file(tmp_path: Path):
    os.mkfifo(tmp_path / "pipe")
    ws = Workspace(tmp_path)
    with pytest.raises(OSError, match="not a regular file"):
        ws.read_file("pipe")  # would block forever on open() for reading
    with pytest.raises(OSError, match="not a regular file"):
        ws.read_file(".")


def test_a_command_timeout_kills_its_children_and_keeps_what_it_printed(tmp_path: Path):
    ws = Workspace(tmp_path, command_timeout_s=1.0)
    result = ws.run_command("(sleep 30; touch survived) & echo started; echo $! > child.pid; sleep 30")
    assert result.startswith("timed out after 1 s") and "started" in result
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited


def test_huge_command_output_is_capped_while_it_is_read(tmp_path: Path):
    ws = Workspace(tmp_path, command_timeout_s=60)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = ws.run_command("head -c 300000000 /dev/zero | tr '\\0' x")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert result.startswith("exit code 0") and result.endswith("bytes of output cut)")
    assert len(result) < MAX_OUTPUT_CHARS + 200 and grown_mib < 50, grown_mib


def test_a_catastrophic_pattern_is_stopped_by_the_search_budget(tmp_path: Path):
    (tmp_path / "a.txt").write_text("a" * 40 + "!\n")
    ws = Workspace(tmp_path, search_budget_s=0.5)
    started = time.monotonic()
    assert "search stopped" in ws.search(r"(a|aa)+$")
    assert time.monotonic() - started < 3


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
