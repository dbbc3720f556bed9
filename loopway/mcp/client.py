"""One session with one MCP server over streamable HTTP: initialize, list tools, call tools.

Every exchange is bounded: in time (``asyncio.timeout`` around the whole exchange, so a server that
drips bytes cannot hold a turn), and in bytes read (counted after decompression; past the cap the
response is dropped). What goes wrong is data, not an exception the turn must know about:
``call_tool`` always returns an ``McpResult``, whose ``failure`` has the shape of OpenAI's
``MCPToolCallError`` (an HTTP error, a JSON-RPC protocol error, or the tool's own error content).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, Literal

import httpx
import msgspec

from loopway.protocol.items import McpListedTool

log = logging.getLogger("loopway.mcp")

PROTOCOL_VERSION = "2025-06-18"
CLIENT_INFO = {"name": "loopway", "version": "1"}
MAX_TOOL_NAME = 128
MAX_LIST_PAGES = 16


class McpLimits(msgspec.Struct, frozen=True, kw_only=True):
    call_timeout_s: float = 30.0  # one tools/call, connection included
    list_timeout_s: float = 15.0  # initialize and tools/list, every page
    max_response_bytes: int = 1 << 20  # one response from the server, after decompression
    max_tools: int = 128  # tools kept from one server's list
    exchanges_per_tenant: int = 32  # one tenant's MCP requests in flight at once, over every server
    answer_bytes_in_flight: int = 64 << 20  # answers being read at once, over the process


class AnswerBudget:
    """Bytes of MCP answers being read at once in this process: a read that would pass it fails
    its call (the model hears why) instead of every tenant's answers adding up in memory."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used -= size


UNLIMITED = AnswerBudget(1 << 62)


class McpFailure(msgspec.Struct, frozen=True):
    kind: Literal["http_error", "mcp_protocol_error", "mcp_tool_execution_error"]
    message: str = ""
    code: int = 0
    content: Any = None

    def wire(self) -> dict[str, Any]:
        """The ``error`` of an ``mcp_call`` item (``MCPToolCallError``)."""
        if self.kind == "mcp_tool_execution_error":
            return {"type": self.kind, "content": self.content if self.content is not None else [self.text()]}
        return {"type": self.kind, "code": self.code, "message": self.message}

    def text(self) -> dict[str, str]:
        return {"type": "text", "text": self.message}


class McpError(Exception):
    def __init__(self, failure: McpFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class McpResult(msgspec.Struct, frozen=True):
    output: str | None = None
    failure: McpFailure | None = None


def _http_error(code: int, message: str) -> McpError:
    return McpError(McpFailure("http_error", message, code))


def _protocol_error(message: str, code: int = -32603) -> McpError:
    return McpError(McpFailure("mcp_protocol_error", message, code))


class SseMessages:
    """Server-sent events' ``data`` fields, as each event completes (a sans-I/O line parser).

    Linear in the bytes fed, however they are chunked, and no larger than they are: an unfinished
    line waits in a bytearray that grows in place (a server sending one byte at a time must not make
    each byte copy the line, nor cost an object of its own).
    """

    def __init__(self) -> None:
        self._partial = bytearray()
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        messages: list[bytes] = []
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            line = bytes(self._partial + chunk[start:end]) if self._partial else chunk[start:end]
            self._partial.clear()
            self._line(line.rstrip(b"\r"), messages)
            start = end + 1
        self._partial += chunk[start:]
        return messages

    def _line(self, line: bytes, messages: list[bytes]) -> None:
        if not line:
            if self._data:
                messages.append(b"\n".join(self._data))
            self._data = []
        elif line.startswith(b"data:"):
            self._data.append(line[5:].removeprefix(b" "))


def output_of(result: dict[str, Any]) -> str:
    """A ``tools/call`` result as the text the model reads: its text parts, else its structured content."""
    content = result.get("content")
    parts = content if isinstance(content, list) else []
    texts = [p["text"] if p.get("type") == "text" else msgspec.json.encode(p).decode() for p in parts if isinstance(p, dict)]
    texts = [t for t in texts if isinstance(t, str)]
    if texts:
        return "\n".join(texts)
    structured = result.get("structuredContent")
    return msgspec.json.encode(structured).decode() if structured is not None else ""


def listed_tool(raw: Any) -> McpListedTool | None:
    """One entry of ``tools/list``, or None where it is not a tool loopway can offer."""
    if not isinstance(raw, dict):
        return None
    name, schema = raw.get("name"), raw.get("inputSchema")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_TOOL_NAME:
        return None
    description, annotations = raw.get("description"), raw.get("annotations")
    return McpListedTool(
        name=name,
        input_schema=schema if isinstance(schema, dict) else {"type": "object", "properties": {}},
        description=description if isinstance(description, str) else None,
        annotations=annotations if isinstance(annotations, dict) else None,
    )


class McpSession:
    """A session with one server, opened on first use, reused for every later list and call."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        url: str,
        headers: dict[str, str],
        limits: McpLimits,
        *,
        gate: asyncio.Semaphore | None = None,
        budget: AnswerBudget = UNLIMITED,
    ) -> None:
        """``gate``: the tenant's share of MCP requests in flight (its exchanges wait for a place, so
        one tenant never holds every pooled connection); ``budget``: the process's answer bytes."""
        self.http = http
        self.url = url
        self.headers = headers
        self.limits = limits
        self.gate = gate or asyncio.Semaphore(limits.exchanges_per_tenant)
        self.budget = budget
        self._ids = itertools.count(1)
        self._session_id: str | None = None
        self._version = PROTOCOL_VERSION
        self._ready = False
        self._opening = asyncio.Lock()
        self.initializations = 0  # sessions opened (a server that forgets a session gets a new one)

    async def list_tools(self) -> list[McpListedTool]:
        try:
            async with asyncio.timeout(self.limits.list_timeout_s):
                return await self._list_pages()
        except TimeoutError:
            raise _protocol_error(
                f"The MCP server did not list its tools within {self.limits.list_timeout_s:g} s.", -32001
            ) from None

    async def _list_pages(self) -> list[McpListedTool]:
        tools: list[McpListedTool] = []
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            result = await self._request("tools/list", {"cursor": cursor} if cursor else {})
            page = result.get("tools")
            if not isinstance(page, list):
                raise _protocol_error("tools/list answered without a list of tools")
            tools += [t for t in map(listed_tool, page) if t is not None]
            cursor = result.get("nextCursor") if isinstance(result.get("nextCursor"), str) else None
            if not cursor or len(tools) >= self.limits.max_tools:
                break
        return tools[: self.limits.max_tools]

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> McpResult:
        try:
            async with asyncio.timeout(self.limits.call_timeout_s):
                result = await self._request("tools/call", {"name": name, "arguments": arguments})
        except TimeoutError:
            late = f"The MCP server did not answer within {self.limits.call_timeout_s:g} s."
            return McpResult(failure=McpFailure("mcp_protocol_error", late, -32001))
        except McpError as exc:
            return McpResult(failure=exc.failure)
        output = output_of(result)
        if result.get("isError"):
            content = result.get("content") if isinstance(result.get("content"), list) else None
            return McpResult(failure=McpFailure("mcp_tool_execution_error", output, content=content))
        return McpResult(output=output)

    async def aclose(self) -> None:
        """End the session on the server (best effort: a server that is gone has ended it)."""
        if self._session_id is None:
            return
        try:
            await self.http.delete(self.url, headers=self._headers(), timeout=2.0)
        except httpx.HTTPError:
            pass
        self._session_id, self._ready = None, False

    # JSON-RPC --------------------------------------------------------------------------------

    async def _request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        await self._open()
        try:
            return await self._call(method, params)
        except McpError as exc:
            if exc.failure.code != 404 or self._session_id is None:
                raise
        self._ready = False  # the server forgot the session (it restarted, or timed it out): open another
        self._session_id = None
        await self._open()
        return await self._call(method, params)

    async def _open(self) -> None:
        async with self._opening:
            if self._ready:
                return
            result = await self._call(
                "initialize", {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO}
            )
            version = result.get("protocolVersion")
            self._version = version if isinstance(version, str) else PROTOCOL_VERSION
            await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"}, None)
            self._ready = True
            self.initializations += 1

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        request_id = next(self._ids)
        reply = await self._post({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}, request_id)
        if reply is None:
            raise _protocol_error(f"The MCP server sent no answer to {method}.")
        error = reply.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            raise _protocol_error(str(error.get("message", "error")), code if isinstance(code, int) else -32603)
        result = reply.get("result")
        if not isinstance(result, dict):
            raise _protocol_error(f"The MCP server answered {method} without a result.")
        return result

    def _headers(self) -> dict[str, str]:
        headers = {
            **self.headers,
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            "mcp-protocol-version": self._version,
        }
        if self._session_id is not None:
            headers["mcp-session-id"] = self._session_id
        return headers

    async def _post(self, payload: dict[str, Any], request_id: int | None) -> dict[str, Any] | None:
        """POST one message; the JSON-RPC reply to ``request_id`` (plain JSON, or the first SSE event
        that answers it), read within the byte cap."""
        try:
            async with (
                self.gate,
                self.http.stream(
                    "POST", self.url, content=msgspec.json.encode(payload), headers=self._headers(), timeout=None
                ) as r,
            ):  # no httpx timeout: the caller's asyncio.timeout bounds the whole exchange
                if 300 <= r.status_code < 400:  # not followed, and its body is not an answer
                    raise _http_error(
                        r.status_code, f"The MCP server answered HTTP {r.status_code}: redirects are not followed."
                    )
                if r.status_code >= 400:
                    raise _http_error(r.status_code, f"The MCP server answered HTTP {r.status_code} {r.reason_phrase}.")
                if payload.get("method") == "initialize" and "mcp-session-id" in r.headers:
                    self._session_id = r.headers["mcp-session-id"]
                if request_id is None:
                    return None
                return await self._reply(r, request_id)
        except httpx.HTTPError as exc:
            raise _http_error(0, f"Could not reach the MCP server: {exc or type(exc).__name__}") from None

    async def _reply(self, response: httpx.Response, request_id: int) -> dict[str, Any] | None:
        reading = _Reading(self.limits.max_response_bytes, self.budget)
        try:
            return await _read_reply(response, request_id, reading)
        finally:
            reading.done()


class _Reading:
    """One answer being read: its bytes, against its own cap and the process's budget."""

    def __init__(self, cap: int, budget: AnswerBudget) -> None:
        self.cap, self.budget, self.read = cap, budget, 0

    def count(self, size: int) -> None:
        if self.read + size > self.cap:
            raise _protocol_error(f"The MCP server's answer exceeded {self.cap} bytes.")
        if not self.budget.take(size):
            raise _protocol_error("This server is reading too many MCP answers at once; try again shortly.")
        self.read += size

    def done(self) -> None:
        self.budget.give_back(self.read)
        self.read = 0


async def _read_reply(response: httpx.Response, request_id: int, reading: _Reading) -> dict[str, Any] | None:
    """The JSON-RPC reply to ``request_id``: plain JSON, or the first SSE event that answers it."""
    streamed = response.headers.get("content-type", "").startswith("text/event-stream")
    events, body = SseMessages(), bytearray()
    async for chunk in response.aiter_bytes():
        reading.count(len(chunk))
        if not streamed:
            body += chunk
            continue
        for data in events.feed(chunk):
            message = _decoded(data)
            if isinstance(message, dict) and message.get("id") == request_id:
                return message
    if streamed:
        return None
    message = _decoded(bytes(body))
    return message if isinstance(message, dict) else None


def _decoded(data: bytes) -> Any:
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        raise _protocol_error("The MCP server sent a message that is not JSON.") from None
    except RecursionError:  # msgspec's own depth guard: nesting past the interpreter's limit
        raise _protocol_error("The MCP server sent JSON nested too deeply.") from None
