"""A tool registry: plain Python callables become function tools.

The JSON schema comes from the type hints (``str``, ``int``, ``float``, ``bool``, ``list[...]``,
``Literal[...]``, optional parameters with defaults) and the first docstring line becomes the
description, or both are given explicitly. Sync tools run in a thread so the event loop keeps
reading the stream while they work.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import types
import typing
from collections.abc import Callable
from typing import Any

_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _schema_of(hint: Any) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if origin is typing.Literal:
        return {"type": "string", "enum": list(typing.get_args(hint))}
    if origin in (list, tuple) or hint in (list, tuple):
        args = typing.get_args(hint)
        return {"type": "array", "items": _schema_of(args[0]) if args else {}}
    if origin is dict or hint is dict:
        return {"type": "object"}
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _schema_of(options[0]) if len(options) == 1 else {"anyOf": [_schema_of(o) for o in options]}
    raise TypeError(f"no JSON schema for parameter type {hint!r}")


def schema_from_signature(fn: Callable[..., Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(fn)
    properties, required = {}, []
    for name, parameter in inspect.signature(fn).parameters.items():
        if name not in hints:
            raise TypeError(f"{fn.__name__}: parameter {name!r} needs a type hint (or pass a schema)")
        properties[name] = _schema_of(hints[name])
        if parameter.default is inspect.Parameter.empty:
            required.append(name)
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


class Tool:
    def __init__(
        self, fn: Callable[..., Any], name: str, description: str, parameters: dict[str, Any], strict: bool
    ) -> None:
        self.fn, self.name, self.description, self.parameters, self.strict = fn, name, description, parameters, strict

    def definition(self) -> dict[str, Any]:
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "strict": self.strict,
        }


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def register(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> Any:
        """Register ``fn`` (usable as ``@registry.register`` or ``@registry.register(name=...)``)."""

        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            schema = parameters if parameters is not None else schema_from_signature(fn)
            doc = (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")
            tool_name = name or fn.__name__
            self._tools[tool_name] = Tool(fn, tool_name, description or doc, schema, strict=parameters is None)
            return fn

        return add(fn) if fn is not None else add

    def definitions(self) -> list[dict[str, Any]]:
        return [tool.definition() for tool in self._tools.values()]

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    async def call(self, name: str, arguments: str) -> str:
        """Run a tool; what goes wrong becomes its output, so the model can see and recover."""
        tool = self._tools.get(name)
        if tool is None:
            return f"error: no tool named {name!r}"
        try:
            kwargs = json.loads(arguments or "{}")
            if not isinstance(kwargs, dict):
                return "error: arguments must be a JSON object"
            if inspect.iscoroutinefunction(tool.fn):
                result = await tool.fn(**kwargs)
            else:
                result = await asyncio.to_thread(tool.fn, **kwargs)
        except Exception as exc:  # a failing tool is a result for the model, not a crash of the loop
            return f"error: {type(exc).__name__}: {exc}"
        return result if isinstance(result, str) else json.dumps(result)
