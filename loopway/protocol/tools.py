"""Tool definitions and ``tool_choice``.

loopway's engines call client-executed tools: ``function`` tools, including those grouped in a
``namespace``. Hosted tools (web search, file search, code interpreter, ...) would run on the
server; loopway accepts them in ``tools`` (clients such as Codex always offer them) and echoes
them, but the model never calls them, and a request that *forces* one is refused with a 400.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from loopway.protocol.errors import ApiError, invalid_request, invalid_value

HOSTED_TOOL_TYPES = frozenset(
    {
        "file_search",
        "web_search",
        "web_search_2025_08_26",
        "web_search_preview",
        "web_search_preview_2025_03_11",
        "mcp",
        "code_interpreter",
        "image_generation",
        "tool_search",
        "programmatic_tool_calling",
    }
)
# Run by the client, but not as function calls: accepted, echoed, never called by loopway's engines.
CLIENT_TOOL_TYPES = frozenset({"custom", "local_shell", "shell", "apply_patch", "computer", "computer_use_preview"})


class FunctionTool(msgspec.Struct, kw_only=True):
    name: str
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None
    namespace: str | None = None

    def echo(self) -> dict[str, Any]:
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "strict": True if self.strict is None else self.strict,
        }


class ToolSet(msgspec.Struct):
    """The tools of a request: what the model may call, and what is echoed back verbatim."""

    functions: list[FunctionTool]
    echo: list[dict[str, Any]]
    other_types: frozenset[str]

    def function(self, name: str) -> FunctionTool | None:
        for tool in self.functions:
            if tool.name == name:
                return tool
        return None


EMPTY_TOOLS = ToolSet(functions=[], echo=[], other_types=frozenset())


def _parse_function(raw: dict[str, Any], param: str, namespace: str | None = None) -> FunctionTool:
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise invalid_request(
            f"Missing required parameter: '{param}.name'.", param=f"{param}.name", code="missing_required_parameter"
        )
    parameters = raw.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise invalid_request(
            f"Invalid type for '{param}.parameters': expected an object.", param=f"{param}.parameters", code="invalid_type"
        )
    strict = raw.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise invalid_request(
            f"Invalid type for '{param}.strict': expected a boolean.", param=f"{param}.strict", code="invalid_type"
        )
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise invalid_request(
            f"Invalid type for '{param}.description': expected a string.", param=f"{param}.description", code="invalid_type"
        )
    return FunctionTool(name=name, parameters=parameters, strict=strict, description=description, namespace=namespace)


def parse_tools(raw: Any) -> ToolSet:
    if raw is None:
        return EMPTY_TOOLS
    if not isinstance(raw, list):
        raise invalid_request("Invalid type for 'tools': expected an array.", param="tools", code="invalid_type")
    functions: list[FunctionTool] = []
    echo: list[dict[str, Any]] = []
    other: set[str] = set()
    for i, tool in enumerate(raw):
        param = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise invalid_request(f"Invalid type for '{param}': expected an object.", param=param, code="invalid_type")
        kind = tool.get("type")
        if not isinstance(kind, str):
            raise invalid_request(
                f"Invalid type for '{param}.type': expected a string.", param=f"{param}.type", code="invalid_type"
            )
        if kind == "function":
            fn = _parse_function(tool, param)
            functions.append(fn)
            echo.append(fn.echo())
        elif kind == "namespace":
            inner = tool.get("tools")
            if not isinstance(inner, list):
                raise invalid_request(
                    f"Invalid type for '{param}.tools': expected an array.", param=f"{param}.tools", code="invalid_type"
                )
            for j, sub in enumerate(inner):
                if isinstance(sub, dict) and sub.get("type", "function") == "function":
                    functions.append(_parse_function(sub, f"{param}.tools[{j}]", namespace=tool.get("name")))
            echo.append(tool)
        elif kind in HOSTED_TOOL_TYPES or kind in CLIENT_TOOL_TYPES:
            other.add(kind)
            echo.append(tool)
        else:
            known = ["function", "namespace", *sorted(HOSTED_TOOL_TYPES | CLIENT_TOOL_TYPES)]
            raise invalid_value(f"{param}.type", kind, known)
    names = [f.name for f in functions if f.namespace is None]
    if len(names) != len(set(names)):
        raise invalid_request("Tool names must be unique.", param="tools", code="duplicate_tool_name")
    return ToolSet(functions=functions, echo=echo, other_types=frozenset(other))


class ToolChoice(msgspec.Struct, frozen=True):
    """Normalised ``tool_choice``: a mode, optionally restricted to named functions."""

    mode: Literal["none", "auto", "required"]
    names: tuple[str, ...] | None = None  # None: any offered function
    echo: Any = "auto"


def parse_tool_choice(raw: Any, tools: ToolSet) -> ToolChoice:
    if raw is None:
        return ToolChoice("auto")
    if isinstance(raw, str):
        if raw not in ("none", "auto", "required"):
            raise invalid_value("tool_choice", raw, ["none", "auto", "required"])
        if raw == "required" and not tools.functions:
            _refuse_hosted_only(tools)
            raise invalid_request(
                "Tool choice 'required' needs at least one function tool.", param="tool_choice", code="invalid_value"
            )
        return ToolChoice(raw, echo=raw)
    if not isinstance(raw, dict):
        raise invalid_request(
            "Invalid type for 'tool_choice': expected a string or an object.", param="tool_choice", code="invalid_type"
        )
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise invalid_request(
            "Invalid type for 'tool_choice.type': expected a string.", param="tool_choice.type", code="invalid_type"
        )
    if kind == "function":
        name = raw.get("name")
        if not isinstance(name, str) or tools.function(name) is None:
            raise invalid_request(
                f"Tool choice '{name}' not found in 'tools' parameter.", param="tool_choice", code="invalid_value"
            )
        return ToolChoice("required", (name,), echo={"type": "function", "name": name})
    if kind == "allowed_tools":
        mode = raw.get("mode", "auto")
        if mode not in ("auto", "required"):
            raise invalid_value("tool_choice.mode", mode, ["auto", "required"])
        allowed = raw.get("tools")
        if not isinstance(allowed, list):
            raise invalid_request(
                "Invalid type for 'tool_choice.tools': expected an array.", param="tool_choice.tools", code="invalid_type"
            )
        names = tuple(t.get("name") for t in allowed if isinstance(t, dict) and t.get("type") == "function")
        for name in names:
            if tools.function(name) is None:
                raise invalid_request(
                    f"Tool '{name}' in 'tool_choice.tools' not found in 'tools' parameter.",
                    param="tool_choice.tools",
                    code="invalid_value",
                )
        return ToolChoice(mode, names, echo=raw)
    if kind in HOSTED_TOOL_TYPES or kind in CLIENT_TOOL_TYPES or kind in ("mcp", "custom"):
        raise ApiError(
            400,
            f"loopway does not run '{kind}' tools: the engine can only call function tools. "
            "Offer it as a function tool, or let the model choose with tool_choice 'auto'.",
            param="tool_choice",
            code="unsupported_tool_choice",
        )
    raise invalid_value("tool_choice.type", kind, ["function", "allowed_tools"])


def _refuse_hosted_only(tools: ToolSet) -> None:
    if tools.other_types & HOSTED_TOOL_TYPES:
        raise ApiError(
            400,
            "Tool choice 'required' would force a hosted tool ("
            + ", ".join(sorted(tools.other_types & HOSTED_TOOL_TYPES))
            + "), and loopway does not run hosted tools server-side.",
            param="tool_choice",
            code="unsupported_tool_choice",
        )
