"""What an SDDC Manager answered, checked at the door (SPEC §8.2).

An access token must be a compact JWS of at most :data:`MAX_ACCESS_TOKEN` bytes, a refresh token id
a string or ``{"id": ...}``; an ``Error`` body gives the operator's fields; ``Retry-After`` and
``Date`` give seconds. A malformed token answer is an :class:`~tokend.errors.InvalidResponse`.
"""

from __future__ import annotations

import email.utils
import json
import re

from tokend.errors import InvalidResponse, UpstreamDetail

MAX_DETAIL_CHARS = 1000
MAX_ACCESS_TOKEN = 16 * 1024  # bytes (ASCII once it is a JWS); the vendor's is under 2 KiB

# Compact JWS (RFC 7515 §7.1): header and payload base64url, non-empty; the signature may be empty.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def parse_detail(body: bytes) -> UpstreamDetail:
    """The operator-relevant fields of an upstream ``Error`` body, if it is one."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
        return UpstreamDetail()
    if not isinstance(data, dict):
        return UpstreamDetail()

    def text(key: str) -> str | None:
        value = data.get(key)
        if value is None or isinstance(value, dict | list):
            return None
        return str(value)[:MAX_DETAIL_CHARS]

    return UpstreamDetail(
        error_code=text("errorCode"),
        message=text("message"),
        remediation_message=text("remediationMessage"),
        reference_token=text("referenceToken"),
    )


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() is also true for '²', which float() refuses
        return float(value)
    try:
        # A date without a zone is local time; near year 1 or 9999 it has no timestamp.
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, OverflowError):
        return None
    return max(0.0, when - now_wall)


def parse_date(value: str | None) -> float | None:
    """Epoch seconds from an HTTP ``Date`` header, or None."""
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, OverflowError):
        return None


def checked_access_token(value: object, operation: str, name: str) -> str:
    """``value`` trimmed, if it is a compact JWS of at most MAX_ACCESS_TOKEN bytes; else InvalidResponse.

    ``operation`` and ``name`` (what the answer calls the token) start and fill the error message.
    """
    if not isinstance(value, str):
        raise InvalidResponse(f"{operation}: the answer has no {name} string")
    token = value.strip()
    if not token:
        raise InvalidResponse(f"{operation}: the {name} is empty")
    if len(token) > MAX_ACCESS_TOKEN:
        raise InvalidResponse(f"{operation}: the {name} is longer than {MAX_ACCESS_TOKEN} bytes")
    if not _COMPACT_JWS.fullmatch(token):
        raise InvalidResponse(
            f"{operation}: the {name} is not a compact JWS (three base64url parts separated by"
            " dots, with no whitespace or line break inside)")
    return token


def refresh_token_id(value: object) -> str | None:
    """The id of a TokenPair's ``refreshToken``: ``{"id": "<id>"}``, a bare id, or absent/null (None).

    Raises InvalidResponse for any other shape, or an id that is not valid Unicode text.
    """
    if value is None:
        return None
    refresh_id = value.get("id") if isinstance(value, dict) else value
    if not isinstance(refresh_id, str) or not refresh_id:
        raise InvalidResponse('login: the answer\'s refreshToken is neither {"id": "<id>"}, a'
                              " non-empty string, nor absent")
    if not encodable(refresh_id):  # a lone surrogate from a JSON escape could not be sent back
        raise InvalidResponse("login: the answer's refresh token id is not valid Unicode text")
    return refresh_id


def encodable(text: str) -> bool:
    """True when ``text`` can be sent as UTF-8 (no lone surrogate from a JSON escape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
