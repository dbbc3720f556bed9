"""Reasoning the client carries: sealed to the tenant, readable after a key rotation, refused when forged."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest

from loopway.core.context.reasoning import ReasoningVault
from loopway.protocol.errors import ApiError
from loopway.protocol.items import Reasoning, ReasoningText, SummaryText
from loopway.settings import load_keys

OLD, NEW = secrets.token_bytes(32), secrets.token_bytes(32)


def thought() -> Reasoning:
    return Reasoning(
        id="rs_1",
        summary=[SummaryText(text="Look first.")],
        content=[ReasoningText(text="The user asks for a file; read it.")],
    )


def blank(token: str) -> Reasoning:
    return Reasoning(id="rs_1", summary=[], encrypted_content=token)


def test_sealed_reasoning_comes_back_whole_for_its_tenant():
    vault = ReasoningVault([NEW])
    item = blank(vault.seal(thought(), "acme"))
    vault.restore(item, "acme", "input[0].encrypted_content")
    assert item.content == thought().content and item.summary == thought().summary


def test_a_rotated_key_still_opens_what_it_sealed():
    token = ReasoningVault([OLD]).seal(thought(), "acme")
    item = blank(token)
    ReasoningVault([NEW, OLD]).restore(item, "acme", "p")
    assert item.content == thought().content


@pytest.mark.parametrize("forge", ["tamper", "truncate", "other-server", "other-tenant", "garbage"])
def test_forged_content_is_a_400_naming_the_item(forge: str):
    vault = ReasoningVault([NEW])
    token = vault.seal(thought(), "acme")
    tenant = "acme"
    if forge == "tamper":
        raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        raw[-1] ^= 1
        token = base64.urlsafe_b64encode(bytes(raw)).decode()
    elif forge == "truncate":
        token = token[:20]
    elif forge == "other-server":
        token = ReasoningVault([OLD]).seal(thought(), "acme")
    elif forge == "other-tenant":
        tenant = "intruder"
    else:
        token = "not base64 at all!"
    with pytest.raises(ApiError) as refused:
        vault.restore(blank(token), tenant, "input[3].encrypted_content")
    assert refused.value.status == 400 and refused.value.code == "invalid_encrypted_content"
    assert refused.value.param == "input[3].encrypted_content"


def test_key_files_are_created_once_and_read_newest_first(tmp_path: Path):
    path = tmp_path / "reasoning.keys"
    first = load_keys(path)
    assert load_keys(path) == first and len(first) == 1 and (path.stat().st_mode & 0o777) == 0o600
    path.write_text(base64.b64encode(NEW).decode() + "\n" + path.read_text())
    assert load_keys(path) == [NEW, *first]
    path.write_text("short\n")
    with pytest.raises(ValueError, match="32-byte"):
        load_keys(path)
