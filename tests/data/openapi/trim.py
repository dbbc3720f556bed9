"""Trim OpenAI's OpenAPI file to the schemas loopway's tests validate against.

The full file is about 87,000 lines; the tests need a few hundred of its component schemas. This
keeps the named roots and everything they reference, so the copy in the repository stays small and
every ``$ref`` in it still resolves. Run it again when a test validates a new schema:

    python tests/data/openapi/trim.py path/to/openai-openapi.yaml

(OpenAI publishes the file at https://github.com/openai/openai-openapi; this team keeps a copy in
``shared/spec/``.) Add the new schema's name to ``ROOTS`` first.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
OUT = HERE / "openai-openapi.json"
ROOTS = (
    "Response",
    "ResponseStreamEvent",  # every SSE event, by its ``type``
    "ResponseWsError",
    "ErrorResponse",
    "ListModelsResponse",
    "ResponseItemList",
    "CompactResource",
    "TokenCountsResource",
    "CreateChatCompletionResponse",  # the sim's /v1/chat/completions
    "CreateChatCompletionStreamResponse",
    "ConversationResource",  # the Conversations API
    "ConversationItemList",
    "DeletedConversationResource",
)
PREFIX = "#/components/schemas/"


def references(node: Any) -> set[str]:
    """The schema names a node refers to, at any depth."""
    if isinstance(node, dict):
        found = {node["$ref"].removeprefix(PREFIX)} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= references(value)
        return found
    if isinstance(node, list):
        return set().union(*(references(value) for value in node)) if node else set()
    return set()


def closure(schemas: dict[str, Any], roots: tuple[str, ...]) -> dict[str, Any]:
    keep: dict[str, Any] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep[name] = schemas[name]
        todo += sorted(references(schemas[name]) - keep.keys())
    return dict(sorted(keep.items()))


def trim(spec: dict[str, Any]) -> dict[str, Any]:
    info = spec["info"]
    return {
        "openapi": spec["openapi"],
        "info": {"title": info["title"], "version": info["version"], "license": info.get("license")},
        "x-trimmed": {"roots": list(ROOTS), "by": "tests/data/openapi/trim.py"},
        "components": {"schemas": closure(spec["components"]["schemas"], ROOTS)},
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        spec = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    trimmed = trim(spec)
    OUT.write_text(json.dumps(trimmed, indent=1, sort_keys=False) + "\n")
    print(f"wrote {OUT.name}: {len(trimmed['components']['schemas'])} schemas, {OUT.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
