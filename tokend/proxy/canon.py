"""Which requests the proxy forwards, and the one canonical form of their path (SPEC §9.1).

The rules, all decided here and nowhere else:

- Methods: GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS. Anything else (``CONNECT``, ``TRACE``,
  extension methods) is refused.
- Request target: origin-form only (``/path?query``). Absolute-form (``http://host/path``),
  authority-form (``host:443``) and asterisk-form (``OPTIONS *``) are refused, and so is a
  fragment (``#``), which a client never sends.
- The path is canonicalised once, and everything downstream (routing, the upstream URL, logs) uses
  that one string. Percent-escapes of unreserved characters are decoded (``%2E`` is ``.``, so an
  encoded dot segment is resolved like a plain one); others are kept, in upper case. Refused:
  ``%2F`` and ``%5C`` (a slash the router and the upstream could disagree on), ``\\``, ``;`` and
  ``%3B`` (path parameters: servlet containers strip them, routers do not), ``%25`` (a second
  round of decoding would turn ``%252F`` into ``%2F``), NUL and every other control character,
  non-ASCII, malformed escapes, and characters RFC 3986 does not allow in a path. Then dot segments
  are resolved (never above the root) and repeated slashes merged; a trailing slash is kept.
- The query is passed on exactly as sent (printable ASCII; checked, never rewritten).
- Token paths: any canonical path under ``/v1/tokens``, in any case, with or without a trailing
  slash, is answered by tokend and never forwarded.
- The upstream URL is the target's origin and path prefix followed by the canonical path and the
  query; the result must keep the origin and stay under the prefix, or it is refused.

Pure: strings in, strings or :class:`Refused` out.
"""

from __future__ import annotations

import functools
import re
import string
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
TOKEN_PATH = "/v1/tokens"

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# pchar minus ';' (sub-delims ! $ & ' ( ) * + , = and : @), unreserved, '/' and '%' for escapes.
_PATH_CHARS = frozenset(_UNRESERVED | set("!$&'()*+,=:@/%"))
# Escapes that stand for a character with a meaning of its own in a path, or for a '%'.
_REFUSED_ESCAPES = {0x2F: "%2F (an encoded '/')", 0x5C: "%5C (an encoded '\\')",
                    0x3B: "%3B (an encoded ';')", 0x25: "%25 (an encoded '%': double encoding)"}
_HEX = re.compile(r"[0-9A-Fa-f]{2}")
# A path of plain path characters only (no escape): nothing to decode or upper-case.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@/]*")
_PRINTABLE_QUERY = re.compile(r"[\x21-\x7e]*")


class Refused(ValueError):
    """A request tokend does not forward; the message says why (answered 400 BAD_REQUEST)."""


@dataclass(frozen=True)
class RequestTarget:
    """A request target in canonical form: the path, and the query as sent (None: no ``?``)."""

    path: str
    query: str | None = None

    def __str__(self) -> str:
        return self.path if self.query is None else f"{self.path}?{self.query}"


def check_method(method: str) -> None:
    """Refuse a method the proxy does not forward."""
    if method not in METHODS:
        shown = method[:20].encode("ascii", "replace").decode()
        raise Refused(f"the method {shown} is not forwarded; use one of "
                      + ", ".join(sorted(METHODS)))


def parse_request_target(raw: str) -> RequestTarget:
    """The request target exactly as it was on the request line, checked and canonicalised."""
    if raw == "*":
        raise Refused("the asterisk-form request target (OPTIONS *) is not forwarded")
    if not raw.startswith("/"):
        raise Refused("only an origin-form request target (/path?query) is forwarded, not an"
                      " absolute URL or a host:port")
    if "#" in raw:
        raise Refused("a request target must not carry a fragment (#)")
    path, sep, query = raw.partition("?")
    if sep and not _PRINTABLE_QUERY.fullmatch(query):
        raise Refused("the query holds a character that is not printable ASCII")
    return RequestTarget(canonical_path(path), query if sep else None)


def canonical_path(path: str) -> str:
    """``path`` (starting with ``/``) in canonical form; Refused if it holds anything refused."""
    if not path.startswith("/"):
        raise Refused("the path must start with /")
    decoded = path if _PLAIN_PATH.fullmatch(path) else _decode_unreserved(path)
    if "//" not in decoded and "/." not in decoded:
        return decoded  # no empty or dot segment: already canonical
    return _resolve_segments(decoded)


def _resolve_segments(decoded: str) -> str:
    """Dot segments resolved (never above the root), empty ones merged, a trailing slash kept."""
    segments = decoded.split("/")[1:]
    out: list[str] = []
    trailing = False
    for segment in segments:
        # A trailing slash survives "/a/", "/a/." and "/a/b/..": each names a directory.
        trailing = segment in ("", ".", "..")
        if segment == "..":
            if out:
                out.pop()
        elif segment not in ("", "."):
            out.append(segment)
    if not out:
        return "/"
    return "/" + "/".join(out) + ("/" if trailing else "")


def _decode_unreserved(path: str) -> str:
    """Decode escapes of unreserved characters, upper-case the others, refuse what is refused."""
    out: list[str] = []
    i = 0
    while i < len(path):
        c = path[i]
        if c == "%":
            hex_text = path[i + 1:i + 3]
            if not _HEX.fullmatch(hex_text):
                raise Refused("the path holds a '%' that does not start a %XX escape")
            value = int(hex_text, 16)
            if value in _REFUSED_ESCAPES:
                raise Refused(f"the path holds {_REFUSED_ESCAPES[value]}")
            if value < 0x20 or value == 0x7F:
                raise Refused("the path holds an encoded control character (NUL included)")
            if value >= 0x80:
                raise Refused("the path holds an encoded non-ASCII byte")
            char = chr(value)
            out.append(char if char in _UNRESERVED else f"%{value:02X}")
            i += 3
            continue
        if c not in _PATH_CHARS:
            if c == "\\":
                raise Refused("the path holds a backslash")
            if c == ";":
                raise Refused("the path holds a ';' (path parameters are not forwarded)")
            if c == "\0" or ord(c) < 0x20 or ord(c) == 0x7F:
                raise Refused("the path holds a control character (NUL included)")
            if not c.isascii():
                raise Refused("the path holds a non-ASCII character")
            raise Refused(f"the path holds {c!r}, which is not allowed in a path")
        out.append(c)
        i += 1
    return "".join(out)


def route_key(path: str) -> str:
    """How a canonical path is matched: lower case, without one trailing slash."""
    lowered = path.lower()
    return lowered[:-1] if len(lowered) > 1 and lowered.endswith("/") else lowered


def is_token_path(path: str) -> bool:
    """Whether the canonical ``path`` is under ``/v1/tokens`` (answered by tokend, never forwarded)."""
    key = route_key(path)
    return key == TOKEN_PATH or key.startswith(TOKEN_PATH + "/")


@functools.lru_cache(maxsize=64)
def _split_base(base_url: str) -> SplitResult:
    return urlsplit(base_url)


def upstream_url(base_url: str, target: RequestTarget) -> str:
    """The target's ``url`` (origin and path prefix, no trailing slash) plus the request target.

    Raises Refused if the result would not keep the origin or leave the prefix (it cannot, for a
    canonical path; the check makes that a guarantee rather than an argument).
    """
    base = _split_base(base_url)
    url = base_url + str(target)
    got = urlsplit(url)
    rest = got.path[len(base.path):]
    if (got.scheme, got.netloc) != (base.scheme, base.netloc) or not got.path.startswith(
            base.path) or not rest.startswith("/") or "/../" in rest + "/" or "//" in rest:
        raise Refused("the request target would leave the target's origin or path prefix")
    return url
