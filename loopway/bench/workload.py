"""Benchmark workloads: coding-agent rollouts generated from a seed, shipped as trace files.

A workload is one sim trace (``turns[k].output``: what the model says at turn k) plus what the
client replays: each call's tool result and tool time (``turns[k].tool_results``), the
instructions, the tool schemas and the task. Shapes follow the reference benchmark: about 2.5k
tokens of instructions, 1.5k of tool schemas, heavy-tailed tool outputs (log-normal, median about
1.5k tokens), a short commentary before each call, some turns with parallel calls, and about 90k
tokens of context by the end of ``coding-40``.
"""

from __future__ import annotations

import json
import math
import random
from importlib import resources
from pathlib import Path
from typing import Any

from loopway.tokens.render import encoding

SHIPPED = {"coding-20": (20, 20), "coding-40": (40, 40), "coding-80": (80, 80)}  # name: (tool calls, seed)
MODEL = "loopway-sim"

_WORDS = (
    "request",
    "handler",
    "cache",
    "session",
    "token",
    "buffer",
    "config",
    "parser",
    "router",
    "client",
    "engine",
    "store",
    "record",
    "stream",
    "event",
    "item",
    "conversation",
    "lane",
    "limit",
    "retry",
)
_VERBS = ("load", "parse", "render", "validate", "resolve", "append", "flush", "encode", "decode", "dispatch")
_GUIDES = (
    "Prefer small, reviewable changes over sweeping rewrites.",
    "Run the narrowest test that proves a change before running the whole suite.",
    "Read a file before editing it, and never invent its contents.",
    "Keep functions short and give every name a meaning a newcomer can follow.",
    "When a command fails, read its output and explain the cause before retrying.",
    "Do not touch files outside the task's scope without saying why.",
    "Leave the repository in a state where every test passes.",
    "State assumptions explicitly and check them against the code.",
)
_TOOL_SPECS = [
    (
        "read_file",
        "Read a text file from the workspace and return its contents with line numbers.",
        {
            "path": "Workspace-relative path of the file to read.",
            "start_line": "First line to return (1-based).",
            "end_line": "Last line to return, inclusive.",
        },
    ),
    (
        "list_files",
        "List files under a directory of the workspace, recursively, with sizes.",
        {"path": "Directory to list, relative to the workspace root.", "pattern": "Optional glob filter."},
    ),
    (
        "search",
        "Search the workspace for a regular expression and return matching lines with file and line.",
        {
            "pattern": "Regular expression to look for.",
            "path": "Directory to search in.",
            "max_results": "Upper bound on the number of matches returned.",
        },
    ),
    (
        "apply_patch",
        "Apply a unified diff to files of the workspace; fails if a hunk does not apply cleanly.",
        {"patch": "The unified diff to apply, with file headers.", "dry_run": "Check without writing."},
    ),
    (
        "run_command",
        "Run a shell command in the workspace with a timeout and return its exit code and output.",
        {
            "command": "The command line to run.",
            "timeout_s": "Seconds before the command is killed.",
            "cwd": "Working directory, relative to the workspace root.",
        },
    ),
    (
        "write_file",
        "Create or overwrite a file of the workspace with the given contents.",
        {"path": "Workspace-relative path of the file to write.", "contents": "The full new contents."},
    ),
]


def _code_line(rng: random.Random) -> str:
    a, b, verb = rng.choice(_WORDS), rng.choice(_WORDS), rng.choice(_VERBS)
    indent = " " * (4 * rng.randint(0, 3))
    return rng.choice(
        [
            f"{indent}def {verb}_{a}(self, {b}: {b.title()}) -> {a.title()}:",
            f"{indent}{a} = self.{b}.{verb}({a}_id, timeout={rng.randint(1, 90)})",
            f"{indent}if not {a}.{verb}ed and {b} is not None:",
            f"{indent}return {a.title()}({b}={b}, count={rng.randint(0, 999)})",
            f"{indent}# {verb} the {a} before the {b} sees it (see issue #{rng.randint(10, 9999)})",
            f'{indent}raise {a.title()}Error(f"cannot {verb} {{{b}!r}}")',
        ]
    )


def _text_of_tokens(rng: random.Random, tokens: int, header: str) -> str:
    encode = encoding().encode_ordinary
    lines, count = [header], len(encode(header))
    while count < tokens:
        line = f"{len(lines):4d}  {_code_line(rng)}"
        lines.append(line)
        count += len(encode(line)) + 1
    return "\n".join(lines)


def _instructions(rng: random.Random, tokens: int = 2_500) -> str:
    encode = encoding().encode_ordinary
    parts = ["You are a coding agent working in a Python repository. Follow these rules."]
    while len(encode("\n".join(parts))) < tokens:
        topic = rng.choice(_WORDS)
        parts.append(
            f"On the {topic} layer: {rng.choice(_GUIDES)} {rng.choice(_GUIDES)} "
            f"When you {rng.choice(_VERBS)} a {topic}, {rng.choice(_GUIDES).lower()}"
        )
    return "\n".join(parts)


def _tools(tokens: int = 1_650) -> list[dict[str, Any]]:
    tools = []
    for name, description, params in _TOOL_SPECS:
        properties = {
            p: {
                "type": "integer"
                if p in ("start_line", "end_line", "max_results", "timeout_s")
                else "boolean"
                if p == "dry_run"
                else "string",
                "description": d,
            }
            for p, d in params.items()
        }
        tools.append(
            {
                "type": "function",
                "name": name,
                "description": description,
                "strict": False,
                "parameters": {"type": "object", "properties": properties, "required": [next(iter(params))]},
            }
        )
    encode = encoding().encode_ordinary
    extra = 0
    while len(encode(json.dumps(tools))) < tokens:  # long-form usage notes, as real agents ship
        tool = tools[extra % len(tools)]
        tool["description"] += f" Note {extra // len(tools) + 1}: {_GUIDES[extra % len(_GUIDES)]}"
        extra += 1
    return tools


def _call(rng: random.Random, step: int) -> tuple[dict[str, Any], str, float]:
    """One tool call: its item, the header of its result, and its tool time (seconds)."""
    module = f"src/{rng.choice(_WORDS)}_{step}.py"
    kind = rng.choices(["read_file", "search", "list_files", "run_command", "apply_patch"], [50, 15, 5, 20, 10])[0]
    if kind == "read_file":
        return _item(kind, {"path": module}), f"# {module}", rng.lognormvariate(math.log(0.02), 0.5)
    if kind == "search":
        pattern = f"{rng.choice(_VERBS)}_{rng.choice(_WORDS)}"
        return (
            _item(kind, {"pattern": pattern, "path": "src"}),
            f"matches for {pattern}:",
            rng.lognormvariate(math.log(0.05), 0.6),
        )
    if kind == "list_files":
        return _item(kind, {"path": "src"}), "files under src:", rng.lognormvariate(math.log(0.01), 0.4)
    if kind == "run_command":
        command = f"python -m pytest -q tests/test_{rng.choice(_WORDS)}.py"
        return _item(kind, {"command": command, "timeout_s": 120}), f"$ {command}", rng.lognormvariate(math.log(0.4), 0.7)
    patch = f"--- a/{module}\n+++ b/{module}\n@@ -1,3 +1,3 @@\n-old\n+new"
    return _item(kind, {"patch": patch}), f"patched {module}", rng.lognormvariate(math.log(0.03), 0.4)


def _item(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function_call", "name": name, "arguments": arguments}


def generate(
    tool_calls: int,
    seed: int,
    name: str | None = None,
    *,
    median_output_tokens: int = 1_500,
    sigma: float = 0.85,
    parallel_share: float = 0.12,
) -> dict[str, Any]:
    rng = random.Random(seed)
    turns: list[dict[str, Any]] = []
    step = 0
    while step < tool_calls:
        width = 2 if rng.random() < parallel_share and step + 2 <= tool_calls else 1
        commentary = " ".join(
            f"I will {rng.choice(_VERBS)} the {rng.choice(_WORDS)} next, since {rng.choice(_GUIDES).lower()}"
            for _ in range(rng.randint(1, 3))
        )
        output: list[dict[str, Any]] = [{"type": "message", "text": commentary}]
        results = []
        for _ in range(width):
            item, header, tool_time = _call(rng, step)
            size = min(12_000, max(40, int(rng.lognormvariate(math.log(median_output_tokens), sigma))))
            output.append(item)
            results.append({"output": _text_of_tokens(rng, size, header), "tool_time_s": round(tool_time, 4)})
            step += 1
        turns.append({"output": output, "tool_results": results})
    summary = " ".join(f"The {rng.choice(_WORDS)} now {rng.choice(_VERBS)}s correctly." for _ in range(25))
    turns.append({"output": [{"type": "message", "text": "All tests pass. " + summary}], "tool_results": []})
    return {
        "name": name or f"coding-{tool_calls}",
        "seed": seed,
        "model": MODEL,
        "instructions": _instructions(rng),
        "tools": _tools(),
        "task": "The test suite fails after the last refactor: find the cause, fix it, and make every test pass.",
        "turns": turns,
    }


def load(name_or_path: str) -> dict[str, Any]:
    """A shipped workload by name (``coding-40``) or a trace file by path."""
    if name_or_path in SHIPPED:
        return json.loads(resources.files("loopway.bench.workloads").joinpath(f"{name_or_path}.json").read_text())
    return json.loads(Path(name_or_path).read_text())
