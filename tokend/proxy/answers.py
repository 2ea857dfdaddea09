"""What a proxied request ends in (SPEC §9.1, §9.5): tokend's own answers in the Error shape, and
the upstream's error answers, read whole, decoded and redacted before they are passed on.

Pure but for :func:`read_error`, which reads an error answer's body from the upstream.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tokend.errbody import error_body, error_response
from tokend.logs import REDACTOR, get_logger
from tokend.names import ProxyOutcome
from tokend.proxy.headers import response_headers
from tokend.proxy.transfer import Transfer

MAX_ERROR_BODY = 64 * 1024  # an error answer read whole to be redacted
MAX_DECODED_ERROR = 1024 * 1024  # the most a compressed error answer may inflate to
log = get_logger()


@dataclass
class Forwarded:
    """How a request ended: the answer given, its status and the outcome to count."""

    response: web.StreamResponse
    status: int
    outcome: ProxyOutcome
    error: str | None = None  # what went wrong, for the log (never a secret)


def local_answer(status: int, code: str, message: str, outcome: ProxyOutcome, *,
                 remediation: str = "", retry_after: float | None = None,
                 reference_token: str | None = None,
                 headers: CIMultiDict[str] | None = None) -> Forwarded:
    """An answer of tokend's own, in the Error shape (503s with ``Retry-After``).

    ``headers`` are the upstream's, for an error answer withheld: kept but for the body's own.
    """
    if headers is None:
        answer = error_response(status, code, message, remediation, reference_token, retry_after)
        return Forwarded(answer, status, outcome, message if status >= 500 else None)
    extra = CIMultiDict(headers)
    for name in ("Content-Encoding", "Content-Type", "Content-Length", "Content-MD5", "ETag",
                 "Digest", "Content-Digest"):
        extra.popall(name, None)
    if status == 503 and "Retry-After" not in extra:
        extra["Retry-After"] = "5"
    answer = web.Response(status=status, content_type="application/json", headers=extra,
                          body=error_body(code, message, remediation, reference_token))
    return Forwarded(answer, status, outcome, message)


def error_answer(target: str, status: int, reason: str, headers: CIMultiDictProxy[str],
                 body: bytes | None, outcome: ProxyOutcome = "forwarded") -> Forwarded:
    """The upstream's error answer to a request for ``target``: ``body`` (None: over
    MAX_ERROR_BODY) redacted (SPEC §9.5), or withheld with an Error of tokend's when it cannot
    be checked (too large, or in a coding tokend cannot decode); headers filtered."""
    out = response_headers(headers.items())
    out.popall("Content-Length", None)
    why = "it is larger than 64 KiB" if body is None else None
    redacted: bytes | None = None
    if body is not None:
        coding = out.get("Content-Encoding", "identity").strip().lower()
        decoded = decode_body(body, coding)
        if decoded is None:
            why = f"it is encoded as {coding[:40]!r}, which tokend cannot read"
        else:
            redacted = redact_body(decoded)
            if redacted is not None:
                out.popall("Content-Encoding", None)
    if why is not None:
        log.warning("proxy.error_withheld", target=target, status=status,
                    reason=why)
        return local_answer(status, "UPSTREAM_ERROR_WITHHELD",
                      f"the upstream answered {status}, with an error answer tokend does not"
                      f" pass on because {why} (it could not be checked for secrets)",
                      outcome, remediation="See the SDDC Manager's own logs for the error",
                      headers=out)
    assert body is not None
    answer = web.Response(status=status, reason=reason or None, headers=out,
                          body=redacted if redacted is not None else body)
    return Forwarded(answer, status, outcome)


async def read_error(resp: aiohttp.ClientResponse, transfer: Transfer) -> bytes | None:
    """An error answer's body, if it is at most MAX_ERROR_BODY bytes; else None (not read)."""
    if resp.content_length is not None and resp.content_length > MAX_ERROR_BODY:
        return None
    data = bytearray()
    while chunk := await resp.content.read(MAX_ERROR_BODY + 1 - len(data)):
        data += chunk
        transfer.moved()
        if len(data) > MAX_ERROR_BODY:
            return None
    return bytes(data)


def decode_body(body: bytes, coding: str) -> bytes | None:
    """``body`` decoded from ``coding`` (identity, gzip, deflate), or None if tokend cannot."""
    if coding in ("", "identity"):
        return body
    try:
        if coding in ("gzip", "x-gzip"):
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":  # zlib-wrapped, as RFC 9110 says; raw deflate as servers send
            inflater = zlib.decompressobj(zlib.MAX_WBITS if body[:1] == b"\x78"
                                          else -zlib.MAX_WBITS)
        else:
            return None
        decoded = inflater.decompress(body, MAX_DECODED_ERROR)
        if inflater.unconsumed_tail or not inflater.eof:
            return None  # larger than MAX_DECODED_ERROR, or truncated
        return decoded
    except zlib.error:
        return None


def redact_body(body: bytes) -> bytes | None:
    """``body`` with every secret replaced (SPEC §5.6), or None when it holds none.

    Text is redacted as UTF-8 (other bytes pass unchanged); a JSON body is also redacted value by
    value, which catches a secret written with JSON escapes.
    """
    text = body.decode("utf-8", "surrogateescape")
    redacted = REDACTOR.text(text)
    if redacted.lstrip()[:1] in ("{", "["):
        try:
            data = json.loads(redacted)
        except (ValueError, RecursionError):
            data = None
        if data is not None:
            cleaned = REDACTOR(data)
            if cleaned != data:
                redacted = json.dumps(cleaned)
    if redacted == text:
        return None
    return redacted.encode("utf-8", "surrogateescape")
