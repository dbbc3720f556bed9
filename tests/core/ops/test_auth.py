"""API key files: what loads, what is refused at load, and how a key maps to its tenant."""

from __future__ import annotations

import pytest

from loopway.core.ops.auth import KeyFileError, parse_keys


def test_keys_map_to_tenants_and_comments_are_skipped():
    keys = parse_keys("# ops\nsk-aaaaaaaaaa acme\n\nsk-bbbbbbbbbb beta\n")
    assert sorted(keys.values()) == ["acme", "beta"]


@pytest.mark.parametrize("line", ["sk-ünïcode acme", "sk-\u200bzero-width acme", "sk-key acme extra"])
def test_a_key_no_header_can_carry_or_a_malformed_line_is_refused_at_load(line: str):
    with pytest.raises(KeyFileError, match="keys:1"):
        parse_keys(line, "keys")
