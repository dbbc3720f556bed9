"""``{"type": "mcp"}`` tools: a remote MCP server whose tools the server itself calls.

A spec says where the server is (``server_url``), what to send it (``headers``, ``authorization``:
secrets, kept only in memory for the turn and never echoed, stored or logged), which of its tools
the model may see (``allowed_tools``) and which calls wait for the client's approval
(``require_approval``, ``always`` unless said otherwise, as OpenAI's default is).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import msgspec

from loopway.protocol.errors import ApiError, invalid_request
from loopway.protocol.items import McpListedTool

MAX_SERVERS = 16  # MCP tools in one request
MAX_HEADERS = 32
MAX_HEADER_CHARS = 8192
_LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


class ToolFilter(msgspec.Struct, frozen=True):
    """``MCPToolFilter``: tools named here, and/or tools the server marks read-only (both, when both given)."""

    names: frozenset[str] | None = None
    read_only: bool | None = None

    def matches(self, tool: McpListedTool) -> bool:
        if self.names is not None and tool.name not in self.names:
            return False
        if self.read_only is not None:
            hint = bool((tool.annotations or {}).get("readOnlyHint", False))
            return hint == self.read_only
        return True


class McpServerSpec(msgspec.Struct, frozen=True, kw_only=True):
    server_label: str
    server_url: str
    allowed: ToolFilter | None = None  # None: every tool the server lists
    always: ToolFilter | None = None  # calls that need approval
    never: ToolFilter | None = None  # calls that run at once
    default_approval: bool = True  # tools neither filter names
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    authorization: str | None = None
    description: str | None = None

    def allows(self, tool: McpListedTool) -> bool:
        return self.allowed is None or self.allowed.matches(tool)

    def needs_approval(self, tool: McpListedTool | None) -> bool:
        if tool is not None and self.never is not None and self.never.matches(tool):
            return False
        if tool is not None and self.always is not None and self.always.matches(tool):
            return True
        return self.default_approval

    def request_headers(self) -> dict[str, str]:
        """What goes to the MCP server with every request (``authorization`` as a Bearer token)."""
        headers = dict(self.headers)
        if self.authorization:
            headers["Authorization"] = f"Bearer {self.authorization}"
        return headers

    @property
    def identity(self) -> str:
        """Who the session speaks as: sessions are shared only between identical URLs and credentials."""
        secret = msgspec.json.encode([self.server_url, sorted(self.headers.items()), self.authorization])
        return hashlib.blake2b(secret, digest_size=16).hexdigest()


def _bad(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return invalid_request(message, param=param, code=code)


def _filter(raw: Any, param: str) -> ToolFilter:
    if isinstance(raw, list):
        raw = {"tool_names": raw}
    if not isinstance(raw, dict) or set(raw) - {"tool_names", "read_only"}:
        raise _bad(param, f"Invalid '{param}': expected an array of tool names or {{tool_names, read_only}}.")
    names = raw.get("tool_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise _bad(f"{param}.tool_names", f"Invalid '{param}.tool_names': expected an array of strings.", "invalid_type")
    read_only = raw.get("read_only")
    if read_only is not None and not isinstance(read_only, bool):
        raise _bad(f"{param}.read_only", f"Invalid '{param}.read_only': expected a boolean.", "invalid_type")
    return ToolFilter(names=frozenset(names) if names is not None else None, read_only=read_only)


def _approval(raw: Any, param: str) -> dict[str, Any]:
    if raw is None or raw == "always":
        return {}
    if raw == "never":
        return {"default_approval": False}
    if isinstance(raw, dict) and raw and not set(raw) - {"always", "never"}:
        rules: dict[str, Any] = {}
        for key in ("always", "never"):
            if raw.get(key) is not None:
                rules[key] = _filter(raw[key], f"{param}.{key}")
        return rules
    raise _bad(param, f"Invalid '{param}': expected 'always', 'never' or {{always, never}}.")


# Headers a tenant may not set: how the request is framed and routed (a desync or a virtual-host
# confusion at the allowed address), hop-by-hop ones, and the ones loopway's MCP client sets itself.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "content-type",
        "content-encoding",
        "accept",
        "mcp-session-id",
        "mcp-protocol-version",
    }
)
_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")  # visible ASCII, inner spaces: a line a server reads as sent


def _header_value_ok(value: str) -> bool:
    return _VALUE.fullmatch(value) is not None


def _headers(raw: Any, param: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise _bad(param, f"Invalid type for '{param}': expected an object of strings.", "invalid_type")
    if len(raw) > MAX_HEADERS or sum(len(k) + len(v) for k, v in raw.items()) > MAX_HEADER_CHARS:
        raise _bad(param, f"'{param}' is too large: at most {MAX_HEADERS} headers and {MAX_HEADER_CHARS} characters.")
    for name, value in raw.items():
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name) or not _header_value_ok(value):
            raise _bad(
                param,
                f"Invalid header in '{param}': header names are tokens, and values are visible ASCII"
                " with no space at either end (the value is not repeated here).",
            )
        if name.lower() in RESERVED_HEADERS:
            raise _bad(f"{param}.{name}", f"Invalid header in '{param}': '{name}' is set by loopway, not by a request.")
    return dict(raw)


def parse_mcp_tool(raw: dict[str, Any], param: str) -> McpServerSpec:
    label = raw.get("server_label")
    if not isinstance(label, str) or not label:
        raise _bad(
            f"{param}.server_label", f"Missing required parameter: '{param}.server_label'.", "missing_required_parameter"
        )
    if not _LABEL.fullmatch(label):
        raise _bad(
            f"{param}.server_label",
            f"Invalid '{param}.server_label': a letter, then up to 63 letters, digits, '_' or '-'.",
        )
    url = raw.get("server_url")
    if url is None and (raw.get("connector_id") is not None or raw.get("tunnel_id") is not None):
        raise invalid_request(
            "loopway connects to MCP servers by 'server_url' only; connectors and tunnels are OpenAI's own.",
            param=f"{param}.connector_id" if raw.get("connector_id") is not None else f"{param}.tunnel_id",
            code="unsupported_parameter",
        )
    if not isinstance(url, str) or not url:
        raise _bad(f"{param}.server_url", f"Missing required parameter: '{param}.server_url'.", "missing_required_parameter")
    authorization = raw.get("authorization")
    if authorization is not None and not isinstance(authorization, str):
        raise _bad(f"{param}.authorization", f"Invalid type for '{param}.authorization': expected a string.", "invalid_type")
    if authorization and not _header_value_ok(authorization):
        raise _bad(
            f"{param}.authorization",
            f"Invalid '{param}.authorization': a token is visible ASCII with no space or line break at"
            " either end (the value is not repeated here).",
        )
    allowed = raw.get("allowed_tools")
    description = raw.get("server_description")
    return McpServerSpec(
        server_label=label,
        server_url=url,
        allowed=_filter(allowed, f"{param}.allowed_tools") if allowed is not None else None,
        headers=_headers(raw.get("headers"), f"{param}.headers"),
        authorization=authorization or None,
        description=description if isinstance(description, str) else None,
        **_approval(raw.get("require_approval"), f"{param}.require_approval"),
    )


def echo_of(raw: dict[str, Any]) -> dict[str, Any]:
    """The tool as the response shows it: without its secrets (``authorization``; ``headers`` as null)."""
    echo = {k: v for k, v in raw.items() if k != "authorization"}
    if "headers" in echo:
        echo["headers"] = None
    return echo
