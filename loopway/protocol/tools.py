"""Tool definitions and ``tool_choice``.

loopway's engines call client-executed tools: ``function`` tools, including those grouped in a
``namespace``, and the tools of remote ``mcp`` servers, which loopway calls itself
(``protocol.mcp_spec``, ``core.turn.mcp_rounds``). Other hosted tools (web search, file search, code interpreter,
...) would run on the server; loopway accepts them in ``tools`` (clients such as Codex always offer
them) and echoes them, but the model never calls them, and a request that *forces* one is refused
with a 400.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec

from loopway.protocol.errors import invalid_request, invalid_value
from loopway.protocol.mcp_spec import MAX_SERVERS, McpServerSpec, echo_of, parse_mcp_tool

HOSTED_TOOL_TYPES = frozenset(
    {
        "file_search",
        "web_search",
        "web_search_2025_08_26",
        "web_search_preview",
        "web_search_preview_2025_03_11",
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
    mcp: bool = False  # a tool of the MCP server named by ``namespace``: loopway calls it

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
    mcp: tuple[McpServerSpec, ...] = ()

    def function(self, name: str) -> FunctionTool | None:
        for tool in self.functions:
            if tool.name == name and not tool.mcp:
                return tool
        return None

    def mcp_server(self, label: str) -> McpServerSpec | None:
        for server in self.mcp:
            if server.server_label == label:
                return server
        return None


EMPTY_TOOLS = ToolSet(functions=[], echo=[], other_types=frozenset())


def _typed(raw: dict[str, Any], field: str, kind: type, param: str, expected: str) -> Any:
    value = raw.get(field)
    if value is not None and not isinstance(value, kind):
        raise invalid_request(
            f"Invalid type for '{param}.{field}': expected {expected}.", param=f"{param}.{field}", code="invalid_type"
        )
    return value


def _parse_function(raw: dict[str, Any], param: str, namespace: str | None = None) -> FunctionTool:
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise invalid_request(
            f"Missing required parameter: '{param}.name'.", param=f"{param}.name", code="missing_required_parameter"
        )
    return FunctionTool(
        name=name,
        parameters=_typed(raw, "parameters", dict, param, "an object"),
        strict=_typed(raw, "strict", bool, param, "a boolean"),
        description=_typed(raw, "description", str, param, "a string"),
        namespace=namespace,
    )


def _namespace_functions(raw: dict[str, Any], param: str) -> list[FunctionTool]:
    inner = _typed(raw, "tools", list, param, "an array")
    if inner is None:
        raise invalid_request(
            f"Invalid type for '{param}.tools': expected an array.", param=f"{param}.tools", code="invalid_type"
        )
    return [
        _parse_function(sub, f"{param}.tools[{j}]", namespace=raw.get("name"))
        for j, sub in enumerate(inner)
        if isinstance(sub, dict) and sub.get("type", "function") == "function"
    ]


def _tool_kind(tool: Any, param: str) -> str:
    if not isinstance(tool, dict):
        raise invalid_request(f"Invalid type for '{param}': expected an object.", param=param, code="invalid_type")
    kind = tool.get("type")
    if not isinstance(kind, str):
        raise invalid_request(
            f"Invalid type for '{param}.type': expected a string.", param=f"{param}.type", code="invalid_type"
        )
    if kind not in ("function", "namespace", "mcp") and kind not in HOSTED_TOOL_TYPES | CLIENT_TOOL_TYPES:
        raise invalid_value(
            f"{param}.type", kind, ["function", "namespace", "mcp", *sorted(HOSTED_TOOL_TYPES | CLIENT_TOOL_TYPES)]
        )
    return kind


def parse_tools(raw: Any) -> ToolSet:
    """``tools``: function tools (alone or in a namespace) the model may call; others echoed only."""
    if raw is None:
        return EMPTY_TOOLS
    if not isinstance(raw, list):
        raise invalid_request("Invalid type for 'tools': expected an array.", param="tools", code="invalid_type")
    functions: list[FunctionTool] = []
    echo: list[dict[str, Any]] = []
    other: set[str] = set()
    servers: list[McpServerSpec] = []
    for i, tool in enumerate(raw):
        kind = _tool_kind(tool, f"tools[{i}]")
        if kind == "function":
            functions.append(_parse_function(tool, f"tools[{i}]"))
            echo.append(functions[-1].echo())
            continue
        if kind == "mcp":
            servers.append(parse_mcp_tool(tool, f"tools[{i}]"))
            echo.append(echo_of(tool))
            continue
        if kind == "namespace":
            functions += _namespace_functions(tool, f"tools[{i}]")
        else:
            other.add(kind)
        echo.append(tool)
    names = [f.name for f in functions if f.namespace is None]
    if len(names) != len(set(names)):
        raise invalid_request("Tool names must be unique.", param="tools", code="duplicate_tool_name")
    _check_servers(servers, {f.namespace for f in functions if f.namespace is not None})
    return ToolSet(functions=functions, echo=echo, other_types=frozenset(other), mcp=tuple(servers))


def _check_servers(servers: list[McpServerSpec], namespaces: set[str | None]) -> None:
    """MCP server labels name their tools' namespace: unique, and no namespace tool's name."""
    if len(servers) > MAX_SERVERS:
        raise invalid_request(f"At most {MAX_SERVERS} MCP tools per request.", param="tools", code="invalid_value")
    labels = [s.server_label for s in servers]
    if len(labels) != len(set(labels)) or set(labels) & namespaces:
        raise invalid_request(
            "MCP server labels must be unique, and differ from every namespace tool's name.",
            param="tools",
            code="duplicate_tool_name",
        )


class ToolChoice(msgspec.Struct, frozen=True):
    """Normalised ``tool_choice``: a mode, optionally restricted to named functions."""

    mode: Literal["none", "auto", "required"]
    names: tuple[str, ...] | None = None  # None: any offered function
    echo: Any = "auto"


def _choice_mode(raw: str, tools: ToolSet) -> ToolChoice:
    if raw not in ("none", "auto", "required"):
        raise invalid_value("tool_choice", raw, ["none", "auto", "required"])
    if raw == "required" and not tools.functions:
        _refuse_hosted_only(tools)
        if tools.mcp:
            raise invalid_request(
                "Tool choice 'required' needs a function tool: MCP tools are offered to the model with 'auto'.",
                param="tool_choice",
                code="invalid_value",
            )
        raise invalid_request(
            "Tool choice 'required' needs at least one function tool.", param="tool_choice", code="invalid_value"
        )
    return ToolChoice(raw, echo=raw)  # type: ignore[arg-type]


def _choice_function(raw: dict[str, Any], tools: ToolSet) -> ToolChoice:
    name = raw.get("name")
    if not isinstance(name, str) or tools.function(name) is None:
        raise invalid_request(
            f"Tool choice '{name}' not found in 'tools' parameter.", param="tool_choice", code="invalid_value"
        )
    return ToolChoice("required", (name,), echo={"type": "function", "name": name})


def _choice_allowed_tools(raw: dict[str, Any], tools: ToolSet) -> ToolChoice:
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


def _choice_hosted(raw: dict[str, Any], tools: ToolSet) -> ToolChoice:
    if raw["type"] == "mcp":
        raise invalid_request(
            "loopway offers MCP tools with tool_choice 'auto' only: forcing an MCP server's tool is not supported.",
            param="tool_choice",
            code="unsupported_tool_choice",
        )
    raise invalid_request(
        f"loopway does not run '{raw['type']}' tools: the engine can only call function tools. "
        "Offer it as a function tool, or let the model choose with tool_choice 'auto'.",
        param="tool_choice",
        code="unsupported_tool_choice",
    )


_CHOICES: dict[str, Callable[[dict[str, Any], ToolSet], ToolChoice]] = {
    "function": _choice_function,
    "allowed_tools": _choice_allowed_tools,
    **{kind: _choice_hosted for kind in HOSTED_TOOL_TYPES | CLIENT_TOOL_TYPES | {"mcp"}},
}


def parse_tool_choice(raw: Any, tools: ToolSet) -> ToolChoice:
    if raw is None:
        return ToolChoice("auto")
    if isinstance(raw, str):
        return _choice_mode(raw, tools)
    if not isinstance(raw, dict):
        raise invalid_request(
            "Invalid type for 'tool_choice': expected a string or an object.", param="tool_choice", code="invalid_type"
        )
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise invalid_request(
            "Invalid type for 'tool_choice.type': expected a string.", param="tool_choice.type", code="invalid_type"
        )
    if kind not in _CHOICES:
        raise invalid_value("tool_choice.type", kind, ["function", "allowed_tools"])
    return _CHOICES[kind](raw, tools)


def _refuse_hosted_only(tools: ToolSet) -> None:
    if tools.other_types & HOSTED_TOOL_TYPES:
        raise invalid_request(
            "Tool choice 'required' would force a hosted tool ("
            + ", ".join(sorted(tools.other_types & HOSTED_TOOL_TYPES))
            + "), and loopway does not run hosted tools server-side.",
            param="tool_choice",
            code="unsupported_tool_choice",
        )
