"""Deterministic JSON values that satisfy a JSON schema (the subset tools and formats use).

Used for tool-call arguments and for ``text.format`` ``json_schema`` answers. ``fill`` picks the
value for string slots that should carry meaning (a target path, a word from the message).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Fill = Callable[[str, dict[str, Any]], str | None]


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


def instance(schema: Any, fill: Fill, name: str = "value", root: dict[str, Any] | None = None) -> Any:
    if not isinstance(schema, dict):
        return None
    root = root if root is not None else schema
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = [o for o in schema.get(key, []) if isinstance(o, dict) and o.get("type") != "null"]
        if options:
            return instance(options[0], fill, name, root)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            part = _resolve(part, root)
            merged.setdefault("properties", {}).update(part.get("properties", {}))
            merged["required"] = [*merged.get("required", []), *part.get("required", [])]
            merged["type"] = part.get("type", merged.get("type"))
        return instance(merged, fill, name, root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    return _BY_TYPE.get(kind, lambda s, f, n, r: None)(schema, fill, name, root)


def _object(schema: dict[str, Any], fill: Fill, name: str, root: dict[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties", {})
    required = schema.get("required", list(properties))
    return {key: instance(properties[key], fill, key, root) for key in properties if key in required}


def _array(schema: dict[str, Any], fill: Fill, name: str, root: dict[str, Any]) -> list[Any]:
    count = max(1, int(schema.get("minItems", 1)))
    if "maxItems" in schema:
        count = min(count, int(schema["maxItems"]))
    return [instance(schema.get("items", {}), fill, name, root) for _ in range(count)]


def _string(schema: dict[str, Any], fill: Fill, name: str, root: dict[str, Any]) -> str:
    value = fill(name, schema) or name
    low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
    if len(value) < low:
        value = value + "x" * (low - len(value))
    if high is not None:
        value = value[: int(high)]
    return value


def _integer(schema: dict[str, Any], fill: Fill, name: str, root: dict[str, Any]) -> int:
    low = schema.get("minimum", schema.get("exclusiveMinimum", 0) + (1 if "exclusiveMinimum" in schema else 0))
    value = max(int(low), 1 if "minimum" not in schema else int(low))
    if "maximum" in schema:
        value = min(value, int(schema["maximum"]))
    return value


def _number(schema: dict[str, Any], fill: Fill, name: str, root: dict[str, Any]) -> float:
    return float(_integer(schema, fill, name, root))


_BY_TYPE: dict[str, Callable[..., Any]] = {
    "object": _object,
    "array": _array,
    "string": _string,
    "integer": _integer,
    "number": _number,
    "boolean": lambda s, f, n, r: False,
    "null": lambda s, f, n, r: None,
}
