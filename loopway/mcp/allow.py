"""Which MCP servers loopway may connect to: ``--mcp-allow`` (none by default).

An entry allows exactly what it names:

- a URL prefix (``https://mcp.example.com/v1``, ``http://127.0.0.1:9000/mcp``): that scheme, host
  and port, and paths under that path;
- a host (``mcp.example.com``, ``mcp.example.com:8443``, ``*.example.com``, ``localhost:9000``,
  ``[::1]:9000``): that host, on any port unless one is given;
- an address or a network (``10.0.0.7``, ``10.0.0.0/8``): URLs written with an address in it, on any
  port and path (an operator who lists a network means the servers in it).

Then, at connection time, every address the URL's host resolves to is checked: a public address is
fine; a private, loopback, link-local or otherwise special one only where the entry that allowed
this host names it (an entry written as that address, or as ``localhost`` for the loopback
addresses) or a network entry covers it. So a public name that resolves to an internal address
(DNS rebinding, a typo'd internal zone) is refused, ``http://127.0.0.1:9000/mcp`` never opens
port 22 of the same address, and the connection goes to the address that was checked (``network``).

Paths are compared as sent: a URL whose path hides a separator or a dot segment in percent-encoding
(``%2f``, ``%2e``, ``%5c``) or holds a ``..`` segment is refused, so a prefix cannot be climbed out of.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

import httpx

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_HIDDEN = re.compile(r"%2f|%2e|%5c|\\", re.IGNORECASE)
_BRACKETED = re.compile(r"^\[([0-9a-fA-F:.]+)\](?::(\d+))?$")


class AllowSpecError(ValueError):
    pass


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def _addresses_named(host: str) -> tuple[Network, ...]:
    """The special addresses an entry naming ``host`` may reach: itself, if it is an address;
    loopback, for ``localhost``; none for a name (its addresses must be public)."""
    if host == "localhost":
        return _LOOPBACK
    try:
        return (ipaddress.ip_network(host),)
    except ValueError:
        return ()


def _ip(address: str) -> IpAddress:
    ip: IpAddress = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


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
            return
        bracketed = _BRACKETED.match(entry)
        if bracketed is not None:
            self.hosts.append((str(ipaddress.ip_address(bracketed[1])), int(bracketed[2]) if bracketed[2] else None))
            return
        try:
            self.networks.append(ipaddress.ip_network(entry, strict=False))
            return
        except ValueError:
            pass
        host, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if not host or (port and not port.isdigit()) or "/" in host or "[" in host:
            raise AllowSpecError(f"{entry!r}: expected a URL, a host[:port], *.domain, an address or a network")
        self.hosts.append((host.lower(), int(port) if port else None))

    def url_allowed(self, raw: str) -> bool:
        """Whether a server URL names an allowed server (its addresses are checked when connecting)."""
        try:
            url = httpx.URL(raw)
        except (httpx.InvalidURL, TypeError):
            return False
        if url.scheme not in ("http", "https") or not url.host or url.userinfo or not _plain_path(url):
            return False
        host = _normal(url.host)
        return (
            any(_under(url, p) for p in self.prefixes)
            or any(_host_matches(host, _port(url), h) for h in self.hosts)
            or (_is_address(url.host) and any(_ip(url.host) in n for n in self.networks))
        )

    def address_allowed(self, address: str, host: str, port: int) -> bool:
        """Whether loopway may connect to ``address`` for a server at ``host:port``: a public address
        always (the URL was allowed), a special one only where an entry for this host names it or
        a network entry covers it."""
        ip = _ip(address)
        if ip.is_global or any(ip in network for network in self.networks):
            return True
        return any(ip in network for network in self._named_for(_normal(host.strip("[]")), port))

    def _named_for(self, host: str, port: int) -> Iterable[Network]:
        for prefix in self.prefixes:
            if _normal(prefix.host) == host and _port(prefix) == port:
                yield from _addresses_named(prefix.host)
        for entry in self.hosts:
            if _host_matches(host, port, entry):
                yield from _addresses_named(entry[0])


def _normal(host: str) -> str:
    """A host as entries name it: lower case, an address in its one written form."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


def _plain_path(url: httpx.URL) -> bool:
    """The path as sent holds no encoded separator or dot, and no ``..`` segment."""
    raw = url.raw_path.split(b"?", 1)[0].decode("ascii", "replace")
    return not _HIDDEN.search(raw) and ".." not in raw.split("/")


def _under(url: httpx.URL, prefix: httpx.URL) -> bool:
    if (url.scheme, _normal(url.host), _port(url)) != (prefix.scheme, _normal(prefix.host), _port(prefix)):
        return False
    base = prefix.path.rstrip("/")
    return url.path == base or url.path.startswith(base + "/")


def _host_matches(host: str, port: int, entry: tuple[str, int | None]) -> bool:
    named, named_port = entry
    if named_port is not None and named_port != port:
        return False
    if named.startswith("*."):
        return host.endswith(named[1:])
    return host == named


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
