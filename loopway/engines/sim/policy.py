"""What the simulated model says: a small deterministic agent, or a scripted trace.

The default policy acts like a careful little coding agent. Forced to call a tool, it calls it.
Offered tools, it looks at the latest user message for targets (paths like ``src/app.py``, quoted
strings) that no tool call has touched yet and calls the best-matching tool on the next one
(all of them at once when parallel calls are allowed and the message asks for them together).
Otherwise it answers in text that refers to the request and to the tool results it saw.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from loopway.engines.base import EngineRequest
from loopway.engines.sim.schema_instance import Budget, instance
from loopway.protocol.items import (
    FunctionCall,
    FunctionCallOutput,
    Item,
    McpApprovalRequest,
    McpCall,
    Message,
    Reasoning,
    text_of,
)
from loopway.protocol.tools import FunctionTool


class PlannedText(msgspec.Struct):
    text: str


class PlannedCall(msgspec.Struct):
    name: str
    arguments: str
    call_id: str | None = None
    namespace: str | None = None  # the namespace tool that declares it (Codex's ``multi_agent_v1``)


Plan = list[PlannedText | PlannedCall]

_PATH = re.compile(r"(?<![\w/.-])(?:\.{0,2}/)?(?:[\w.-]+/)*[\w-]+\.[A-Za-z0-9]{1,8}\b")
_QUOTED = re.compile(r"[\"'`“‘]([^\"'`”’\n]{1,120})[\"'`”’]")
_TOGETHER = re.compile(r"\b(both|all|each|together|in parallel|simultaneously|at once)\b", re.I)
_VERBS = {
    "read": ("read", "open", "show", "cat", "view", "look", "inspect", "check"),
    "write": ("write", "edit", "fix", "patch", "change", "update", "create", "modify", "apply"),
    "run": ("run", "test", "exec", "execute", "build", "shell", "command"),
    "search": ("search", "find", "grep", "look for", "locate"),
    "list": ("list", "ls", "directory", "folder", "files in"),
    "weather": ("weather", "temperature", "forecast"),
}
_TARGET_SLOTS = (
    "path",
    "file",
    "filename",
    "file_path",
    "filepath",
    "target",
    "location",
    "city",
    "query",
    "pattern",
    "command",
    "cmd",
    "name",
    "url",
    "q",
    "input",
    "text",
)
WORDS = (
    "the",
    "change",
    "keeps",
    "behaviour",
    "stable",
    "and",
    "the",
    "tests",
    "cover",
    "it",
    "so",
    "next",
    "step",
    "is",
    "small",
    "clear",
    "code",
    "path",
    "reads",
    "well",
    "result",
    "looks",
    "right",
)


def stable_seed(*parts: object) -> int:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def latest_user_index(items: Sequence[Item]) -> int:
    """The latest user message that says something (clients such as ``llm`` send empty ones)."""
    for i in range(len(items) - 1, -1, -1):
        item = items[i]
        if isinstance(item, Message) and item.role == "user" and text_of(item.content).strip():
            return i
    return -1


def model_turns(items: Sequence[Item]) -> int:
    """How many model turns the context holds: runs of consecutive model-output items, a run also
    ending after MCP calls (which loopway ran within the response)."""
    turns, inside, after_mcp = 0, False, False
    for item in items:
        output = isinstance(item, (FunctionCall, McpCall, Reasoning)) or (
            isinstance(item, Message) and item.role == "assistant"
        )
        # An MCP call carries its own result: the model's next output after it is a new turn (the
        # next engine round of the same response), calls made together are one.
        if output and (not inside or (after_mcp and not isinstance(item, McpCall))):
            turns += 1
        inside, after_mcp = output, isinstance(item, McpCall)
    return turns


FOCUS_CHARS = 4096


def focus(message: str) -> str:
    """What the policy reads of a long message: its start and its end (where requests are written)."""
    if len(message) <= 2 * FOCUS_CHARS:
        return message
    return message[:FOCUS_CHARS] + "\n" + message[-FOCUS_CHARS:]


def targets_of(text: str) -> list[str]:
    found: list[str] = []
    for match in _QUOTED.finditer(text):
        found.append(match.group(1).strip())
    for match in _PATH.finditer(text):
        if not any(match.group(0) in f for f in found):
            found.append(match.group(0))
    return [t for i, t in enumerate(found) if t and t not in found[:i]]


# What a tool is for, from its name (first) and the parameter it takes: a role the message can ask for.
_ROLE_NAMES = {
    "shell": ("exec", "shell", "bash", "terminal", "command", "run"),
    "read": ("read", "open", "cat", "view", "show", "get_file", "file_content"),
    "search": ("search", "grep", "find", "rg"),
    "list": ("list", "ls", "tree", "glob", "dir"),
    "write": ("write", "edit", "patch", "create_file", "apply", "replace"),
}
_ROLE_SLOTS = {
    "shell": ("cmd", "command", "commands", "script"),
    "read": ("path", "file", "file_path", "filepath", "filename"),
    "search": ("pattern", "query", "regex"),
}
_PROGRAMS = frozenset(
    "ls cat grep rg find pwd echo head tail wc sed awk python python3 pytest pip npm node make git cargo go uv "
    "bash sh cd mkdir touch cp mv rm diff sort uniq which env date tree du df curl".split()
)
_IMAGE = re.compile(r"\.(png|jpe?g|gif|webp|bmp|svg)$", re.I)


def tool_roles(tool: FunctionTool) -> set[str]:
    """The roles a tool plays: ``exec_command`` (a ``cmd`` slot) is a shell, ``read_file`` reads, ..."""
    name = tool.name.lower()
    slots = set((tool.parameters or {}).get("properties") or {}) if isinstance(tool.parameters, dict) else set()
    roles = {role for role, words in _ROLE_NAMES.items() if any(w in name for w in words)}
    roles |= {role for role, names in _ROLE_SLOTS.items() if slots & set(names)}
    if "image" in name:
        roles.discard("read")
        roles.add("image")
    if "shell" in roles and not slots & set(_ROLE_SLOTS["shell"]):
        roles.discard("shell")  # "run_tests" runs something, but takes no command: a runner
        roles.add("runner")
    return roles


def intent_of(message: str, target: str) -> str:
    """What the message asks to do with one target: run it, read it, search for it, list it, write it."""
    lowered = message.lower()
    first = target.split()[0].lower() if target.split() else ""
    is_path = bool(_PATH.fullmatch(target.strip()))
    at = lowered.find(target.lower())
    just_before = lowered[max(0, at - 24) : at] if at >= 0 else ""
    if first in _PROGRAMS or re.search(r"\b(run|exec|execute|test)\W*$", just_before):
        return "run"
    if not is_path and re.search(r"\b(run|exec|execute)\b", lowered):
        return "run"
    if re.search(r"\b(search|grep|find|look for)\b", lowered) and not is_path:
        return "search"
    if re.search(r"\b(list|ls)\b", lowered) and (target.endswith("/") or not is_path):
        return "list"
    if re.search(r"\b(write|edit|fix|patch|modify|create)\b", lowered):
        return "write"
    return "read" if is_path else "run" if " " in target.strip() else "read"


def _fallback_argument(intent: str, target: str) -> str:
    """How a shell tool does what the message asked when no tool has that role."""
    return {"read": f"cat {target}", "list": f"ls {target}", "search": f"grep -rn '{target}' ."}.get(intent, target)


def _overlap(tool: FunctionTool, message: str) -> int:
    """Words the message shares with the tool's name and the first sentence of its description."""
    summary = (tool.description or "").strip().split(".")[0][:160]
    blob = set(re.findall(r"[a-z]+", f"{tool.name.replace('_', ' ')} {summary}".lower())) - _GENERIC
    return len(set(re.findall(r"[a-z]+", message.lower())) & blob)


def choose(tools: Sequence[FunctionTool], message: str, target: str) -> tuple[FunctionTool, str]:
    """The tool for one target, and the value for its target slot.

    A tool whose role is what the message asks for wins; with none, a shell does it the shell's way
    (``cat``, ``ls``, ``grep``); then the tool the message's words name best, the earliest on a tie.
    """
    intent = intent_of(message, target)
    wanted = "shell" if intent == "run" else intent

    def score(tool: FunctionTool) -> tuple[int, int, int]:
        roles = tool_roles(tool)
        if wanted in roles and not (wanted == "read" and _IMAGE.search(target)):
            fit = 3
        elif intent == "run" and "runner" in roles:
            fit = 3
        elif "image" in roles and _IMAGE.search(target):
            fit = 3
        elif "shell" in roles and intent in ("read", "list", "search"):
            fit = 2
        else:
            fit = 0
        return fit, _overlap(tool, message), -tools.index(tool)

    tool = max(tools, key=score)
    roles = tool_roles(tool)
    if "shell" in roles and wanted not in roles:
        return tool, _fallback_argument(intent, target)
    return tool, target


_GENERIC = frozenset(
    {
        "get",
        "set",
        "run",
        "do",
        "make",
        "call",
        "fetch",
        "tool",
        "the",
        "a",
        "an",
        "for",
        "to",
        "of",
        "and",
        "or",
        "in",
        "on",
        "with",
        "current",
        "data",
        "info",
        "function",
    }
)
_SUBJECT = re.compile(r"\b(?:in|for|about|at|of|on)\s+((?:[A-Z][\w.-]*)(?:\s+[A-Z][\w.-]*)*)")


def asked_for(tools: Sequence[FunctionTool], message: str) -> tuple[FunctionTool, str] | None:
    """A tool whose name the message names (``get_weather`` for "what's the weather ..."), and the
    subject to call it on (a proper noun after "in", "for", ...; else the message's last word)."""
    words = set(re.findall(r"[a-z]+", message.lower()))
    for tool in tools:
        name_words = set(re.findall(r"[a-z]+", tool.name.lower())) - _GENERIC
        if name_words & words:
            match = _SUBJECT.search(message)
            fallback = re.findall(r"[\w.-]+", message)
            return tool, match.group(1) if match else (fallback[-1] if fallback else tool.name)
    return None


def arguments_for(tool: FunctionTool, target: str, message: str, budget: Budget | None = None) -> str:
    schema = tool.parameters or {"type": "object", "properties": {}}
    used: list[bool] = [False]

    def fill(name: str, prop: dict[str, Any]) -> str | None:
        if not used[0] and (name.lower() in _TARGET_SLOTS or prop.get("format") in ("path", "uri")):
            used[0] = True
            return target
        return None

    value = instance(schema, fill, budget)
    if not used[0] and isinstance(value, dict):
        # No slot named for the target: put it in the first string property.
        for key, sub in (schema.get("properties") or {}).items():
            if isinstance(sub, dict) and sub.get("type") == "string" and key in value and not sub.get("enum"):
                value[key] = target
                break
    return msgspec.json.encode(value).decode()


class DefaultPolicy:
    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def plan(self, request: EngineRequest, budget: Budget) -> Plan:
        """What to say; what it builds from schemas stays within ``budget`` (``budget.exhausted`` if cut)."""
        items = request.items
        user_at = latest_user_index(items)
        message = focus(text_of(items[user_at].content)) if user_at >= 0 else ""  # type: ignore[union-attr]
        if request.json_schema is not None and request.tool_choice.mode != "required":
            return [PlannedText(self._structured(request, message, budget))]
        tools = self._callable(request)
        if tools:
            calls = self._calls(request, tools, items[user_at + 1 :], message, budget)
            if calls:
                return calls
        return [PlannedText(self._answer(items, user_at, message))]

    def _callable(self, request: EngineRequest) -> list[FunctionTool]:
        if request.tool_choice.mode == "none":
            return []
        names = request.tool_choice.names
        return [t for t in request.tools.functions if names is None or t.name in names]

    def _calls(
        self, request: EngineRequest, tools: list[FunctionTool], since_user: Sequence[Item], message: str, budget: Budget
    ) -> Plan:
        calls = [i for i in since_user if isinstance(i, (FunctionCall, McpCall, McpApprovalRequest))]
        acted = " ".join(i.arguments for i in calls)  # an MCP call asked for approval counts as tried
        called = {i.name for i in calls}
        pending = [t for t in targets_of(message) if t not in acted]
        required = request.tool_choice.mode == "required"
        if not pending:  # targets done: a tool the message names and nothing has called yet (a handoff)
            asked = asked_for([t for t in tools if t.name not in called], message)
            if asked is not None:
                tool, subject = asked
                arguments = arguments_for(tool, subject, message, budget)
                return [PlannedCall(name=tool.name, arguments=arguments, namespace=tool.namespace)]
        if not pending:
            if not required:
                return []
            words = re.findall(r"[A-Za-z0-9_./-]{3,}", message)
            pending = [words[-1] if words else "default"]
        if not (request.parallel_tool_calls and len(pending) > 1 and _TOGETHER.search(message)):
            pending = pending[:1]
        plan: Plan = []
        for target in pending:
            tool, value = choose(tools, message, target)
            plan.append(
                PlannedCall(name=tool.name, arguments=arguments_for(tool, value, message, budget), namespace=tool.namespace)
            )
        return plan

    def _structured(self, request: EngineRequest, message: str, budget: Budget) -> str:
        words = re.findall(r"[A-Za-z][A-Za-z0-9_-]{2,}", message) or ["value"]
        counter = [0]

        def fill(name: str, prop: dict[str, Any]) -> str:
            counter[0] += 1
            return words[(stable_seed(self.seed, name) + counter[0]) % len(words)]

        assert request.json_schema is not None
        return msgspec.json.encode(instance(request.json_schema.schema, fill, budget)).decode()

    def _answer(self, items: Sequence[Item], user_at: int, message: str) -> str:
        rng = random.Random(stable_seed(self.seed, message, len(items)))
        calls = {i.call_id: i for i in items[user_at + 1 :] if isinstance(i, FunctionCall)}
        sentences = []
        topic = " ".join(message.split()[:12]) or "your request"
        sentences.append(f"You asked: \u201c{topic}\u201d.")
        for item in items[user_at + 1 :]:
            if isinstance(item, (FunctionCallOutput, McpCall)):
                output, what = _result(item, calls)
                lines = [line.strip() for line in output.splitlines() if line.strip()]
                summary = f"I ran {what}: {len(output.splitlines())} lines, {len(output)} characters"
                if lines:
                    summary += f", starting with \u201c{lines[0][:80]}\u201d"
                if len(lines) > 1:
                    summary += f" and ending with \u201c{lines[-1][:80]}\u201d"
                sentences.append(summary + ".")
        for _ in range(rng.randint(3, 9)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(6, 14))]
            sentences.append(" ".join(words).capitalize() + ".")
        return " ".join(sentences)


def _result(item: FunctionCallOutput | McpCall, calls: dict[str, FunctionCall]) -> tuple[str, str]:
    """A tool's answer, and the call it answers (an MCP call is both)."""
    if isinstance(item, McpCall):
        answer = item.output if item.error is None else msgspec.json.encode(item.error).decode()
        return answer or "", f"{item.server_label}.{item.name}({item.arguments})"
    call = calls.get(item.call_id)
    return text_of(item.output), f"{call.name}({call.arguments})" if call else f"call {item.call_id}"
