"""Decoding JSON that cannot cost more than it is worth: counted before it is built, depth-checked after.

A JSON text builds objects far larger than itself (32 MiB of ``[{},{},…]`` is 11 million dicts, about
1 GB), so the number of values is bounded on the raw text first, with ``str.count`` at C speed: every
value but the first follows a ``,`` or opens a container, so commas + brackets + 1 is an upper bound
(brackets inside strings only make it larger). Nesting is bounded after decoding; a text nested past
the interpreter's recursion limit is refused as the same error instead of a crash.
"""

from __future__ import annotations

from typing import Any

import msgspec

from loopway.protocol.errors import ApiError, invalid_request


class JsonBounds(msgspec.Struct, frozen=True):
    max_values: int = 1_000_000
    max_depth: int = 64
    max_input_items: int = 50_000


DEFAULT_BOUNDS = JsonBounds()
_DECODER = msgspec.json.Decoder()


def value_bound(text: str | bytes) -> int:
    """An upper bound on the number of JSON values ``text`` decodes to."""
    if isinstance(text, str):
        return text.count(",") + text.count("{") + text.count("[") + 1
    return text.count(b",") + text.count(b"{") + text.count(b"[") + 1


def decode(text: str | bytes, bounds: JsonBounds = DEFAULT_BOUNDS, what: str = "request body") -> Any:
    """Decode ``text`` within ``bounds``, or raise the 400 that says which bound it broke."""
    values = value_bound(text)
    if values > bounds.max_values:
        raise too_many_values(what, values, bounds.max_values)
    try:
        decoded = _DECODER.decode(text)
    except msgspec.DecodeError as exc:
        raise invalid_request(
            f"We could not parse the JSON body of your request. ({exc}) The OpenAI API expects a JSON payload.",
            code="invalid_json",
        ) from None
    except RecursionError:
        raise too_deep(what, bounds.max_depth) from None
    if values > bounds.max_depth and deeper_than(decoded, bounds.max_depth):
        raise too_deep(what, bounds.max_depth)
    return decoded


def deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests containers more than ``limit`` deep (iteratively: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if type(node) is dict else node if type(node) is list else ():
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


def check_input_items(raw: Any, bounds: JsonBounds, field: str = "input") -> None:
    """The number of input items (a Chat Completions body's ``messages``), bounded before any of them is parsed."""
    items = raw.get(field) if isinstance(raw, dict) else None
    if isinstance(items, list) and len(items) > bounds.max_input_items:
        raise invalid_request(
            f"Invalid '{field}': array too long. Expected an array with at most {bounds.max_input_items} items, "
            f"but got an array with {len(items)} items instead.",
            param=field,
            code="array_above_max_length",
        )


def too_many_values(what: str, values: int, limit: int) -> ApiError:
    return invalid_request(
        f"The {what} holds too many JSON values (up to {values:,}; at most {limit:,} are accepted).",
        code="json_too_large",
    )


def too_deep(what: str, limit: int) -> ApiError:
    return invalid_request(f"The {what} nests JSON more than {limit} levels deep.", code="json_too_deep")
