"""Which headers pass through the proxy, both ways (SPEC §9.1). Pure: headers in, headers out.

To the upstream, the consumer's headers are filtered first, then tokend sets ``Host`` and
``Authorization`` itself (so nothing the consumer sends, ``Connection: Authorization`` included,
can remove or replace them) and aiohttp computes the framing. Dropped from the consumer:

- the hop-by-hop headers of RFC 9110 §7.6.1 (``Connection``, ``Keep-Alive``, ``Proxy-Connection``,
  ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``) and every header ``Connection`` names;
- ``Proxy-*``, ``Content-Length`` and ``Expect`` (framing is tokend's), ``Authorization`` and
  ``Cookie`` (credentials are tokend's), ``Forwarded`` and ``X-Forwarded-*`` (never trusted),
  ``Host``.

``Accept-Encoding`` keeps only the codings tokend can read back (gzip, deflate, identity): an
error answer must be readable to be redacted (SPEC §9.5), and a coding tokend cannot decode would
force it to withhold the answer.

From the upstream: the hop-by-hop headers, every header its ``Connection`` names, ``Proxy-*`` and
``Set-Cookie`` (a session cookie of tokend's account is not the consumer's). Names are compared
case-insensitively and every value of a repeated header is kept, in order.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict

from tokend.proxy.canon import Refused

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                        "transfer-encoding", "upgrade"})
REQUEST_DROPPED = frozenset({"content-length", "expect", "authorization", "cookie", "forwarded",
                             "host"})
REQUEST_DROPPED_PREFIXES = ("proxy-", "x-forwarded-")
RESPONSE_DROPPED = frozenset({"set-cookie", "set-cookie2"})
RESPONSE_DROPPED_PREFIXES = ("proxy-",)
READABLE_CODINGS = frozenset({"gzip", "deflate", "identity"})

Headers = Iterable[tuple[str, str]]


def connection_named(headers: Headers) -> frozenset[str]:
    """The header names every ``Connection`` header lists, lower case."""
    named: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            named.update(token.strip().lower() for token in value.split(",") if token.strip())
    return frozenset(named)


def request_headers(incoming: Headers, host: str, token: str) -> CIMultiDict[str]:
    """The headers to send upstream: ``incoming`` filtered, then ``Host`` and the bearer token.

    Raises Refused for a value that cannot be sent on (a lone surrogate from undecodable bytes).
    """
    pairs = list(incoming)
    named = connection_named(pairs)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in pairs:
        lower = name.lower()
        if (lower in HOP_BY_HOP or lower in named or lower in REQUEST_DROPPED
                or lower.startswith(REQUEST_DROPPED_PREFIXES)):
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Refused(f"the value of the {name[:40]} header is not valid text") from None
        if lower == "accept-encoding":
            value = readable_codings(value)
            if not value:
                continue
        out.add(name, value)
    out["Host"] = host
    out["Authorization"] = f"Bearer {token}"
    return out


def readable_codings(accept_encoding: str) -> str:
    """``Accept-Encoding`` with only the codings tokend can decode (their parameters kept)."""
    kept = []
    for item in accept_encoding.split(","):
        coding = item.split(";", 1)[0].strip().lower()
        if coding in READABLE_CODINGS:
            kept.append(item.strip())
    return ", ".join(kept)


def response_headers(incoming: Headers) -> CIMultiDict[str]:
    """The upstream's headers to pass back: hop-by-hop, ``Proxy-*`` and ``Set-Cookie`` dropped."""
    pairs = list(incoming)
    named = connection_named(pairs)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in pairs:
        lower = name.lower()
        if (lower in HOP_BY_HOP or lower in named or lower in RESPONSE_DROPPED
                or lower.startswith(RESPONSE_DROPPED_PREFIXES)):
            continue
        out.add(name, value)
    return out
