"""The edge: what every request must pass before any route runs, in one ASGI middleware.

In order: a connection over the server's cap gets ``503 server_busy`` (``/health`` is still
answered; ``transports.guard``); the ``Host`` must be one this server answers to (DNS rebinding);
a browser ``Origin`` must be this server's own or an allowed one (a WebSocket handshake included:
browsers do not apply CORS to sockets); a POST body must be ``application/json`` (a browser sends
``text/plain`` or form bodies cross-origin without asking first); then the API key, and for HTTP the
rate limit (sockets count each ``response.create``); ``/dashboard`` checks its own admin keys. Each
refusal is OpenAI-shaped, as the HTTP answer or as the WebSocket handshake's denial. The tenant is
left in ``scope["state"]["tenant"]``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

from loopway.core.ops.auth import KeyRing
from loopway.core.ops.limits import RateLimiter
from loopway.protocol.errors import ApiError, forbidden, invalid_request, unavailable, unsupported_media_type
from loopway.transports.error_responses import error_response
from loopway.transports.guard import OVERFLOW

PUBLIC = ("/metrics", "/health")
DASHBOARD = "/dashboard"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
ANY = "*"


class EdgePolicy(msgspec.Struct, frozen=True):
    """Which hosts and origins a server answers, and whether bodies must say they are JSON."""

    hosts: frozenset[str]  # lower-case host names without port; {"*"}: any
    origins: frozenset[str]  # "scheme://host[:port]", lower-case; {"*"}: any
    require_json: bool = True

    @classmethod
    def of(cls, bound_host: str, hosts: list[str], origins: list[str], require_json: bool) -> EdgePolicy:
        """``hosts`` add to the bound address and the loopback names (so local health checks work)."""
        named = frozenset({bound_host.lower(), *LOOPBACK_NAMES, *(h.lower() for h in hosts)})
        return cls(
            hosts=named if hosts else default_hosts(bound_host),
            origins=frozenset(o.lower().rstrip("/") for o in origins),
            require_json=require_json,
        )


def default_hosts(bound_host: str) -> frozenset[str]:
    """Bound to loopback: that address and the loopback names only; bound elsewhere: any host."""
    try:
        loopback = ipaddress.ip_address(bound_host).is_loopback
    except ValueError:
        loopback = bound_host == "localhost"
    return frozenset({bound_host.lower(), *LOOPBACK_NAMES}) if loopback else frozenset({ANY})


def host_name(host: str) -> str:
    """``example.com:8080`` → ``example.com``; ``[::1]:8080`` → ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        keys: KeyRing,
        policy: EdgePolicy,
        limiter: RateLimiter | None = None,
        observe: Callable[[ApiError], None] | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.policy = policy
        self.limiter = limiter
        self.observe = observe  # told of every refusal (the dashboard's and /metrics' errors by code)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {name: value.decode("latin-1") for name, value in scope.get("headers") or []}
        try:
            self._check(scope, headers)
        except ApiError as err:
            if self.observe is not None:
                self.observe(err)
            await error_response(err)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope, headers: dict[bytes, str]) -> None:
        if scope.get(OVERFLOW) and scope["path"] != "/health":
            raise server_busy()
        host = headers.get(b"host", "")
        self._check_host(host)
        self._check_origin(headers.get(b"origin"), host)
        if scope["type"] == "http" and scope["method"] == "POST":
            self._check_content_type(headers)
        if scope["path"] in PUBLIC or scope["path"] == DASHBOARD or scope["path"].startswith(DASHBOARD + "/"):
            return  # the dashboard checks its own keys (transports.dashboard_routes)
        tenant = self.keys.tenant(headers.get(b"authorization"))
        if self.limiter is not None and scope["type"] == "http":  # the socket counts response.create
            self.limiter.check(tenant)
        scope.setdefault("state", {})["tenant"] = tenant

    def _check_host(self, host: str) -> None:
        if ANY in self.policy.hosts or host_name(host) in self.policy.hosts:
            return
        raise invalid_request(
            f"This server does not answer to the host {host_name(host)!r}. Start loopway with --allowed-hosts to add it.",
            param="host",
            code="invalid_host",
        )

    def _check_origin(self, origin: str | None, host: str) -> None:
        if origin is None:  # not a browser: SDKs and CLIs send no Origin
            return
        origin = origin.lower().rstrip("/")
        same_origin = origin.split("://", 1)[-1] == host.strip().lower()
        if same_origin or ANY in self.policy.origins or origin in self.policy.origins:
            return
        raise forbidden(
            f"Requests from the web page at {origin} are not allowed. Start loopway with --allowed-origins to allow it.",
            param="origin",
            code="origin_not_allowed",
        )

    def _check_content_type(self, headers: dict[bytes, str]) -> None:
        if not self.policy.require_json or not _has_body(headers):
            return
        media_type = headers.get(b"content-type", "").split(";", 1)[0].strip().lower()
        if media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json")):
            return
        raise unsupported_media_type(
            f"Unsupported Content-Type {media_type or '(none)'!r}: send the body as application/json.",
            param="content-type",
            code="unsupported_content_type",
        )


def _has_body(headers: dict[bytes, str]) -> bool:
    return headers.get(b"content-length", "0").strip() not in ("", "0") or b"transfer-encoding" in headers


def server_busy() -> ApiError:
    return unavailable(
        "The server is at its connection limit; retry shortly.", code="server_busy", retry_after="1", close=True
    )
