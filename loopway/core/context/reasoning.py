"""Reasoning a client carries between turns: ``encrypted_content`` that only this server can read.

A ``store=false`` client (Codex, most agent loops) keeps no state on the server, so a reasoning
model's chain of thought travels with the client: the reasoning item's ``encrypted_content`` holds
its text and summary, sealed with AES-256-GCM under the server's key and bound to the tenant (one
project's reasoning is no other's), and the next turn's input brings it back for the engine.

Keys rotate: the first key seals, every key opens, so reasoning sealed before a rotation still reads.
A token that fails to open (tampered, truncated, another server's, another tenant's) is a 400
``invalid_encrypted_content`` naming the item, never a 500.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import zlib

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from loopway.protocol.errors import invalid_request
from loopway.protocol.items import Reasoning, ReasoningText, SummaryText

_VERSION = b"lr1"
_KEY_ID = 4
_NONCE = 12
MAX_PAYLOAD = 4 << 20  # what one reasoning item may inflate to


class _Sealed(msgspec.Struct):
    content: list[str]
    summary: list[str]


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()[:_KEY_ID]


class ReasoningVault:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys or any(len(k) != 32 for k in keys):
            raise ValueError("reasoning keys must be 32 bytes each, at least one")
        self._sealing = keys[0]
        self._keys = {key_id(k): AESGCM(k) for k in keys}

    def seal(self, item: Reasoning, tenant: str) -> str:
        payload = msgspec.json.encode(
            _Sealed(content=[p.text for p in item.content or []], summary=[p.text for p in item.summary])
        )
        nonce = secrets.token_bytes(_NONCE)
        sealed = AESGCM(self._sealing).encrypt(nonce, zlib.compress(payload, 6), _VERSION + tenant.encode())
        return base64.urlsafe_b64encode(_VERSION + key_id(self._sealing) + nonce + sealed).decode().rstrip("=")

    def restore(self, item: Reasoning, tenant: str, param: str) -> None:
        """Give ``item`` back the reasoning its ``encrypted_content`` holds (what the engine sees)."""
        if not item.encrypted_content:
            return
        sealed = self._open(item.encrypted_content, tenant, param)
        item.content = [ReasoningText(text=t) for t in sealed.content] or None
        item.summary = [SummaryText(text=t) for t in sealed.summary]

    def _open(self, token: str, tenant: str, param: str) -> _Sealed:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            version, kid, rest = raw[:3], raw[3 : 3 + _KEY_ID], raw[3 + _KEY_ID :]
            cipher = self._keys.get(kid) if version == _VERSION else None
            if cipher is None:
                raise InvalidTag
            plain = cipher.decrypt(rest[:_NONCE], rest[_NONCE:], _VERSION + tenant.encode())
            inflater = zlib.decompressobj()
            payload = inflater.decompress(plain, MAX_PAYLOAD)
            if inflater.unconsumed_tail:
                raise InvalidTag
            return msgspec.json.decode(payload, type=_Sealed)
        except (InvalidTag, ValueError, zlib.error, msgspec.DecodeError):
            raise invalid_request(
                "The encrypted reasoning content could not be read: it was not issued to you by this server, or "
                "it was modified.",
                param=param,
                code="invalid_encrypted_content",
            ) from None
