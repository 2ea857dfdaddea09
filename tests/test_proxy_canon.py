"""The request-target rules of SPEC §9.1 (tokend/proxy/canon.py), alone: no sockets."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tokend.proxy.canon import (
    METHODS,
    Refused,
    RequestTarget,
    _decode_unreserved,
    _resolve_segments,
    canonical_path,
    check_method,
    is_token_path,
    parse_request_target,
    route_key,
    upstream_url,
)

# Characters a canonical path may hold: unreserved, sub-delims but ';', ':', '@', '/', and '%'
# only as the start of an upper-case escape of a reserved character.
CANONICAL_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@/]|%(?!2F|5C|3B|25)[0-7][0-9A-F]")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_forwarded_methods(method: str) -> None:
    check_method(method)


@pytest.mark.parametrize("method", ["CONNECT", "TRACE", "PROPFIND", "get", "BREW", ""])
def test_other_methods_are_refused(method: str) -> None:
    with pytest.raises(Refused, match="not forwarded"):
        check_method(method)


@pytest.mark.parametrize(("raw", "message"), [
    ("*", "asterisk-form"),
    ("http://evil.example/v1/domains", "origin-form"),
    ("https://sddc.example/v1/domains", "origin-form"),
    ("sddc.example:443", "origin-form"),
    ("v1/domains", "origin-form"),
    ("/v1/domains#frag", "fragment"),
    ("/v1/domains?a=b#frag", "fragment"),
    ("/v1/domains?a=\x01", "printable ASCII"),
    ("/v1/domains?a=é", "printable ASCII"),
])
def test_request_targets_that_are_not_origin_form_are_refused(raw: str, message: str) -> None:
    with pytest.raises(Refused, match=message):
        parse_request_target(raw)


@pytest.mark.parametrize(("raw", "path", "query"), [
    ("/v1/domains", "/v1/domains", None),
    ("/v1/domains?", "/v1/domains", ""),
    ("/v1/domains?name=sfo-m01&x=%2F%2e..", "/v1/domains", "name=sfo-m01&x=%2F%2e.."),
    ("/", "/", None),
    ("//v1//domains", "/v1/domains", None),
    ("/v1/./domains/", "/v1/domains/", None),
    ("/v1/x/../domains", "/v1/domains", None),
    ("/v1/%2e%2E/v1/domains", "/v1/domains", None),
    ("/../../etc/passwd", "/etc/passwd", None),
    ("/v1/domains/..", "/v1/", None),
    ("/v1/domains/.", "/v1/domains/", None),
    ("/v1/%64omains", "/v1/domains", None),
    ("/v1/a%3ab%20c", "/v1/a%3Ab%20c", None),
    ("/v1/a:b@c!$&'()*+,=", "/v1/a:b@c!$&'()*+,=", None),
    ("/v1/...", "/v1/...", None),
])
def test_canonical_forms(raw: str, path: str, query: str | None) -> None:
    target = parse_request_target(raw)
    assert target == RequestTarget(path, query)
    assert str(target) == path + ("" if query is None else "?" + query)


@pytest.mark.parametrize(("path", "message"), [
    ("/v1/a%2Fb", "%2F"),
    ("/v1/a%2fb", "%2F"),
    ("/v1/a%5Cb", "%5C"),
    ("/v1/a%5cb", "%5C"),
    ("/v1/a\\b", "backslash"),
    ("/v1/a;jsessionid=1", "';'"),
    ("/v1/a%3Bb", "%3B"),
    ("/v1/a%252Fb", "%25"),
    ("/v1/a%00", "control"),
    ("/v1/a\x00", "control"),
    ("/v1/a%0Ab", "control"),
    ("/v1/a%7f", "control"),
    ("/v1/caf%C3%A9", "non-ASCII"),
    ("/v1/café", "non-ASCII"),
    ("/v1/a%", "%XX"),
    ("/v1/a%2", "%XX"),
    ("/v1/a%zz", "%XX"),
    ("/v1/a b", "not allowed"),
    ("/v1/a\"b", "not allowed"),
    ("/v1/a<b>", "not allowed"),
    ("/v1/{a}", "not allowed"),
])
def test_refused_paths(path: str, message: str) -> None:
    with pytest.raises(Refused, match=re.escape(message)):
        canonical_path(path)


@pytest.mark.parametrize(("path", "token"), [
    ("/v1/tokens", True),
    ("/v1/tokens/", True),
    ("/V1/Tokens", True),
    ("/v1/tokens/access-token/refresh", True),
    ("/v1/TOKENS/refresh-token/", True),
    ("/v1/tokens/anything/else", True),
    ("/v1/tokensx", False),
    ("/v1/token", False),
    ("/v2/tokens", False),
    ("/v1/domains", False),
    ("/", False),
])
def test_token_paths(path: str, token: bool) -> None:
    assert is_token_path(path) is token


@pytest.mark.parametrize("raw", ["/v1/x/../tokens", "//v1//tokens//", "/v1/%74okens",
                                 "/v1/./TOKENS/access-token/refresh"])
def test_token_paths_are_found_after_canonicalisation(raw: str) -> None:
    assert is_token_path(parse_request_target(raw).path)


def test_route_key_ignores_case_and_one_trailing_slash() -> None:
    assert route_key("/V1/Tokens/") == "/v1/tokens"
    assert route_key("/") == "/"


@pytest.mark.parametrize(("base", "raw", "url"), [
    ("https://sddc.example", "/v1/domains?x=1", "https://sddc.example/v1/domains?x=1"),
    ("https://sddc.example:8443/prefix", "/v1/domains",
     "https://sddc.example:8443/prefix/v1/domains"),
    ("https://[::1]:8443", "//x/../v1/domains/", "https://[::1]:8443/v1/domains/"),
    ("https://sddc.example/prefix", "/../../v1", "https://sddc.example/prefix/v1"),
])
def test_upstream_url(base: str, raw: str, url: str) -> None:
    assert upstream_url(base, parse_request_target(raw)) == url


def test_upstream_url_refuses_a_target_that_changes_the_origin() -> None:
    # Not reachable through parse_request_target; the check is a guarantee, not an argument.
    for bad in (RequestTarget("@evil.example/x"), RequestTarget("//evil.example/x"),
                RequestTarget("/a/../../x"), RequestTarget("x")):
        with pytest.raises(Refused):
            upstream_url("https://sddc.example/prefix", bad)


# -- properties --------------------------------------------------------------------------------

# Paths built from the pieces that matter: separators, dots, escapes good and bad, odd characters.
path_pieces = st.sampled_from([
    "/", "//", ".", "..", "%2e", "%2E", "%2e%2e", "a", "B", "v1", "tokens", "%41", "%7E", "%3A",
    "%20", "%2F", "%5C", "%3B", "%25", "%00", "%C3", "\\", ";", "é", "%", "%g1", "~", "-", "_",
    "@", ":", "!", "'", "=", "+", "*", " ", "#", "?", "\x00", "\x7f",
])
paths = st.lists(path_pieces, max_size=16).map(lambda parts: "/" + "".join(parts))


@settings(max_examples=3000)
@given(paths)
@example("/%2e%2e/%2e%2e/etc")
@example("/a/b/../../../../c")
def test_canonical_paths_are_idempotent_and_never_escape(path: str) -> None:
    try:
        canonical = canonical_path(path)
    except Refused:
        return
    assert canonical_path(canonical) == canonical, "canonicalising twice changes nothing"
    assert canonical.startswith("/")
    assert "//" not in canonical
    segments = canonical.split("/")[1:]
    assert ".." not in segments and "." not in segments
    assert all(CANONICAL_CHARS.match(canonical, i) for i in _char_starts(canonical))
    url = upstream_url("https://sddc.example:8443/prefix", RequestTarget(canonical))
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("https", "sddc.example:8443")
    assert parts.path.startswith("/prefix/") or parts.path == "/prefix/"


@settings(max_examples=1000)
@given(st.text(max_size=40))
def test_any_text_is_canonical_or_refused(text: str) -> None:
    try:
        target = parse_request_target(text)
    except Refused as exc:
        assert str(exc)
        return
    assert text.startswith("/")
    assert canonical_path(target.path) == target.path


@settings(max_examples=1000)
@given(paths)
def test_a_refused_piece_anywhere_refuses_the_path(path: str) -> None:
    refused_piece = any(p in path.upper() for p in ("%2F", "%5C", "%3B", "%25", "%00", "%C3"))
    refused_piece = refused_piece or any(c in path for c in "\\; é#\x00\x7f")
    if refused_piece:
        with pytest.raises(Refused):
            canonical_path(path)


def _char_starts(text: str) -> list[int]:
    """Where each character (an escape counts as one) of a canonical path starts."""
    starts, i = [], 0
    while i < len(text):
        starts.append(i)
        i += 3 if text[i] == "%" else 1
    return starts


@settings(max_examples=3000)
@given(paths)
@example("/a/")
@example("/.well-known/x")
@example("/a%2E/b")
def test_the_fast_path_gives_what_decoding_and_resolving_every_path_gives(path: str) -> None:
    """A plain path skips decoding, a path without empty or dot segments skips resolving: the
    result is the one the full work gives."""
    try:
        full = _resolve_segments(_decode_unreserved(path))
    except Refused:
        with pytest.raises(Refused):
            canonical_path(path)
        return
    assert canonical_path(path) == full
