"""A small MCP server for the tests, on the official ``mcp`` package, over streamable HTTP.

``python notes_server.py PORT``. Its notes tools behave by path, so a test picks a behaviour with the
path it asks the model to read: ``slow/...`` sleeps, ``crash/...`` kills the server mid-call,
``fail/...`` raises (a tool error), ``big/N`` answers N bytes; any other path answers its own name.
Every call is counted (``count_calls``), so a test can see what ran and what did not. With
``NOTES_TOKEN`` set, a request without ``Authorization: Bearer <token>`` is answered 401; every
request's headers are appended to ``NOTES_HEADERS_LOG`` when it is set (what loopway sent).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations

app = MCPServer("notes")
CALLS: list[str] = []


@app.tool(annotations=ToolAnnotations(readOnlyHint=True))
async def read_note(path: str) -> str:
    """Read a note by its path."""
    CALLS.append(f"read {path}")
    if path.startswith("slow/"):
        await asyncio.sleep(30)
    if path.startswith("crash/"):
        os._exit(3)
    if path.startswith("fail/"):
        raise ToolError(f"no note at {path}")
    if path.startswith("big/"):
        return "x" * int(path.split("/")[1].split(".")[0])
    return f"the note at {path} says: remember the milk"


@app.tool()
def write_note(path: str, text: str) -> str:
    """Write a note at a path."""
    CALLS.append(f"write {path}")
    return f"wrote {len(text)} characters to {path}"


@app.tool(annotations=ToolAnnotations(readOnlyHint=True))
def count_calls() -> str:
    """How many calls this server has run, and which."""
    return "\n".join(CALLS) or "none"


def guarded(inner):
    """The MCP app behind a bearer token check, recording each request's headers."""
    token, headers_log = os.environ.get("NOTES_TOKEN"), os.environ.get("NOTES_HEADERS_LOG")

    async def asgi(scope, receive, send):
        if scope["type"] == "http":
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            if headers_log:
                with open(headers_log, "a") as f:
                    f.write(json.dumps({**headers, ":method": scope["method"]}) + "\n")
            if token and headers.get("authorization") != f"Bearer {token}":
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"no"})
                return
        await inner(scope, receive, send)

    return asgi


if __name__ == "__main__":
    # Any Host header: a test reaches it by a made-up name that its resolver maps to loopback.
    open_hosts = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    asgi = guarded(app.streamable_http_app(transport_security=open_hosts))
    uvicorn.run(asgi, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
