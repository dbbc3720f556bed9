"""The coding agent's tools, confined to one work directory, and bounded in what they can cost.

Every path (symlinks resolved) must lie inside the work directory, for reading, writing and
searching alike. Only regular files are read (a named pipe or a device would block or never end),
and at most ``MAX_READ_BYTES`` of each. ``run_command`` runs a shell command there in its own process
group, streams its output and keeps only the first ``MAX_OUTPUT_CHARS``, and on its timeout kills the
whole group (children included) and returns what it had printed. ``search`` uses the ``regex``
engine with a time budget, so a pattern such as ``(a|aa)+$`` cannot freeze the agent. None of this
is a sandbox beyond the work directory: point the agent at a directory you are willing to let it change.
"""

from __future__ import annotations

import os
import selectors
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import regex

from loopway.client.tools import ToolRegistry

MAX_OUTPUT_CHARS = 20_000
MAX_READ_BYTES = 4 * 1024 * 1024
MAX_LIST = 500
SEARCH_BUDGET_S = 5.0


class Workspace:
    def __init__(self, root: str | Path, *, command_timeout_s: float = 60.0, search_budget_s: float = SEARCH_BUDGET_S):
        self.root = Path(root).resolve()
        self.command_timeout_s = command_timeout_s
        self.search_budget_s = search_budget_s

    def path(self, relative: str | Path) -> Path:
        candidate = (self.root / relative).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            raise PermissionError(f"{str(relative)!r} is outside the work directory")
        return candidate

    def _files(self, base: Path) -> Iterator[Path]:
        """Regular files under ``base``, inside the work directory once symlinks are resolved."""
        for candidate in sorted(base.rglob("*")):
            relative = candidate.relative_to(self.root)
            if _hidden(relative):
                continue
            try:
                target = self.path(relative)
            except PermissionError:
                continue
            if _regular(target):
                yield candidate

    def list_files(self, path: str = ".") -> str:
        """List the files under a directory of the work directory, recursively, with sizes."""
        files = list(self._files(self.path(path)))
        lines = [f"{p.relative_to(self.root)}  ({p.stat().st_size} bytes)" for p in files[:MAX_LIST]]
        if len(files) > MAX_LIST:
            lines.append(f"... and {len(files) - MAX_LIST} more")
        return "\n".join(lines) or "(no files)"

    def read_file(self, path: str) -> str:
        """Read a text file of the work directory."""
        target = self.path(path)
        if not _regular(target):
            raise OSError(f"{path!r} is not a regular file")
        return _capped(_read_text(target))

    def search(self, pattern: str, path: str = ".") -> str:
        """Search the work directory's text files for a regular expression; returns file:line: text."""
        compiled = regex.compile(pattern)
        deadline = time.monotonic() + self.search_budget_s
        hits: list[str] = []
        try:
            for file in self._files(self.path(path)):
                try:
                    text = _read_text(file, errors="strict")
                except (UnicodeDecodeError, OSError):
                    continue
                for number, line in enumerate(text.splitlines(), 1):
                    if compiled.search(line, timeout=max(0.001, deadline - time.monotonic())):
                        hits.append(f"{file.relative_to(self.root)}:{number}: {line}")
        except TimeoutError:
            hits.append(f"(search stopped after {self.search_budget_s:g} s: simplify the pattern)")
        return _capped("\n".join(hits) or "(no matches)")

    def write_file(self, path: str, contents: str) -> str:
        """Create or overwrite a file of the work directory with the given contents."""
        target = self.path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(contents)
        return f"wrote {len(contents)} characters to {target.relative_to(self.root)}"

    def run_command(self, command: str) -> str:
        """Run a shell command in the work directory; returns its exit code and output."""
        process = subprocess.Popen(
            command,
            shell=True,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a timeout kills its children too
        )
        assert process.stdout is not None
        deadline = time.monotonic() + self.command_timeout_s
        output, dropped, finished = _drain(process.stdout.fileno(), deadline)
        try:  # its output may end before it does (a command that closes stdout and goes on)
            code = process.wait(timeout=max(0.0, deadline - time.monotonic())) if finished else None
        except subprocess.TimeoutExpired:
            code, finished = None, False
        if not finished:
            _kill_group(process)
            process.wait()
        process.stdout.close()
        text = output.decode(errors="replace")
        if dropped:
            text += f"\n... ({dropped} more bytes of output cut)"
        if not finished:
            return f"timed out after {self.command_timeout_s:g} s (process group killed)\n{text}"
        return f"exit code {code}\n{text}"

    def registry(self) -> ToolRegistry:
        tools = ToolRegistry()
        for fn in (self.list_files, self.read_file, self.search, self.write_file, self.run_command):
            tools.register(fn)
        return tools


def _drain(fd: int, deadline: float) -> tuple[bytes, int, bool]:
    """Read ``fd`` until EOF or the deadline: the first ``MAX_OUTPUT_CHARS`` bytes kept, the rest counted."""
    kept, dropped = bytearray(), 0
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                return bytes(kept), dropped, False
            chunk = os.read(fd, 65536)
            if not chunk:
                return bytes(kept), dropped, True
            room = MAX_OUTPUT_CHARS - len(kept)
            kept += chunk[:room]
            dropped += max(0, len(chunk) - room)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def _read_text(path: Path, errors: str = "replace") -> str:
    with path.open("rb") as f:
        return f.read(MAX_READ_BYTES).decode(errors=errors)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") or part == "__pycache__" for part in relative.parts)


def _capped(text: str) -> str:
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    return text[:MAX_OUTPUT_CHARS] + f"\n... ({len(text) - MAX_OUTPUT_CHARS} more characters cut)"
