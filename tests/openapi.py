"""Validate what loopway emits against OpenAI's official schema.

The schema is a trimmed copy kept in the repository (``tests/data/openapi/``), so a plain clone
tests itself; ``LOOPWAY_OPENAPI`` may point at another copy (YAML or JSON), such as the full file.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent


TRIMMED = ROOT / "tests" / "data" / "openapi" / "openai-openapi.json"


def spec_path() -> Path:
    override = os.environ.get("LOOPWAY_OPENAPI")
    if override and not Path(override).is_file():
        raise FileNotFoundError(f"LOOPWAY_OPENAPI names {override}, which is not a file")
    return Path(override) if override else TRIMMED


@lru_cache(maxsize=1)
def components() -> dict[str, Any]:
    path = spec_path()
    with path.open() as f:
        if path.suffix == ".json":
            return _nullable(json.load(f)["components"])
        return _nullable(yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))["components"])


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` (which the Chat Completions schemas still use) as JSON Schema:
    the schema, or null. JSON Schema validators ignore the keyword, and would refuse every null."""
    if isinstance(node, list):
        return [_nullable(value) for value in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable(value) for key, value in node.items()}
    if node.pop("nullable", False) is True:
        return {"anyOf": [node, {"type": "null"}]}
    return node


@lru_cache(maxsize=None)
def validator(name: str) -> jsonschema.protocols.Validator:
    schema = {"$ref": f"#/components/schemas/{name}", "components": components()}
    return jsonschema.Draft202012Validator(schema)


@lru_cache(maxsize=1)
def event_schemas() -> dict[str, str]:
    """Event ``type`` → the schema name that describes it, from ``ResponseStreamEvent``."""
    schemas = components()["schemas"]
    out = {}
    for option in schemas["ResponseStreamEvent"]["anyOf"]:
        name = option["$ref"].rsplit("/", 1)[1]
        enum = schemas[name].get("properties", {}).get("type", {}).get("enum", [])
        if enum:
            out[enum[0]] = name
    return out


def validate(name: str, instance: Any) -> None:
    errors = sorted(validator(name).iter_errors(instance), key=lambda e: len(list(e.path)))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise AssertionError(f"{name} does not validate: {best.message} at {list(best.absolute_path)}")


def validate_event(event: dict[str, Any], *, websocket: bool = False) -> None:
    """A streamed event against the schema for its type (WS errors use ``ResponseWsError``)."""
    kind = event.get("type")
    if websocket and kind == "error":
        validate("ResponseWsError", event)
        return
    if kind not in event_schemas():
        if websocket and kind.startswith("response.steer."):
            return validate_steer_event(event)
        raise AssertionError(f"unknown event type {kind!r}")
    body = dict(event)
    if websocket:
        body.pop("stream_id", None)
        body = _without_steered_reason(body)
    validate(event_schemas()[kind], body)


def _without_steered_reason(event: dict[str, Any]) -> dict[str, Any]:
    """``incomplete_details.reason: "steered"`` is the WebSocket steering addition to the enum
    (responses-api.md §1.3, §3.4) that the OpenAPI file predates; validate the rest as usual."""
    response = event.get("response")
    if isinstance(response, dict) and (response.get("incomplete_details") or {}).get("reason") == "steered":
        event = {**event, "response": {**response, "incomplete_details": {"reason": "max_output_tokens"}}}
    return event


# Steering events are not in openai-openapi.yaml; their shapes follow spec/responses-api.md §1.3.
_STEER_REF = {
    "type": "object",
    "required": ["id", "previous_response_id"],
    "properties": {"id": {"type": "string"}, "previous_response_id": {"type": "string"}},
}
STEER_SCHEMAS: dict[str, dict[str, Any]] = {
    "response.steer.accepted": {
        "type": "object",
        "required": ["type", "sequence_number", "steer"],
        "properties": {"sequence_number": {"type": "integer"}, "steer": _STEER_REF},
    },
    "response.steer.pending": {
        "type": "object",
        "required": ["type", "sequence_number", "steer", "reason", "required_input"],
        "properties": {
            "sequence_number": {"type": "integer"},
            "steer": _STEER_REF,
            "reason": {"const": "waiting_for_required_input"},
            "required_input": {"type": "array"},
        },
    },
    "response.steer.failed": {
        "type": "object",
        "required": ["type", "sequence_number", "steer", "error"],
        "properties": {
            "sequence_number": {"type": "integer"},
            "error": {"type": "object", "required": ["type", "code", "message"]},
        },
    },
}


def validate_steer_event(event: dict[str, Any]) -> None:
    schema = STEER_SCHEMAS.get(event["type"])
    if schema is None:
        raise AssertionError(f"unknown steering event {event['type']!r}")
    jsonschema.validate(event, schema)
