"""An ``ApiError`` as an HTTP response: the one place its status, headers and JSON body are framed.

Used for route errors, WebSocket handshake refusals (Starlette sends a ``Response`` as the denial of
an upgrade) and the auth middleware, so a client sees the same shape whichever layer refused it.
"""

from __future__ import annotations

import msgspec
from starlette.responses import Response

from loopway.protocol.errors import ApiError


def error_response(err: ApiError) -> Response:
    headers = dict(err.headers)
    if err.status == 401:
        headers.setdefault("www-authenticate", "Bearer")
    return Response(msgspec.json.encode(err.body()), status_code=err.status, media_type="application/json", headers=headers)
