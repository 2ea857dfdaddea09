"""What tokend needs from a JWT: its ``exp`` and ``iat`` claims, and a fingerprint safe to log.

The SDDC Manager signs with a server-side HS256 secret, so clients cannot verify the signature;
tokend only reads the claims it schedules by. A token without a numeric ``exp`` is unusable.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

import jwt

from tokend.errors import InvalidResponse

#: Anything shaped like a compact JWS (three base64url parts, the first a JSON header).
JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")


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
    try:
        payload = jwt.decode(
            token,
            options={"verify_signature": False, "verify_exp": False, "verify_iat": False,
                     "verify_nbf": False, "verify_aud": False, "verify_iss": False},
        )
    except (jwt.PyJWTError, UnicodeError) as exc:
        # UnicodeError: a JSON string may hold a lone surrogate, which pyjwt cannot encode.
        raise InvalidResponse(f"the access token is not a JWT ({type(exc).__name__})") from None
    if payload.get("exp") is None:
        raise InvalidResponse("the access token has no 'exp' claim")
    if "iat" in payload and payload["iat"] is None:
        raise InvalidResponse("the access token's 'iat' claim is not a number")
    exp = _numeric(payload["exp"], "exp")
    assert exp is not None
    return Claims(exp=exp, iat=_numeric(payload.get("iat"), "iat"))


def fingerprint(token: str) -> str:
    """``sha256:<hex>`` of the token: identifies it in logs and to `invalidate` without revealing it."""
    # surrogatepass: any str has a fingerprint (a lone surrogate from JSON would not encode otherwise).
    return "sha256:" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
