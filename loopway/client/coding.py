"""The coding agent's tools, confined to one work directory.

Paths are resolved inside the work directory (symlinks included) and refused outside it.
``run_command`` runs a shell command there with a timeout and an output cap; it is not a sandbox
beyond its working directory, so point the agent at a directory you are willing to let it change.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from loopway.client.tools import ToolRegistry

MAX_OUTPUT_CHARS = 20_000
MAX_LIST = 500


class Workspace:
    def __init__(self, root: str | Path, *, command_timeout_s: float = 60.0) -> None:
        self.root = Path(root).resolve()
        self.command_timeout_s = command_timeout_s

    def path(self, relative: str) -> Path:
        candidate = (self.root / relative).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            raise PermissionError(f"{relative!r} is outside the work directory")
        return candidate

    def list_files(self, path: str = ".") -> str:
        """List the files under a directory of the work directory, recursively, with sizes."""
        base = self.path(path)
        files = sorted(p for p in base.rglob("*") if p.is_file() and not _hidden(p.relative_to(self.root)))
        lines = [f"{p.relative_to(self.root)}  ({p.stat().st_size} bytes)" for p in files[:MAX_LIST]]
        if len(files) > MAX_LIST:
            lines.append(f"... and {len(files) - MAX_LIST} more")
        return "\n".join(lines) or "(no files)"

    def read_file(self, path: str) -> str:
        """Read a text file of the work directory."""
        return _capped(self.path(path).read_text(errors="replace"))

    def search(self, pattern: str, path: str = ".") -> str:
        """Search the work directory's text files for a regular expression; returns file:line: text."""
        regex = re.compile(pattern)
        hits = []
        for file in sorted(self.path(path).rglob("*")):
            if not file.is_file() or _hidden(file.relative_to(self.root)):
                continue
            try:
                text = file.read_text()
            except (UnicodeDecodeError, OSError):
                continue
            for number, line in enumerate(text.splitlines(), 1):
                if regex.search(line):
                    hits.append(f"{file.relative_to(self.root)}:{number}: {line}")
        return _capped("\n".join(hits) or "(no matches)")

    def write_file(self, path: str, contents: str) -> str:
        """Create or overwrite a file of the work directory with the given contents."""
        target = self.path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(contents)
        return f"wrote {len(contents)} characters to {target.relative_to(self.root)}"

    def run_command(self, command: str) -> str:
        """Run a shell command in the work directory; returns its exit code and output."""
        try:
            done = subprocess.run(
                command,
                shell=True,
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=self.command_timeout_s,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or "") if isinstance(exc.stdout, str) else ""
            return _capped(f"timed out after {self.command_timeout_s:g} s\n{output}")
        return _capped(f"exit code {done.returncode}\n{done.stdout}{done.stderr}")

    def registry(self) -> ToolRegistry:
        tools = ToolRegistry()
        for fn in (self.list_files, self.read_file, self.search, self.write_file, self.run_command):
            tools.register(fn)
        return tools


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") or part == "__pycache__" for part in relative.parts)


def _capped(text: str) -> str:
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    return text[:MAX_OUTPUT_CHARS] + f"\n... ({len(text) - MAX_OUTPUT_CHARS} more characters cut)"
