"""``/dashboard``: the page (static files shipped in the package) and its live feed (SSE).

Who may look:

- with ``--api-keys``: whoever shows an admin key (``--admin-keys``, the same file format), as
  ``Authorization: Bearer KEY`` or as the password of HTTP Basic auth (what a browser asks for); the
  viewer sees its own tenant in full and the others only as counts. Without ``--admin-keys`` the
  dashboard is off.
- open mode: loopback clients only, and not through a proxy (a request carrying ``Forwarded`` or
  ``X-Forwarded-For`` came from elsewhere); an admin key, if ``--admin-keys`` is given, opens it
  from anywhere.

The page holds no data and runs no inline script (its Content-Security-Policy says so); everything
it shows arrives on ``/dashboard/feed``, about once a second, the newest snapshot only (``core.ops.feed``).
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
from collections.abc import AsyncIterator
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from loopway.core.ops.auth import KeyRing
from loopway.core.service import ResponsesService
from loopway.protocol.errors import ApiError, forbidden, not_found, unauthorized
from loopway.transports.http import json_response
from loopway.transports.sse import HEADERS

ASSETS = {
    "/dashboard": ("index.html", "text/html; charset=utf-8"),
    "/dashboard/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/dashboard/app.css": ("app.css", "text/css; charset=utf-8"),
}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
# Headers a proxy in front adds to say whom it forwards for: any of them means the request is not
# the loopback client it looks like (nginx, Envoy, Cloudflare, Akamai, Fastly, Google's and Azure's fronts).
PROXY_HEADERS = (
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-forwarded-for",
    "x-envoy-external-address",
    "x-azure-clientip",
    "x-appengine-user-ip",
    "via",
)
REALM = 'Basic realm="loopway dashboard", charset="UTF-8"'


class DashboardGate:
    """Who may see the dashboard, and as which tenant (None: every tenant, in open mode)."""

    def __init__(self, api_keys: KeyRing, admin_keys: KeyRing | None) -> None:
        self.api_keys = api_keys
        self.admin_keys = admin_keys

    def viewer(self, request: Request) -> str | None:
        key = presented_key(request.headers.get("authorization"))
        if key is not None and self.admin_keys is not None:
            tenant = self.admin_keys.tenant(f"Bearer {key}")  # a wrong key: 401
            return None if self.api_keys.open else tenant
        if self.api_keys.open and _direct_loopback(request):
            return None
        raise self._refusal(request)

    def _refusal(self, request: Request) -> ApiError:
        if self.admin_keys is not None:
            return unauthorized(
                "The dashboard needs an admin key (Authorization: Bearer KEY, or the password of Basic auth).",
                code="missing_admin_key",
                headers={"www-authenticate": REALM},
            )
        if not self.api_keys.open:
            return not_found(
                "The dashboard is off: this server has API keys and no --admin-keys.", code="dashboard_disabled"
            )
        return forbidden(
            "Without --admin-keys the dashboard answers loopback clients only (and none through a proxy).",
            code="dashboard_loopback_only",
        )


def presented_key(authorization: str | None) -> str | None:
    """The key in ``Bearer KEY``, or the password in ``Basic base64(user:KEY)``."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


@functools.cache
def _asset(name: str) -> bytes:
    """A file of the page, read from the package once (not from disk on the loop at every load)."""
    return resources.files("loopway.dashboard").joinpath(name).read_bytes()


def _direct_loopback(request: Request) -> bool:
    if any(name in request.headers for name in PROXY_HEADERS):
        return False
    try:
        return request.client is not None and ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


def routes(service: ResponsesService, gate: DashboardGate) -> list[Route]:
    async def asset(request: Request) -> Response:
        gate.viewer(request)
        name, media_type = ASSETS[request.url.path.rstrip("/") or "/dashboard"]
        return Response(_asset(name), media_type=media_type, headers=PAGE_HEADERS)

    async def snapshot(request: Request) -> Response:
        return json_response(await service.dashboard(gate.viewer(request)), headers={"Cache-Control": "no-store"})

    async def feed(request: Request) -> Response:
        tenant = gate.viewer(request)
        service.feed.check_room()

        async def frames() -> AsyncIterator[bytes]:
            viewer = service.feed.join(tenant)  # here, so whatever starts it also ends it (finally)
            try:
                yield b"retry: 2000\n\n"
                while (frame := await viewer.next()) is not None:
                    yield b"event: snapshot\ndata: " + frame + b"\n\n"
            finally:
                service.feed.leave(viewer)

        return StreamingResponse(frames(), media_type="text/event-stream", headers=HEADERS)

    return [
        *(Route(path, asset, methods=["GET"]) for path in ASSETS),
        Route("/dashboard/", asset, methods=["GET"]),
        Route("/dashboard/snapshot", snapshot, methods=["GET"]),
        Route("/dashboard/feed", feed, methods=["GET"]),
    ]
