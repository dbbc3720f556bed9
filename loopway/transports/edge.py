"""Authentication at the edge: an ASGI middleware for HTTP requests and WebSocket upgrades.

A request without a valid key gets 401 in OpenAI's shape before any route runs; a WebSocket
upgrade gets the same 401 as its handshake response, before the socket is accepted. The tenant is
left in ``scope["state"]["tenant"]`` for the routes.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from loopway.core.auth import KeyRing
from loopway.core.limits import RateLimiter
from loopway.protocol.errors import ApiError
from loopway.transports.errors import error_response

PUBLIC = ("/metrics", "/health")


class AuthMiddleware:
    def __init__(self, app: ASGIApp, keys: KeyRing, limiter: RateLimiter | None = None) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in PUBLIC:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        raw = headers.get(b"authorization")
        try:
            tenant = self.keys.tenant(raw.decode("latin-1") if raw else None)
            if self.limiter is not None and scope["type"] == "http":  # the socket counts response.create
                self.limiter.check(tenant)
        except ApiError as err:
            await error_response(err)(scope, receive, send)
            return
        scope.setdefault("state", {})["tenant"] = tenant
        await self.app(scope, receive, send)
