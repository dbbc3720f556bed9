"""Opaque, integrity-protected tokens for ``encrypted_content`` (compaction items).

The payload is compressed and authenticated with HMAC-SHA256 under the server's secret, so a
client can carry compacted context across requests and connections, and loopway can trust it
when it comes back. It is not encrypted: it is opaque to casual reading, not secret from a
determined one, which the docs say.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import zlib

from loopway.protocol.errors import invalid_request

_VERSION = b"lw1"
_MAC_SIZE = 32


class Sealer:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def seal(self, payload: bytes) -> str:
        body = _VERSION + zlib.compress(payload, 6)
        mac = hmac.new(self._secret, body, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")

    def unseal(self, token: str, *, param: str = "encrypted_content") -> bytes:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            raw = b""
        mac, body = raw[:_MAC_SIZE], raw[_MAC_SIZE:]
        expected = hmac.new(self._secret, body, hashlib.sha256).digest()
        if len(mac) != _MAC_SIZE or not hmac.compare_digest(mac, expected) or not body.startswith(_VERSION):
            raise invalid_request(
                "The encrypted content could not be verified: it was not issued by this server or was modified.",
                param=param,
                code="invalid_encrypted_content",
            )
        return zlib.decompress(body[len(_VERSION) :])
