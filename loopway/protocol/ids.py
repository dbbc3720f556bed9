"""Object ids in OpenAI's style: a type prefix and 48 hex characters of randomness."""

from __future__ import annotations

import secrets

RESPONSE = "resp"
MESSAGE = "msg"
FUNCTION_CALL = "fc"
CALL = "call"
FUNCTION_CALL_OUTPUT = "fco"
REASONING = "rs"
COMPACTION = "cmp"
STEER = "steer"
ITEM = "item"
MCP_LIST_TOOLS = "mcpl"
MCP_CALL = "mcp"
MCP_APPROVAL_REQUEST = "mcpr"
MCP_APPROVAL_RESPONSE = "mcpa"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"
