"""Deterministic JSON values that satisfy a JSON schema (the subset tools and formats use), on a budget.

Used for tool-call arguments and for ``text.format`` ``json_schema`` answers. ``fill`` picks the
value for string slots that should carry meaning (a target path, a word from the message).

A schema can ask for more than any answer may hold (``minItems: 30000`` nested twice is 900 million
values; a ``$ref`` cycle never ends; ``minLength: 10**9``), and the schema comes from the client.
So a value is built against a ``Budget``: characters of JSON, nesting depth and a time limit. Once
spent, arrays stop growing and strings stop lengthening, the value stays well-formed, and the budget
says it ran out, so the engine ends the answer as a model does at its token limit (``length``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Fill = Callable[[str, dict[str, Any]], str | None]

MAX_DEPTH = 32
CHARS_PER_TOKEN = 4  # generous: JSON rarely packs more characters into a token, so a spent budget
# of 4 x the token limit always reaches that limit


class Budget:
    """What building one value may cost."""

    __slots__ = ("chars", "deadline", "exhausted", "_checks")

    def __init__(self, chars: int, seconds: float = 0.05) -> None:
        self.chars = chars
        self.deadline = time.monotonic() + seconds
        self.exhausted = False
        self._checks = 0

    @classmethod
    def for_tokens(cls, tokens: int) -> Budget:
        return cls(CHARS_PER_TOKEN * tokens + 64)

    def spend(self, chars: int) -> bool:
        """Take ``chars``; False (and exhausted from then on) once the budget or the time is spent."""
        if self.exhausted:
            return False
        self.chars -= chars
        self._checks += 1
        if self.chars < 0 or (self._checks % 256 == 0 and time.monotonic() > self.deadline):
            self.exhausted = True
        return not self.exhausted


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    seen = 0
    while isinstance(ref, str) and ref.startswith("#/") and seen < 32:
        node: Any = root
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        schema = node if isinstance(node, dict) else {}
        ref = schema.get("$ref")
        seen += 1
    return schema


def instance(schema: Any, fill: Fill, budget: Budget | None = None) -> Any:
    """A value for ``schema``; with ``budget``, never costing more than it allows."""
    budget = budget or Budget(1 << 20)
    return _instance(schema, _Ctx(fill, budget, schema if isinstance(schema, dict) else {}), "value", 0)


class _Ctx:
    __slots__ = ("fill", "budget", "root")

    def __init__(self, fill: Fill, budget: Budget, root: dict[str, Any]) -> None:
        self.fill, self.budget, self.root = fill, budget, root


def _instance(schema: Any, ctx: _Ctx, name: str, depth: int) -> Any:
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        ctx.budget.exhausted = ctx.budget.exhausted or depth > MAX_DEPTH
        return None
    schema = _resolve(schema, ctx.root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = [o for o in schema.get(key, []) if isinstance(o, dict) and o.get("type") != "null"]
        if options:
            return _instance(options[0], ctx, name, depth + 1)
    if schema.get("allOf"):
        return _instance(_merged(schema["allOf"], ctx.root), ctx, name, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    build = _BY_TYPE.get(kind)
    return build(schema, ctx, name, depth) if build is not None else None


def _merged(parts: Any, root: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts if isinstance(parts, list) else []:
        part = _resolve(part, root) if isinstance(part, dict) else {}
        merged.setdefault("properties", {}).update(part.get("properties", {}))
        merged["required"] = [*merged.get("required", []), *part.get("required", [])]
        merged["type"] = part.get("type", merged.get("type"))
    return merged


def _object(schema: dict[str, Any], ctx: _Ctx, name: str, depth: int) -> dict[str, Any]:
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        return {}
    required = schema.get("required", list(properties))
    required = set(required) if isinstance(required, list) else set()
    out: dict[str, Any] = {}
    ctx.budget.spend(2)
    for key in properties:
        if key in required:
            ctx.budget.spend(len(key) + 4)
            out[key] = _instance(properties[key], ctx, key, depth + 1)
    return out


def _number_field(schema: dict[str, Any], key: str, default: int) -> int:
    value = schema.get(key, default)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _array(schema: dict[str, Any], ctx: _Ctx, name: str, depth: int) -> list[Any]:
    count = max(1, _number_field(schema, "minItems", 1))
    if "maxItems" in schema:
        count = min(count, _number_field(schema, "maxItems", count))
    out: list[Any] = []
    ctx.budget.spend(2)
    for _ in range(count):
        if not ctx.budget.spend(1):
            break
        out.append(_instance(schema.get("items", {}), ctx, name, depth + 1))
    return out


def _string(schema: dict[str, Any], ctx: _Ctx, name: str, depth: int) -> str:
    value = ctx.fill(name, schema) or name
    missing, high = _number_field(schema, "minLength", 0) - len(value), schema.get("maxLength")
    if missing > 0:
        room = min(missing, max(0, ctx.budget.chars))
        value += "x" * room
        ctx.budget.exhausted = ctx.budget.exhausted or room < missing
    if isinstance(high, int) and not isinstance(high, bool):
        value = value[: max(0, high)]
    ctx.budget.spend(len(value) + 2)
    return value


def _integer(schema: dict[str, Any], ctx: _Ctx, name: str, depth: int) -> int:
    ctx.budget.spend(4)
    if "minimum" in schema:
        value = _number_field(schema, "minimum", 0)
    elif "exclusiveMinimum" in schema:
        value = max(1, _number_field(schema, "exclusiveMinimum", 0) + 1)
    else:
        value = 1
    if "maximum" in schema:
        value = min(value, _number_field(schema, "maximum", value))
    return value


def _number(schema: dict[str, Any], ctx: _Ctx, name: str, depth: int) -> float:
    return float(_integer(schema, ctx, name, depth))


_BY_TYPE: dict[str, Callable[[dict[str, Any], _Ctx, str, int], Any]] = {
    "object": _object,
    "array": _array,
    "string": _string,
    "integer": _integer,
    "number": _number,
    "boolean": lambda s, c, n, d: False,
    "null": lambda s, c, n, d: None,
}
