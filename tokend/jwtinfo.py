"""What tokend needs from a JWT: its ``exp`` and ``iat`` claims, and a fingerprint safe to log.

The SDDC Manager signs with a server-side HS256 secret, so clients cannot verify the signature;
tokend only reads the claims it schedules by. A token without a numeric ``exp`` is unusable.

The compact JWS is taken apart here (RFC 7515 §7.1: three base64url parts, the first two JSON
objects) rather than by pyjwt: importing pyjwt imports ``cryptography`` whenever that is installed,
tens of milliseconds and megabytes the daemon would pay for at every start without using them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from tokend.errors import InvalidResponse

#: Anything shaped like a compact JWS (three base64url parts, the first a JSON header).
JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True)
class Claims:
    """The time claims of an access token, exactly as issued (int or float)."""

    exp: int | float
    iat: int | float | None

    @property
    def whole_seconds(self) -> bool:
        """True when the claims carry no fraction, so the issue instant was truncated."""
        return all(isinstance(v, int) or float(v).is_integer() for v in (self.exp, self.iat)
                   if v is not None)


def _numeric(value: object, name: str) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        raise InvalidResponse(f"the access token's '{name}' claim is not a number")
    return value


def _finite(value: int | float) -> bool:
    # JSON integers are unbounded; one beyond the float range is no instant anyone can schedule by.
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def decode_claims(token: str) -> Claims:
    """Read ``exp`` and ``iat`` without verifying the signature; raise InvalidResponse if unusable."""
    payload = _payload(token)
    if payload.get("exp") is None:
        raise InvalidResponse("the access token has no 'exp' claim")
    if "iat" in payload and payload["iat"] is None:
        raise InvalidResponse("the access token's 'iat' claim is not a number")
    exp = _numeric(payload["exp"], "exp")
    assert exp is not None
    return Claims(exp=exp, iat=_numeric(payload.get("iat"), "iat"))


def _payload(token: str) -> dict[str, Any]:
    """The claims of a compact JWS, unverified; InvalidResponse saying what is wrong, never the token."""
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidResponse(f"the access token is not a JWT ({len(parts)} dot-separated parts, not 3)")
    header = _json_object(_base64url(parts[0], "header"), "header")
    if header.get("b64") is False:  # RFC 7797: the payload is then not base64url, nor the claims
        raise InvalidResponse("the access token is not a JWT (unencoded payload)")
    claims = _json_object(_base64url(parts[1], "payload"), "payload")
    _base64url(parts[2], "signature")
    return claims


def _base64url(part: str, name: str) -> bytes:
    """One base64url part of a JWS, unpadded as RFC 7515 writes it."""
    if not _BASE64URL.fullmatch(part):
        raise InvalidResponse(f"the access token is not a JWT (its {name} is not base64url)")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except binascii.Error:  # a length of 4n+1 characters encodes no whole byte
        raise InvalidResponse(f"the access token is not a JWT (its {name} is not base64url)") from None


def _json_object(data: bytes, name: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; RecursionError: nesting
        raise InvalidResponse(f"the access token is not a JWT (its {name} is not JSON)") from None
    if not isinstance(value, dict):
        raise InvalidResponse(f"the access token is not a JWT (its {name} is not a JSON object)")
    return value


def fingerprint(token: str) -> str:
    """``sha256:<hex>`` of the token: identifies it in logs and to `invalidate` without revealing it."""
    # surrogatepass: any str has a fingerprint (a lone surrogate from JSON would not encode otherwise).
    return "sha256:" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
