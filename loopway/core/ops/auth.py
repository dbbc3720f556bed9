"""API keys and tenants: who is calling, and whose stored responses they may see.

Keys come from a file of ``KEY TENANT`` lines (``#`` comments and blank lines allowed), reloaded
on SIGHUP. Without a key file the server runs open: every caller is the one tenant ``""``.
Keys are kept only as SHA-256 digests and never logged; errors show a masked key, as OpenAI does.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from loopway.protocol.errors import unauthorized

log = logging.getLogger("loopway.auth")

OPEN_TENANT = ""


class KeyFileError(ValueError):
    pass


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def mask(key: str) -> str:
    return key[:3] + "*" * 4 + key[-4:] if len(key) > 10 else "*" * len(key)


def parse_keys(text: str, source: str = "api keys") -> dict[str, str]:
    keys: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise KeyFileError(f"{source}:{number}: expected 'KEY TENANT'")
        if not (parts[0].isascii() and parts[0].isprintable()):
            raise KeyFileError(
                f"{source}:{number}: the key has characters outside printable ASCII, which an HTTP "
                "Authorization header cannot carry, so it could never match"
            )
        keys[_digest(parts[0])] = parts[1]
    return keys


class KeyRing:
    """The accepted keys; ``None`` path means open mode."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self._tenants: dict[str, str] = {}
        self.reload()

    @property
    def open(self) -> bool:
        return self.path is None

    def reload(self) -> None:
        if self.path is None:
            return
        try:
            self._tenants = parse_keys(self.path.read_text(), str(self.path))
        except (OSError, KeyFileError) as exc:
            if not self._tenants:
                raise KeyFileError(str(exc)) from None
            log.error("keeping the previous keys: %s", exc)  # a bad reload must not lock everyone out
            return
        log.info("loaded %d API keys for %d tenants", len(self._tenants), len(set(self._tenants.values())))

    def tenant(self, authorization: str | None) -> str:
        """The caller's tenant, or the 401 to answer."""
        if self.open:
            return OPEN_TENANT
        if not authorization or not authorization.lower().startswith("bearer "):
            raise unauthorized(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="missing_api_key",
            )
        key = authorization[7:].strip()
        tenant = self._tenants.get(_digest(key))
        if tenant is None:
            raise unauthorized(f"Incorrect API key provided: {mask(key)}.", code="invalid_api_key")
        return tenant
