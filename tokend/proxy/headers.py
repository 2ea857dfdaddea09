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


_REQUEST_SKIPPED = HOP_BY_HOP | REQUEST_DROPPED  # "connection" among them
_RESPONSE_SKIPPED = HOP_BY_HOP | RESPONSE_DROPPED


def _listed(connection: str) -> list[str]:
    if "," not in connection:  # one name, as "keep-alive" or "close" mostly are
        name = connection.strip().lower()
        return [name] if name else []
    return [token.strip().lower() for token in connection.split(",") if token.strip()]


def _filtered(incoming: Headers, skipped: frozenset[str],
              prefixes: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(name, lower-case name, value) of ``incoming`` but ``skipped``, ``prefixes`` and the headers
    a ``Connection`` header names; one pass, and a second only over what is left."""
    kept: list[tuple[str, str, str]] = []
    named: set[str] = set()  # a set: a Connection header may list thousands of names
    for name, value in incoming:
        lower = name.lower()
        if lower in skipped or lower.startswith(prefixes):
            if lower == "connection":
                named.update(_listed(value))
            continue
        kept.append((name, lower, value))
    if named:
        kept = [item for item in kept if item[1] not in named]
    return kept


def request_headers(incoming: Headers, host: str, token: str) -> CIMultiDict[str]:
    """The headers to send upstream: ``incoming`` filtered, then ``Host`` and the bearer token.

    Raises Refused for a value that cannot be sent on (a lone surrogate from undecodable bytes).
    """
    out: CIMultiDict[str] = CIMultiDict()
    for name, lower, value in _filtered(incoming, _REQUEST_SKIPPED, REQUEST_DROPPED_PREFIXES):
        if not value.isascii():
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
    return CIMultiDict(response_header_pairs(incoming))


def response_header_pairs(incoming: Headers) -> list[tuple[str, str]]:
    """:func:`response_headers` as (name, value) pairs, for a response that copies them anyway."""
    return [(name, value) for name, _, value in _filtered(incoming, _RESPONSE_SKIPPED,
                                                          RESPONSE_DROPPED_PREFIXES)]
