"""Which MCP servers loopway may connect to: ``--mcp-allow`` (none by default).

An entry is a URL prefix (``https://mcp.example.com/v1``: same scheme, host and port, and a path
under it), a host (``mcp.example.com``, ``mcp.example.com:8443``, ``*.example.com``), or an address
or network (``10.0.0.7``, ``10.0.0.0/8``). A server URL must match a URL or host entry. Then, at
connection time, every address its host resolves to is checked: a public address is fine; a
private, loopback, link-local or otherwise special one only where an address entry (or a URL or
host entry written as an IP address, or as ``localhost``) covers it. So a public name that
resolves to an internal address (DNS rebinding, a typo'd internal zone) is refused, and the
connection goes to the address that was checked (``network``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import httpx

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class AllowSpecError(ValueError):
    pass


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def _networks_of_host(host: str) -> tuple[Network, ...]:
    if host == "localhost":
        return _LOOPBACK
    try:
        return (ipaddress.ip_network(host),)
    except ValueError:
        return ()


class McpAllowList:
    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.prefixes: list[httpx.URL] = []
        self.hosts: list[tuple[str, int | None]] = []
        self.networks: list[Network] = []
        for entry in entries:
            self._add(entry.strip())

    @classmethod
    def parse(cls, spec: str) -> McpAllowList:
        return cls(e for e in spec.replace(";", ",").split(",") if e.strip())

    def __bool__(self) -> bool:
        return bool(self.prefixes or self.hosts or self.networks)

    def _add(self, entry: str) -> None:
        if "://" in entry:
            url = httpx.URL(entry)
            if url.scheme not in ("http", "https") or not url.host:
                raise AllowSpecError(f"{entry!r}: a URL entry is http:// or https:// with a host")
            self.prefixes.append(url)
            self.networks += _networks_of_host(url.host)
            return
        try:
            self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            return
        except ValueError:
            pass
        host, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if not host or (port and not port.isdigit()) or "/" in host:
            raise AllowSpecError(f"{entry!r}: expected a URL, a host[:port], *.domain, an address or a network")
        self.hosts.append((host.lower(), int(port) if port else None))
        self.networks += _networks_of_host(host.lower())

    def url_allowed(self, raw: str) -> bool:
        """Whether a server URL names an allowed server (its addresses are checked when connecting)."""
        try:
            url = httpx.URL(raw)
        except (httpx.InvalidURL, TypeError):
            return False
        if url.scheme not in ("http", "https") or not url.host or url.userinfo:
            return False
        return (
            any(self._under(url, p) for p in self.prefixes)
            or any(self._host_matches(url, h) for h in self.hosts)
            or (self._is_address(url.host) and self.address_allowed(url.host, listed_only=True))
        )

    @staticmethod
    def _under(url: httpx.URL, prefix: httpx.URL) -> bool:
        if (url.scheme, url.host, _port(url)) != (prefix.scheme, prefix.host, _port(prefix)):
            return False
        base = prefix.path.rstrip("/")
        return url.path == base or url.path.startswith(base + "/")

    @staticmethod
    def _host_matches(url: httpx.URL, entry: tuple[str, int | None]) -> bool:
        host, port = entry
        if port is not None and port != _port(url):
            return False
        if host.startswith("*."):
            return url.host.endswith(host[1:])
        return url.host == host

    @staticmethod
    def _is_address(host: str) -> bool:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True

    def address_allowed(self, address: str, listed_only: bool = False) -> bool:
        """Whether loopway may connect to ``address``: public ones always (the URL was allowed),
        others only where an entry covers them."""
        ip: IpAddress = ipaddress.ip_address(address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in network for network in self.networks):
            return True
        return not listed_only and ip.is_global
