"""``--mcp-allow``: which server URLs pass, and which addresses a connection may reach."""

from __future__ import annotations

import pytest

from loopway.mcp.allow import AllowSpecError, McpAllowList


def test_nothing_is_allowed_by_default():
    allow = McpAllowList.parse("")
    assert not allow
    assert not allow.url_allowed("https://mcp.example.com/mcp")
    assert not allow.url_allowed("http://127.0.0.1:8000/mcp")


@pytest.mark.parametrize(
    "url,allowed",
    [
        ("https://mcp.example.com/v1", True),
        ("https://mcp.example.com/v1/mcp", True),
        ("https://mcp.example.com:443/v1/mcp?x=1", True),
        ("https://mcp.example.com/v10", False),  # a prefix ends at a path segment
        ("https://mcp.example.com/", False),
        ("http://mcp.example.com/v1", False),  # another scheme
        ("https://mcp.example.com:8443/v1", False),  # another port
        ("https://mcp.example.com.evil.net/v1", False),
        ("https://mcp.example.com@evil.net/v1", False),  # userinfo: the host is evil.net
        ("https://user:pw@mcp.example.com/v1", False),  # credentials belong in headers
        ("ftp://mcp.example.com/v1", False),
        ("not a url", False),
    ],
)
def test_a_url_prefix(url: str, allowed: bool):
    assert McpAllowList.parse("https://mcp.example.com/v1").url_allowed(url) is allowed


def test_hosts_ports_and_wildcards():
    allow = McpAllowList.parse("tools.example.com, api.example.org:8443, *.corp.example")
    assert allow.url_allowed("https://tools.example.com/anything")
    assert allow.url_allowed("http://tools.example.com:9000/mcp")
    assert allow.url_allowed("https://api.example.org:8443/mcp")
    assert not allow.url_allowed("https://api.example.org/mcp")
    assert allow.url_allowed("https://a.b.corp.example/mcp")
    assert not allow.url_allowed("https://corp.example/mcp")
    assert not allow.url_allowed("https://evilcorp.example/mcp")


def test_private_and_loopback_addresses_only_where_listed():
    allow = McpAllowList.parse("tools.example.com")
    assert allow.address_allowed("93.184.216.34", "tools.example.com", 443)  # public: the URL's host was allowed
    for private in (
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.9",
        "169.254.169.254",
        "::1",
        "fd00::1",
        "0.0.0.0",
        "::ffff:127.0.0.1",
    ):
        assert not allow.address_allowed(private, "tools.example.com", 443), private
    listed = McpAllowList.parse("tools.example.com, 10.0.0.0/8, http://127.0.0.1:9000/")
    assert listed.address_allowed("10.1.2.3", "tools.example.com", 443)  # a network entry covers it anywhere
    assert listed.address_allowed("127.0.0.1", "127.0.0.1", 9000)
    assert not listed.address_allowed("127.0.0.1", "tools.example.com", 443)  # a name that resolves to loopback
    assert not listed.address_allowed("127.0.0.1", "127.0.0.1", 22)
    assert not listed.address_allowed("192.168.0.9", "tools.example.com", 443)
    localhost = McpAllowList.parse("localhost:9000")
    assert localhost.address_allowed("::1", "localhost", 9000) and localhost.address_allowed("127.0.0.1", "localhost", 9000)
    assert not localhost.address_allowed("127.0.0.1", "localhost", 9001)


def test_an_address_in_the_url_must_itself_be_listed():
    allow = McpAllowList.parse("10.0.0.0/8")
    assert allow.url_allowed("http://10.0.0.7:8000/mcp")
    assert not allow.url_allowed("http://11.0.0.7:8000/mcp")
    assert not McpAllowList.parse("tools.example.com").url_allowed("http://8.8.8.8/mcp")


@pytest.mark.parametrize("spec", ["ftp://x/", "https:///path", "host:port", "a/b"])
def test_bad_entries_are_refused(spec: str):
    with pytest.raises(AllowSpecError):
        McpAllowList.parse(spec)


@pytest.mark.parametrize(
    "entry,url,allowed",
    [
        # An entry written with an address or localhost allows what it names, not the whole address.
        ("http://127.0.0.1:9000/mcp", "http://127.0.0.1:9000/mcp", True),
        ("http://127.0.0.1:9000/mcp", "http://127.0.0.1:9000/admin", False),
        ("http://127.0.0.1:9000/mcp", "http://127.0.0.1:22/", False),
        ("http://127.0.0.1:9000/mcp", "http://127.0.0.2:9000/mcp", False),
        ("http://127.0.0.1:9000/mcp", "http://[::ffff:127.0.0.1]:9000/mcp", False),
        ("127.0.0.1:9000", "http://127.0.0.1:9000/anything", True),
        ("127.0.0.1:9000", "http://127.0.0.1:6379/", False),
        ("localhost:9000", "http://localhost:9000/mcp", True),
        ("localhost:9000", "http://localhost:6379/", False),
        ("localhost:9000", "http://127.0.0.1:9000/mcp", False),
        ("localhost:9000", "http://[::1]:9000/mcp", False),
        ("[::1]:9000", "http://[::1]:9000/mcp", True),
        ("[::1]:9000", "http://[::1]:9001/mcp", False),
        # An address or network entry is written to allow the servers in it.
        ("127.0.0.1", "http://127.0.0.1:6379/", True),
        ("10.0.0.0/8", "http://10.9.9.9:80/mcp", True),
        # A prefix is not climbed out of by encoding.
        ("http://127.0.0.1:9000/mcp", "http://127.0.0.1:9000/mcp/%2e%2e/admin", False),
        ("http://127.0.0.1:9000/mcp", "http://127.0.0.1:9000/mcp%2f..%2fadmin", False),
        ("http://127.0.0.1:9000/mcp", "http://127.0.0.1:9000/mcp/../admin", False),
        ("http://127.0.0.1:9000/mcp", "http://127.0.0.1:9000/mcp/tools?x=%2e%2e", True),
    ],
)
def test_an_entry_allows_exactly_what_it_names(entry: str, url: str, allowed: bool):
    assert McpAllowList.parse(entry).url_allowed(url) is allowed
