"""Where MCP sessions come from (``McpRuntime``, one per server process) and how long they live
(``McpSessions``: a WebSocket connection's, open for the connection's life; an HTTP request's, for
its turn).

A session is shared only between tool specs with the same URL and the same credentials
(``McpServerSpec.identity``): two tenants, or one client with two tokens, never share one.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable

import httpx
import msgspec

from loopway.mcp.allow import McpAllowList
from loopway.mcp.client import AnswerBudget, McpLimits, McpSession
from loopway.mcp.network import guarded_client
from loopway.protocol.errors import invalid_request
from loopway.protocol.mcp_spec import McpServerSpec

log = logging.getLogger("loopway.mcp")

MAX_SESSIONS = 16  # per connection: beyond it the least recently used one is closed


class McpSettings(msgspec.Struct, frozen=True, kw_only=True):
    allow: str = ""  # --mcp-allow: nothing by default
    limits: McpLimits = McpLimits()


class McpSessions:
    """A connection's (or a turn's) sessions, for one tenant: every exchange they make waits for a
    place in the tenant's share (``McpLimits.exchanges_per_tenant``)."""

    def __init__(self, runtime: McpRuntime, tenant: str = "") -> None:
        self.runtime = runtime
        self.gate = runtime.gate(tenant)
        self._open: OrderedDict[str, McpSession] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    def session(self, spec: McpServerSpec) -> McpSession:
        key = spec.identity
        session = self._open.get(key)
        if session is None:
            session = McpSession(
                self.runtime.http,
                spec.server_url,
                spec.request_headers(),
                self.runtime.limits,
                gate=self.gate,
                budget=self.runtime.answers,
            )
            self._open[key] = session
            if len(self._open) > MAX_SESSIONS:
                _, oldest = self._open.popitem(last=False)
                task = asyncio.get_running_loop().create_task(oldest.aclose())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        self._open.move_to_end(key)
        return session

    def __len__(self) -> int:
        return len(self._open)

    async def aclose(self) -> None:
        sessions, self._open = list(self._open.values()), OrderedDict()
        await asyncio.gather(*(s.aclose() for s in sessions), *self._closing, return_exceptions=True)


class McpRuntime:
    """The allow list, the limits and the one guarded HTTP client every session uses."""

    def __init__(self, settings: McpSettings) -> None:
        self.allow = McpAllowList.parse(settings.allow)
        self.limits = settings.limits
        self.answers = AnswerBudget(settings.limits.answer_bytes_in_flight)  # answers being read, over the process
        self._gates: weakref.WeakValueDictionary[str, asyncio.Semaphore] = weakref.WeakValueDictionary()
        self._http: httpx.AsyncClient | None = None
        # What happened, for the metrics: a call's outcome and seconds, a listing's outcome.
        self.observe_call: Callable[[str, float], None] = lambda outcome, seconds: None
        self.observe_listing: Callable[[str], None] = lambda outcome: None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:  # made on the event loop that uses it
            self._http = guarded_client(self.allow)
        return self._http

    def check(self, spec: McpServerSpec, param: str) -> None:
        """A request naming a server this one may not reach is refused before it starts."""
        if self.allow.url_allowed(spec.server_url):
            return
        hint = "no MCP servers are allowed (--mcp-allow)" if not self.allow else "it is not in --mcp-allow"
        raise invalid_request(
            f"MCP server URL '{spec.server_url}' of '{spec.server_label}' is not allowed on this server: {hint}.",
            param=param,
            code="mcp_server_not_allowed",
        )

    def gate(self, tenant: str) -> asyncio.Semaphore:
        """The tenant's share of MCP requests in flight, one for all its sessions (kept while any
        session of the tenant lives)."""
        gate = self._gates.get(tenant)
        if gate is None:
            gate = self._gates[tenant] = asyncio.Semaphore(self.limits.exchanges_per_tenant)
        return gate

    def sessions(self, tenant: str = "") -> McpSessions:
        return McpSessions(self, tenant)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
