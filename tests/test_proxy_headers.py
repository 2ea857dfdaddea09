"""Which headers pass through the proxy (tokend/proxy/headers.py), alone: no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokend.proxy.canon import Refused
from tokend.proxy.headers import (
    HOP_BY_HOP,
    readable_codings,
    request_headers,
    response_headers,
)

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ0b2tlbmQifQ.c2ln"
HOST = "sddc.example:8443"


def connection_named(headers: list[tuple[str, str]]) -> set[str]:
    """The names every Connection header lists, lower case: the tests' own reading of RFC 9110."""
    return {token.strip().lower() for name, value in headers if name.lower() == "connection"
            for token in value.split(",") if token.strip()}


def names(headers: object) -> list[str]:
    return [name.lower() for name, _ in headers.items()]  # type: ignore[attr-defined]


def test_the_consumers_credentials_and_framing_never_pass() -> None:
    incoming = [
        ("Host", "evil.example"), ("Authorization", "Bearer consumer-token"),
        ("authorization", "Basic Zm9vOmJhcg=="), ("Cookie", "JSESSIONID=1"),
        ("Content-Length", "5"), ("Transfer-Encoding", "chunked"), ("Expect", "100-continue"),
        ("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"), ("TE", "trailers"),
        ("Trailer", "X-Sum"), ("Upgrade", "websocket"), ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic x"), ("Forwarded", "for=1.2.3.4"),
        ("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Host", "evil"), ("x-forwarded-proto", "http"),
        ("Content-Type", "application/json"), ("Accept", "application/json"),
        ("X-Request-Id", "abc"),
    ]
    out = request_headers(incoming, HOST, TOKEN)
    assert out.getall("Host") == [HOST]
    assert out.getall("Authorization") == [f"Bearer {TOKEN}"]
    assert sorted(names(out)) == ["accept", "authorization", "content-type", "host", "x-request-id"]


def test_headers_named_in_connection_are_dropped_but_tokends_own_stay() -> None:
    incoming = [("Connection", "Authorization, X-Secret"), ("connection", " host ,Accept"),
                ("Authorization", "Bearer consumer"), ("X-Secret", "1"), ("Accept", "*/*"),
                ("X-Kept", "2")]
    assert connection_named(incoming) == {"authorization", "x-secret", "host", "accept"}
    out = request_headers(incoming, HOST, TOKEN)
    assert out.getall("Authorization") == [f"Bearer {TOKEN}"]
    assert out.getall("Host") == [HOST]
    assert "X-Secret" not in out and "Accept" not in out
    assert out.getall("X-Kept") == ["2"]


def test_repeated_headers_keep_every_value_in_order() -> None:
    incoming = [("X-A", "1"), ("x-a", "2"), ("Accept", "a"), ("X-A", "3")]
    out = request_headers(incoming, HOST, TOKEN)
    assert out.getall("X-A") == ["1", "2", "3"]


def test_accept_encoding_keeps_only_what_tokend_can_read() -> None:
    assert readable_codings("gzip, deflate, br, zstd") == "gzip, deflate"
    assert readable_codings("br;q=1.0, GZIP;q=0.5, identity") == "GZIP;q=0.5, identity"
    assert readable_codings("br") == ""
    out = request_headers([("Accept-Encoding", "br, zstd")], HOST, TOKEN)
    assert "Accept-Encoding" not in out
    out = request_headers([("Accept-Encoding", "deflate, gzip, br, zstd")], HOST, TOKEN)
    assert out["Accept-Encoding"] == "deflate, gzip"


def test_a_value_that_is_not_text_is_refused() -> None:
    with pytest.raises(Refused, match="X-Bad"):
        request_headers([("X-Bad", "a\udcffb")], HOST, TOKEN)


def test_the_upstreams_cookies_and_hop_by_hop_headers_never_reach_the_consumer() -> None:
    incoming = [("Content-Type", "application/json"), ("Content-Length", "10"),
                ("Set-Cookie", "VCFSESSION=1"), ("set-cookie", "b=2"), ("Set-Cookie2", "c=3"),
                ("Connection", "close, X-Internal"), ("X-Internal", "1"), ("Keep-Alive", "x"),
                ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"), ("Trailer", "x"),
                ("Proxy-Authenticate", "Basic"), ("ETag", '"1"'), ("Link", "<a>"),
                ("link", "<b>"), ("Content-Encoding", "gzip")]
    out = response_headers(incoming)
    assert sorted(names(out)) == ["content-encoding", "content-length", "content-type", "etag",
                                  "link", "link"]
    assert out.getall("Link") == ["<a>", "<b>"]


header_names = st.sampled_from([
    "Host", "Authorization", "AUTHORIZATION", "Cookie", "Content-Length", "Transfer-Encoding",
    "Expect", "Connection", "Keep-Alive", "TE", "Trailer", "Upgrade", "Proxy-Connection",
    "Proxy-Authorization", "Forwarded", "X-Forwarded-For", "x-forwarded-host", "Accept",
    "Content-Type", "X-Custom", "If-Match", "Accept-Encoding",
])
header_values = st.sampled_from(["1", "Authorization", "Host, X-Custom", "Bearer x", "gzip, br",
                                 "keep-alive, Accept", "chunked", ""])


@settings(max_examples=500)
@given(st.lists(st.tuples(header_names, header_values), max_size=12))
def test_whatever_the_consumer_sends_tokend_sets_host_and_authorization_once(
        incoming: list[tuple[str, str]]) -> None:
    out = request_headers(incoming, HOST, TOKEN)
    assert out.getall("Host") == [HOST]
    assert out.getall("Authorization") == [f"Bearer {TOKEN}"]
    named = connection_named(incoming)
    for name in names(out):
        assert name not in HOP_BY_HOP
        assert name in ("host", "authorization") or name not in named
        assert name not in ("cookie", "content-length", "expect", "forwarded")
        assert not name.startswith(("proxy-", "x-forwarded-"))
    # Nothing the consumer sent is lost but what the rules drop.
    kept = [(n, v) for n, v in incoming
            if n.lower() in ("accept", "content-type", "x-custom", "if-match")
            and n.lower() not in named]
    assert [(n, v) for n, v in out.items() if (n, v) in kept] == kept


@settings(max_examples=500)
@given(st.lists(st.tuples(header_names | st.just("Set-Cookie"), header_values), max_size=12))
def test_response_filter_properties(incoming: list[tuple[str, str]]) -> None:
    out = response_headers(incoming)
    named = connection_named(incoming)
    for name in names(out):
        assert name not in HOP_BY_HOP and name not in named
        assert name != "set-cookie" and not name.startswith("proxy-")


class _CountedName(str):
    """A lower-case header name that counts the equality tests made against it."""

    compared = 0
    __hash__ = str.__hash__

    def __eq__(self, other: object) -> bool:
        _CountedName.compared += 1
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)


class _Name(str):
    def lower(self) -> str:
        return _CountedName(str.lower(self))


def test_a_connection_header_listing_thousands_of_names_costs_no_scan_per_header() -> None:
    """The names Connection lists are looked up, not scanned: at aiohttp's limits (128 headers of
    8190 bytes) a scan held the event loop for about 0.3 s per request."""
    listed = ",".join(f"x-n{i}" for i in range(2000))
    headers = [("Connection", listed)] + [(_Name(f"X-Kept-{i}"), "v") for i in range(20)]
    for kept in (request_headers(headers, HOST, TOKEN), response_headers(headers)):
        assert len(kept) >= 20
    _CountedName.compared = 0
    request_headers(headers, HOST, TOKEN)
    response_headers(headers)
    assert _CountedName.compared < 400, f"{_CountedName.compared} comparisons for 40 kept headers"
