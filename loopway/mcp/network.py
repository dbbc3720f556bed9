"""An ``httpx`` client that connects only where the allow list says, to the address it checked.

The check and the connection are one step: the host is resolved, every address is vetted
(``McpAllowList.address_allowed``), and the socket is opened to a vetted address; TLS still verifies
the certificate against the host name. No environment proxy, no redirects: either would send the
request somewhere that was never checked.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore
import httpx

from loopway.mcp.allow import McpAllowList

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, allow: McpAllowList, resolver: Resolver = resolve) -> None:
        self.allow = allow
        self.resolver = resolver
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await asyncio.wait_for(self.resolver(host, port), timeout)
        except (OSError, TimeoutError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        allowed = [a for a in addresses if self.allow.address_allowed(a, host, port)]
        if not allowed:
            raise httpcore.ConnectError(
                f"{host} resolves to {', '.join(addresses)}: not an address this server may connect to (--mcp-allow)"
            )
        return await self.inner.connect_tcp(allowed[0], port, timeout, local_address, socket_options)

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("MCP servers are reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, allow: McpAllowList, limits: httpx.Limits, resolver: Resolver = resolve) -> None:
        super().__init__(trust_env=False, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(allow, resolver),
        )


def guarded_client(allow: McpAllowList, resolver: Resolver = resolve, max_connections: int = 256) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=64, keepalive_expiry=30)
    transport = GuardedTransport(allow, limits, resolver)
    return httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False)
